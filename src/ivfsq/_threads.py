"""Running nogil numba kernels on several threads.

The kernels are serial and release the GIL, so a plain thread pool runs them
in parallel. This keeps them cacheable (``parallel=True`` functions cannot be
cached safely) and lets user threads call ``search`` concurrently with any
numba threading layer.

Waking a sleeping thread costs tens of microseconds on some machines (virtual
CPUs that halt when idle), as much as a small batch's whole scan. So, as
OpenMP runtimes do, the pool's threads wait for work by spinning a while
before they sleep, and a caller waits for its helpers the same way. The
spinning runs in nogil numba loops over atomic loads (:mod:`ivfsq._spin`):
it neither holds the GIL nor takes it from a thread that has Python to run.
A thread waiting for the GIL sleeps, so a helper gives up its share of a
job in such a loop, after it dropped the GIL, and its caller then takes the
GIL without waiting. ``IVFSQ_WAIT_POLICY=passive`` turns the spinning off,
and so does a pool with more threads than the process has CPUs.

BLAS products (coarse quantizer, k-means assignment, rotation) are split over
the same threads, each calling a single-threaded BLAS: a multithreaded BLAS
call leaves its worker threads spinning for a while after it returns, and on
a small machine they take the cores from the scan kernels that follow,
which then run slower.
"""

import collections
import contextlib
import os
import threading
import time

import numpy as np
from threadpoolctl import ThreadpoolController

from ivfsq import _spin

_pool = None
_pool_lock = threading.Lock()

_blas_lock = threading.Lock()
_blas_controller = None
_blas_users = 0
_blas_limiter = None

#: How long an idle pool thread, or a caller waiting for its helpers, spins
#: before it sleeps (seconds). Longer than the gaps between the parallel
#: steps of a search and between back-to-back searches.
SPIN_SECONDS = 3e-4
# A sleeping caller looks at its helpers at least this often (seconds), in
# case the last one left without seeing it asleep.
_SLEEP_CHECK_SECONDS = 1e-3


def default_n_threads():
    """Threads used when the caller does not say: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _spin_count(n_threads):
    """Loads spun for :data:`SPIN_SECONDS` by pools of ``n_threads`` threads
    (callers included): 0 when ``IVFSQ_WAIT_POLICY`` is ``passive`` or the
    threads outnumber the CPUs, where a spinning thread would take a core
    from a working one."""
    if os.environ.get("IVFSQ_WAIT_POLICY", "").lower() == "passive":
        return 0
    if n_threads > default_n_threads():
        return 0
    return int(SPIN_SECONDS / _spin.seconds_per_load())


def _get_pool(n_workers):
    global _pool
    with _pool_lock:
        if _pool is None or _pool.n_workers < n_workers:
            if _pool is not None:
                _pool.close()  # its threads finish what they help with, then exit
            _pool = _Pool(n_workers)
        return _pool


def _forget_pool():
    # A forked child has none of the parent's threads: it starts a pool anew.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_chunks(task, n_items, n_threads, min_chunk=1, chunks_per_thread=4, spin=True):
    """Call ``task(start, stop)`` over ``[0, n_items)`` split into chunks.

    Runs inline when one thread suffices. Otherwise the calling thread and
    up to ``n_threads - 1`` pool threads take chunks in turn from a shared
    counter until none is left: the caller never waits idle, and a pool
    thread that joins late only finds fewer chunks to take. It also cannot
    deadlock when the pool is busy, with other callers' work or with the
    caller's own (a task that itself calls ``run_chunks``): the caller alone
    then runs every chunk. No chunk starts after the call returns, and every
    chunk that started has finished.

    Exceptions propagate to the caller (its own first); after the first, no
    new chunk is started.

    ``spin=False``: neither the caller nor the pool threads that helped
    spin while they wait (for steps that are followed by long stretches of
    other work, multithreaded BLAS for instance, rather than by another
    parallel step).
    """
    if n_items <= 0:
        return
    n_chunks = min(n_threads * chunks_per_thread, max(1, n_items // max(1, min_chunk)))
    if n_threads <= 1 or n_chunks <= 1:
        task(0, n_items)
        return
    bounds = [round(n_items * c / n_chunks) for c in range(n_chunks + 1)]
    pool = _get_pool(n_threads - 1)
    job = _Job(task, bounds, min(n_threads, n_chunks) - 1, pool.spins if spin else 0)
    pool.post(job)
    try:
        job.take_chunks(helper=False)
    finally:
        job.stop()
        pool.retire(job)
        job.wait_for_helpers()
    if job.error is not None:
        raise job.error


class _Job:
    """One ``run_chunks`` call: chunk numbers handed out once each, to the
    caller and to at most ``n_helpers`` pool threads.

    ``running`` (an int64 array, so that nogil loops can read it) counts
    the helpers that took a chunk and have not left. Where the caller
    spins, a helper leaves by :func:`ivfsq._spin.wait_change` (or
    :func:`ivfsq._spin.leave`), with the GIL dropped; where it sleeps (or
    does not spin at all), the helper leaves under the job's lock and wakes
    it.
    """

    def __init__(self, task, bounds, n_helpers, spins):
        self.spins = spins  # how long its caller and helpers spin when they wait
        self._task = task
        self._bounds = bounds
        self._n_chunks = len(bounds) - 1
        self._next = 0
        self._slots = n_helpers
        self._lock = threading.Lock()
        self._caller_asleep = threading.Condition(self._lock)
        self._sleeping = False
        self.running = np.zeros(1, dtype=np.int64)
        self.error = None

    def open(self):
        """Whether a helper could still take a chunk (a hint, read unlocked)."""
        return self._slots > 0 and self._next < self._n_chunks

    def _claim(self, join=False):
        with self._lock:
            chunk = self._next
            if chunk >= self._n_chunks or (join and self._slots <= 0):
                return None
            if join:
                self._slots -= 1
                _spin.add(self.running, 1)
            self._next = chunk + 1
            return chunk

    def take_chunks(self, helper):
        """Run chunks until none is left. A helper records an error on the
        job; the caller raises its own."""
        chunk = self._claim(join=helper)
        if chunk is None:
            return False
        while chunk is not None:
            try:
                self._task(self._bounds[chunk], self._bounds[chunk + 1])
            except BaseException as error:
                self.stop()
                if not helper:
                    raise
                with self._lock:
                    if self.error is None:
                        self.error = error
            chunk = self._claim()
        return True

    def help(self):
        """A pool thread's share. True when it took chunks and must still
        leave (:attr:`running`); False when it took none or has left."""
        if not self.take_chunks(helper=True):
            return False
        with self._lock:
            if self.spins and not self._sleeping:
                return True
            _spin.add(self.running, -1)
            self._caller_asleep.notify()
            return False

    def stop(self):
        """No chunk is handed out after this, and no helper joins."""
        with self._lock:
            self._next = self._n_chunks
            self._slots = 0

    def wait_for_helpers(self):
        """Return once every helper that took a chunk has left: spin, then sleep."""
        if _spin.wait_zero(self.running, self.spins) == 0:
            return
        with self._lock:
            self._sleeping = True
            while self.running[0] != 0:
                self._caller_asleep.wait(_SLEEP_CHECK_SECONDS)


class _Pool:
    """Daemon threads that help with the jobs posted, oldest first."""

    def __init__(self, n_workers):
        self.n_workers = n_workers
        self.spins = _spin_count(n_workers + 1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs = collections.deque()
        self._closed = False
        self._n_asleep = 0
        # Bumped at each post: spinning threads watch it without the GIL.
        self._signal = np.zeros(1, dtype=np.int64)
        self.threads = [threading.Thread(target=self._work, name=f"ivfsq-{number}", daemon=True)
                        for number in range(n_workers)]
        for thread in self.threads:
            thread.start()

    def post(self, job):
        with self._lock:
            self._jobs.append(job)
            self._signal[0] += 1
            if self._n_asleep:
                self._wake.notify_all()

    def retire(self, job):
        with self._lock:
            with contextlib.suppress(ValueError):
                self._jobs.remove(job)

    def close(self):
        with self._lock:
            self._closed = True
            self._signal[0] += 1
            self._wake.notify_all()

    def _next_job(self):
        # Called with the lock held: the oldest job a helper can still join.
        while self._jobs and not self._jobs[0].open():
            self._jobs.popleft()
        for job in self._jobs:
            if job.open():
                return job
        return None

    def _work(self):
        left = _spin.NOTHING  # the running count to leave, or NOTHING
        spins = self.spins  # as the last job helped with says
        while True:
            with self._lock:
                if self._closed:
                    break
                job = self._next_job()
                seen = int(self._signal[0])
            if job is not None:
                if left is not _spin.NOTHING:
                    _spin.leave(left)
                left = job.running if job.help() else _spin.NOTHING
                spins = job.spins
                continue
            # Leave the last job with the GIL dropped, then spin for the next.
            leaving = left is not _spin.NOTHING
            if _spin.wait_change(self._signal, seen, left, leaving, spins) == seen:
                with self._lock:
                    while self._signal[0] == seen and not self._closed:
                        self._n_asleep += 1
                        self._wake.wait()
                        self._n_asleep -= 1
            left = _spin.NOTHING
        if left is not _spin.NOTHING:
            _spin.leave(left)


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
