"""Nearest-neighbour indexes and helpers (mirrors ``cuvs.neighbors``)."""

from ivfsq.neighbors import filters, ivf_sq  # noqa: F401
from ivfsq.neighbors.refine import refine  # noqa: F401

__all__ = ["filters", "ivf_sq", "refine"]
