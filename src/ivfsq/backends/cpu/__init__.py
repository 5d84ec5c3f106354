"""CPU kernels (numba) and their integer-dot intrinsics.

Importing the package first makes numba's disk cache of its kernels depend
on every file here (see :mod:`ivfsq.backends.cpu._cache`), so that an edited
intrinsic or helper module never leaves a stale compiled kernel behind.
"""

import os

from ivfsq.backends.cpu import _cache

_cache.install(os.path.dirname(__file__))
