"""ivfsq: approximate nearest-neighbour search with an inverted file over
scalar-quantized vectors (IVF-SQ).

The index lives in :mod:`ivfsq.neighbors.ivf_sq`, whose API follows
``cuvs.neighbors.ivf_sq``::

    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> dataset = np.random.default_rng(0).random((2000, 16), dtype=np.float32)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), dataset)
    >>> distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=4),
    ...                                      index, dataset[:5], k=3)
    >>> neighbors.shape
    (5, 3)
"""

__version__ = "0.1.0"

__all__ = ["neighbors", "warm_up", "__version__"]


def __getattr__(name):
    # Import the subpackage on first use, so that ``import ivfsq`` stays cheap
    # and light modules (file format, datasets) import without numba.
    if name == "neighbors":
        import importlib

        return importlib.import_module("ivfsq.neighbors")
    if name == "warm_up":
        from ivfsq.warmup import warm_up

        return warm_up
    raise AttributeError(f"module 'ivfsq' has no attribute {name!r}")
