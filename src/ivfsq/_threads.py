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

    Runs inline when one thread suffices. Otherwise the calling thread and
    up to ``n_threads - 1`` pool threads take chunks in turn from a shared
    counter until none is left: the caller never waits idle, and a pool
    thread that wakes late (waking one costs tens of microseconds on some
    machines, as much as a small batch's whole scan) only finds fewer
    chunks to take. It also cannot deadlock when the pool is busy, with
    other callers' work or with the caller's own (a task that itself calls
    ``run_chunks``): the caller alone then runs every chunk.

    Exceptions propagate to the caller; after the first, no new chunk is
    started.
    """
    if n_items <= 0:
        return
    n_chunks = min(n_threads * chunks_per_thread, max(1, n_items // max(1, min_chunk)))
    if n_threads <= 1 or n_chunks <= 1:
        task(0, n_items)
        return
    bounds = [round(n_items * c / n_chunks) for c in range(n_chunks + 1)]
    claim = _ChunkCounter(n_chunks)

    def take_chunks():
        while (chunk := claim.next()) is not None:
            try:
                task(bounds[chunk], bounds[chunk + 1])
            except BaseException:
                claim.stop()
                raise

    pool = _get_pool(n_threads - 1)
    futures = [pool.submit(take_chunks) for _ in range(min(n_threads, n_chunks) - 1)]
    try:
        take_chunks()
    finally:
        # No chunk is left now. A helper that has not started would find
        # none: it is cancelled, not waited for (it may be queued behind the
        # thread that waits, as when a task itself calls run_chunks). Every
        # started one has returned (or raised) before the caller's arrays
        # may go out of scope.
        errors = [None if future.cancel() else future.exception() for future in futures]
    for error in errors:
        if error is not None:
            raise error


class _ChunkCounter:
    """Hands out chunk numbers 0, 1, ... n_chunks - 1, each once, to any
    thread; then None (also after :meth:`stop`)."""

    def __init__(self, n_chunks):
        self._next = 0
        self._n_chunks = n_chunks
        self._lock = threading.Lock()

    def next(self):
        with self._lock:
            chunk = self._next
            if chunk >= self._n_chunks:
                return None
            self._next = chunk + 1
            return chunk

    def stop(self):
        with self._lock:
            self._next = self._n_chunks


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
