"""Running nogil numba kernels on several threads.

The kernels are serial and release the GIL, so a plain thread pool runs them
in parallel. This keeps them cacheable (``parallel=True`` functions cannot be
cached safely) and lets user threads call ``search`` concurrently with any
numba threading layer.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


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
