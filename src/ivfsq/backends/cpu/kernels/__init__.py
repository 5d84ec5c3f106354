"""numba kernels of the CPU backend, one module per concern.

- :mod:`~ivfsq.backends.cpu.kernels.common`: codes and numba options they share;
- :mod:`~ivfsq.backends.cpu.kernels.heaps`: bounded top-k heaps and their merge;
- :mod:`~ivfsq.backends.cpu.kernels.encode`: codes, list constants, query weights;
- :mod:`~ivfsq.backends.cpu.kernels.coarse`: the coarse step's probe selection;
- :mod:`~ivfsq.backends.cpu.kernels.score`: scoring one code row, filter bounds;
- :mod:`~ivfsq.backends.cpu.kernels.scan`: the per-query scan, the one-call search;
- :mod:`~ivfsq.backends.cpu.kernels.grouped`: the list-major scan of big batches;
- :mod:`~ivfsq.backends.cpu.kernels.exact`: exact distances (re-rank, refine);
- :mod:`~ivfsq.backends.cpu.kernels.filtered`: filter counts, lists to walk, kept rows scored;
- :mod:`~ivfsq.backends.cpu.kernels.fastscan`: the 4-bit first pass over blocks of rows;
- :mod:`~ivfsq.backends.cpu.kernels.simd`: the AVX2 integer-dot intrinsics.

Kernels take arrays and scalars only. They are serial, compiled with
``cache=True`` (so a fresh process loads them from disk instead of
compiling) and ``nogil=True`` (so they run in parallel from Python threads,
see :mod:`ivfsq._threads`). No ``parallel=True`` kernel is used: that keeps
every kernel cacheable and makes concurrent searches from user threads safe
with any numba threading layer. Distances inside the kernels are "smaller is
better"; inner products are negated by the caller on the way out.

Importing the package first makes numba's disk cache of every kernel depend
on every file here (see :mod:`ivfsq._numba_cache`), so an edited helper or
intrinsic module never leaves a stale compiled kernel behind, and seeds a
fresh cache folder with the variants compiled when the package was built.
"""

from ivfsq import _numba_cache

_numba_cache.install_ivfsq()

from ivfsq.backends.cpu.kernels import (  # noqa: E402  (after the cache stamp)
    coarse,
    common,
    encode,
    exact,
    fastscan,
    filtered,
    grouped,
    heaps,
    scan,
    score,
    simd,
)

__all__ = [
    "coarse", "common", "encode", "exact", "fastscan", "filtered", "grouped", "heaps", "scan",
    "score", "simd",
]
