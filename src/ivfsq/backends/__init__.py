"""Compute backends: the CPU one (NumPy + numba kernels)."""
