"""Running nogil numba kernels on several threads.

The kernels are serial and release the GIL, so a plain thread pool runs them
in parallel. This keeps them cacheable (``parallel=True`` functions cannot be
cached safely) and lets user threads call ``search`` concurrently with any
numba threading layer.

BLAS products (coarse quantizer, k-means assignment, rotation) are split over
the same threads, each calling a single-threaded BLAS: a multithreaded BLAS
call leaves its worker threads spinning for a while after it returns, and on
a small machine they take the cores from the scan kernels that follow,
which then run slower.
"""

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()

_blas_lock = threading.Lock()
_blas_controller = None
_blas_users = 0
_blas_limiter = None


def default_n_threads():
    """Threads used when the caller does not say: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _get_pool(n_threads):
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n_threads:
            # An older, smaller pool is left to finish its tasks and exit.
            _pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="ivfsq")
            _pool_size = n_threads
        return _pool


def run_chunks(task, n_items, n_threads, min_chunk=1, chunks_per_thread=4):
    """Call ``task(start, stop)`` over ``[0, n_items)`` split into chunks.

    Runs inline when one thread suffices. Exceptions propagate to the caller.
    """
    if n_items <= 0:
        return
    n_chunks = min(n_threads * chunks_per_thread, max(1, n_items // max(1, min_chunk)))
    if n_threads <= 1 or n_chunks <= 1:
        task(0, n_items)
        return
    bounds = [round(n_items * c / n_chunks) for c in range(n_chunks + 1)]
    pool = _get_pool(n_threads)
    futures = [
        pool.submit(task, bounds[c], bounds[c + 1])
        for c in range(n_chunks)
        if bounds[c + 1] > bounds[c]
    ]
    for future in futures:
        future.result()


@contextlib.contextmanager
def single_threaded_blas():
    """Limit BLAS to one thread while any caller is inside this context.

    Reference-counted, so overlapping searches from several user threads
    restore the caller's setting only when the last one leaves. Other threads
    of the process calling BLAS meanwhile also get one thread. The limit
    covers the BLAS libraries loaded when ivfsq first needs it (numpy's). It
    is only a speed measure: with scipy-openblas 0.3.31 and a second
    OpenBLAS loaded, a limit set from a worker thread was not seen by the
    other threads, which then keep BLAS's own threads (slower, never wrong).
    """
    global _blas_controller, _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            if _blas_controller is None:
                _blas_controller = ThreadpoolController()
            _blas_limiter = _blas_controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def parallel_matmul(a, b, n_threads, min_rows=64):
    """``a @ b`` (float32, C-contiguous) with the rows of ``a`` split over threads."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))

    def task(start, stop):
        np.matmul(a[start:stop], b, out=out[start:stop])

    with single_threaded_blas():
        run_chunks(task, a.shape[0], n_threads, min_chunk=min_rows, chunks_per_thread=1)
    return out
