"""The CPU backend: numba kernels (:mod:`ivfsq.backends.cpu.kernels`) and
per-snapshot tuning state."""
