"""Waiting without sleeping and without the GIL: spin loops over atomic
int64 counters, for :mod:`ivfsq._threads`.

The loops are nogil numba functions, so a thread spinning in one neither
holds the GIL nor competes for it; Python code writes the counters under
the GIL (or through :func:`add`), and the loops read them with acquire
loads, so a write by another thread is seen and the load is not hoisted out
of the loop. On x86-64 each round also runs ``pause``, which leaves the
core's resources to a sibling hyperthread while it waits.
"""

import functools
import platform
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ivfsq import _numba_cache

_numba_cache.install_ivfsq()  # before the functions below are defined

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")

#: A counter that nothing waits on (see :func:`wait_change`'s ``leaving``).
NOTHING = np.zeros(1, dtype=np.int64)


def _is_counter(array):
    return isinstance(array, types.Array) and array.dtype == types.int64


@intrinsic
def _load_acquire(typingctx, array):
    """``array[0]``, an atomic load with acquire ordering."""
    if not _is_counter(array):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "acquire", 8)

    return types.int64(array), codegen


@intrinsic
def _fetch_add(typingctx, array, value):
    """``array[0] += value`` as one atomic step; returns the old value."""
    if not (_is_counter(array) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        amount = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", data, amount, "seq_cst")

    return types.int64(array, value), codegen


@intrinsic
def _relax(typingctx):
    """A spin-wait hint to the CPU (``pause`` on x86-64, nothing elsewhere)."""

    def codegen(context, builder, signature, args):
        if _X86:
            pause = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()

    return types.none(), codegen


@njit(cache=True)
def add(counter, value):
    """Atomically add ``value`` to ``counter[0]`` (keeping the GIL: the
    caller goes on with Python code). Returns the old value."""
    return _fetch_add(counter, value)


@njit(cache=True, nogil=True)
def leave(counter):
    """Atomically subtract 1 from ``counter[0]``, with the GIL dropped."""
    _fetch_add(counter, -1)


@njit(cache=True, nogil=True)
def wait_change(signal, seen, running, leaving, max_spins):
    """Spin until ``signal[0] != seen`` or ``max_spins`` rounds have passed;
    returns ``signal[0]``.

    With ``leaving``, first subtract 1 from ``running[0]``: done here, the
    GIL is already dropped, so a thread that waits for that count to reach
    zero (:func:`wait_zero`) can take the GIL at once.
    """
    if leaving:
        _fetch_add(running, -1)
    value = _load_acquire(signal)
    spins = 0
    while value == seen and spins < max_spins:
        _relax()
        value = _load_acquire(signal)
        spins += 1
    return value


@njit(cache=True, nogil=True)
def wait_zero(counter, max_spins):
    """Spin until ``counter[0] == 0`` or ``max_spins`` rounds have passed;
    returns ``counter[0]``."""
    value = _load_acquire(counter)
    spins = 0
    while value != 0 and spins < max_spins:
        _relax()
        value = _load_acquire(counter)
        spins += 1
    return value


@functools.lru_cache(maxsize=1)
def seconds_per_load():
    """Seconds one round of the spin loops takes on this machine (the
    quickest of three timed waits that nothing ends)."""
    counter = np.zeros(1, dtype=np.int64)
    rounds = 20_000
    wait_zero(np.ones(1, dtype=np.int64), 1)  # compiled or loaded before timing
    best = float("inf")
    for _ in range(3):
        counter[0] = 1
        start = time.perf_counter()
        wait_zero(counter, rounds)
        best = min(best, time.perf_counter() - start)
    return max(best / rounds, 1e-10)
