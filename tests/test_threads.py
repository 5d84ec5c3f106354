"""The thread helpers: the chunked runner, the BLAS limit, parallel products,
progress reports."""

import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from ivfsq import _progress, _spin, _threads
from ivfsq.neighbors import ivf_sq


def blas_threads():
    """Thread counts, as the calling thread sees them, of the BLAS libraries
    ivfsq limits (numpy's; libraries other packages load later are left alone)."""
    with _threads.single_threaded_blas():  # creates the controller on first use
        pass
    limited = {lib.filepath for lib in _threads._blas_controller.lib_controllers}
    return [entry["num_threads"] for entry in threadpool_info()
            if entry["user_api"] == "blas" and entry["filepath"] in limited]


def test_single_threaded_blas_nests():
    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library that threadpoolctl can control")
    with _threads.single_threaded_blas():
        with _threads.single_threaded_blas():
            assert all(count == 1 for count in blas_threads())
        # Leaving the inner block must not lift the limit of the outer one.
        assert all(count == 1 for count in blas_threads())
    assert blas_threads() == before


def test_single_threaded_blas_is_reference_counted_across_threads():
    entered = threading.Barrier(2)
    release = threading.Event()

    def user():
        with _threads.single_threaded_blas():
            entered.wait()
            release.wait(timeout=10)

    other = threading.Thread(target=user)
    other.start()
    with _threads.single_threaded_blas():
        entered.wait()
        assert _threads._blas_users == 2
    # The first to leave keeps the limit while the other is inside.
    assert _threads._blas_users == 1 and _threads._blas_limiter is not None
    release.set()
    other.join()
    assert _threads._blas_users == 0 and _threads._blas_limiter is None


def test_parallel_matmul_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1001, 37)).astype(np.float32)
    b = rng.standard_normal((37, 19)).astype(np.float32)
    for n_threads in (1, 3):
        np.testing.assert_allclose(_threads.parallel_matmul(a, b, n_threads, min_rows=7), a @ b,
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_threads.parallel_matmul(a, b.T.copy().T, 2), a @ b, rtol=1e-5,
                               atol=1e-5)


def test_progress_reports_cover_build_and_save(blobs, tmp_path):
    base, _ = blobs
    reports = []
    lock = threading.Lock()

    def listen(stage, done, total):
        with lock:
            reports.append((stage, done, total))

    with _progress.reporting(listen):
        index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), base)
        ivf_sq.save(tmp_path / "index.ivfsq", index)
    stages = {stage for stage, _, _ in reports}
    assert {"k-means", "encoding", "writing"} <= stages
    for stage in stages:
        last = [(done, total) for s, done, total in reports if s == stage][-1]
        assert last[0] == last[1]  # every stage reports its end
    # Outside the block nothing is reported.
    count = len(reports)
    ivf_sq.build(ivf_sq.IndexParams(n_lists=16), base)
    assert len(reports) == count


def _covered(n_items, n_threads, **kwargs):
    """How many times run_chunks hands each item to a task, and the threads
    that ran them."""
    counts = np.zeros(n_items, dtype=np.int64)
    threads = set()
    lock = threading.Lock()

    def task(start, stop):
        assert 0 <= start < stop <= n_items
        with lock:
            counts[start:stop] += 1
            threads.add(threading.get_ident())

    _threads.run_chunks(task, n_items, n_threads, **kwargs)
    return counts, threads


@pytest.mark.parametrize("n_items", [0, 1, 2, 7, 100, 1001])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 8])
@pytest.mark.parametrize("min_chunk, chunks_per_thread", [(1, 4), (1, 1), (16, 4), (500, 2)])
def test_every_item_once(n_items, n_threads, min_chunk, chunks_per_thread):
    counts, _ = _covered(n_items, n_threads, min_chunk=min_chunk,
                         chunks_per_thread=chunks_per_thread)
    assert np.all(counts == 1)


def test_one_thread_runs_inline():
    _, threads = _covered(100, 1)
    assert threads == {threading.get_ident()}


def test_caller_takes_chunks_too():
    # The caller works through the chunks itself while pool threads join
    # in: with tasks that wait for a second thread, both must have run one.
    barrier = threading.Barrier(2, timeout=10)
    ran = []

    def task(start, stop):
        ran.append(threading.get_ident())
        if len(ran) <= 2:
            barrier.wait()

    _threads.run_chunks(task, 8, 2, chunks_per_thread=4)
    assert threading.get_ident() in ran
    assert len(set(ran)) == 2


def test_first_error_propagates_and_stops_new_chunks():
    started = []
    lock = threading.Lock()

    def task(start, stop):
        with lock:
            started.append(start)
        if start == 0:
            raise RuntimeError("chunk 0 failed")
        time.sleep(0.001)

    with pytest.raises(RuntimeError, match="chunk 0 failed"):
        _threads.run_chunks(task, 64, 2, chunks_per_thread=32)
    count = len(started)
    time.sleep(0.2)
    # Every thread has finished when the call returns (no chunk starts
    # later), and the chunks after the failure were left out.
    assert len(started) == count < 64


def test_nested_calls_finish():
    # A task that itself runs chunks, while every pool thread is inside the
    # outer call's tasks (the barrier): the inner calls' helpers are queued
    # behind them, and the inner calls must finish without them.
    totals = np.zeros(6, dtype=np.int64)
    both_inside = threading.Barrier(2, timeout=10)

    def outer(start, stop):
        for row in range(start, stop):
            if row < 2:
                both_inside.wait()

            def inner(a, b, row=row):
                totals[row] += b - a  # each inner call writes its own row
            _threads.run_chunks(inner, 50, 2, chunks_per_thread=4)

    caller = threading.Thread(
        target=_threads.run_chunks, args=(outer, 6, 2), kwargs={"chunks_per_thread": 3},
        daemon=True)
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "nested run_chunks calls deadlocked"
    assert np.all(totals == 50)


def test_concurrent_callers():
    results = {}

    def caller(name):
        counts, _ = _covered(300, 2, chunks_per_thread=4)
        results[name] = counts

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 4
    assert all(np.all(counts == 1) for counts in results.values())


@pytest.fixture
def fresh_pool(monkeypatch):
    """The tests' own pool, made on first use and closed afterwards."""
    monkeypatch.setattr(_threads, "_pool", None)
    yield
    if _threads._pool is not None:
        _threads._pool.close()


def test_helper_error_reaches_the_caller():
    caller = threading.get_ident()
    barrier = threading.Barrier(2, timeout=10)
    seen = []

    def task(start, stop):
        seen.append(threading.get_ident())
        if len(seen) <= 2:
            barrier.wait()
        if threading.get_ident() != caller:
            raise KeyError("helper failed")

    with pytest.raises(KeyError, match="helper failed"):
        _threads.run_chunks(task, 8, 2, chunks_per_thread=4)


def test_spin_counters():
    counter = np.zeros(1, dtype=np.int64)
    assert _spin.add(counter, 3) == 0 and counter[0] == 3
    _spin.leave(counter)
    assert counter[0] == 2
    # A wait that nothing ends gives up after its rounds.
    assert _spin.wait_zero(counter, 100) == 2
    assert _spin.wait_change(counter, 2, _spin.NOTHING, False, 100) == 2
    # Leaving first subtracts one from the count it is given.
    running = np.ones(1, dtype=np.int64)
    assert _spin.wait_change(counter, 5, running, True, 100) == 2
    assert running[0] == 0
    assert _spin.wait_zero(running, 100) == 0


def test_spin_sees_another_threads_write():
    signal = np.zeros(1, dtype=np.int64)
    counter = np.ones(1, dtype=np.int64)

    def writer():
        time.sleep(0.02)
        signal[0] = 7
        time.sleep(0.02)
        _spin.add(counter, -1)

    thread = threading.Thread(target=writer)
    thread.start()
    # Bounded, so that a load hoisted out of the loop fails instead of hanging.
    assert _spin.wait_change(signal, 0, _spin.NOTHING, False, 10**9) == 7
    assert _spin.wait_zero(counter, 10**9) == 0
    thread.join()


def test_spinning_policy(monkeypatch):
    monkeypatch.delenv("IVFSQ_WAIT_POLICY", raising=False)
    cores = _threads.default_n_threads()
    assert _threads._spin_count(min(2, cores)) > 0
    assert _threads._spin_count(cores + 1) == 0  # more threads than CPUs
    monkeypatch.setenv("IVFSQ_WAIT_POLICY", "passive")
    assert _threads._spin_count(1) == 0


@pytest.mark.parametrize("policy", ["", "passive"])
def test_caller_waits_for_a_slow_helper(monkeypatch, fresh_pool, policy):
    # The helper's chunk outlasts the caller's spinning: the caller sleeps
    # and still returns only after it. Passive: nobody spins at all.
    monkeypatch.setenv("IVFSQ_WAIT_POLICY", policy)
    monkeypatch.setattr(_threads, "SPIN_SECONDS", 1e-5)
    caller = threading.get_ident()
    barrier = threading.Barrier(2, timeout=10)
    finished = []

    def task(start, stop):
        if start < 2:
            barrier.wait()
        if threading.get_ident() != caller:
            time.sleep(0.05)
        finished.append(start)

    for _ in range(3):
        finished.clear()
        _threads.run_chunks(task, 4, 2, chunks_per_thread=2)
        assert sorted(finished) == [0, 1, 2, 3]


def test_a_bigger_pool_retires_the_old_threads(fresh_pool):
    _threads.run_chunks(lambda a, b: None, 10, 2)
    small = _threads._pool
    _threads.run_chunks(lambda a, b: None, 10, 4)
    big = _threads._pool
    assert big is not small and len(big.threads) == 3
    for thread in small.threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert all(thread.is_alive() for thread in big.threads)
    counts, threads = _covered(1000, 4, chunks_per_thread=64)
    assert np.all(counts == 1)


def _chunk_sum_in_child(queue):
    total = np.zeros(1, dtype=np.int64)
    lock = threading.Lock()

    def task(start, stop):
        with lock:
            total[0] += stop - start

    _threads.run_chunks(task, 1000, 2)
    queue.put(int(total[0]))


def test_forked_child_runs_chunks():
    multiprocessing = pytest.importorskip("multiprocessing")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    _threads.run_chunks(lambda a, b: None, 10, 2)  # the parent has a pool
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_chunk_sum_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == 1000
    child.join(timeout=60)
    assert child.exitcode == 0
