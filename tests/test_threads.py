"""The thread helpers: the chunked runner, the BLAS limit, parallel products,
progress reports."""

import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from ivfsq import _progress, _threads
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
