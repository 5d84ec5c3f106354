"""The thread helpers: the BLAS limit, parallel products, progress reports."""

import threading

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
