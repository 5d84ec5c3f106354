"""The build parameters of :mod:`ivfsq.neighbors.ivf_sq`.

:class:`IndexParams` is defined here and used as
``ivfsq.neighbors.ivf_sq.IndexParams``, its public name (its ``__module__``
says so: documentation, doctests and ``repr`` show it there).
"""

from ivfsq import codecs
from ivfsq._validation import (
    METRICS,
    check_bool,
    check_choice,
    check_dtype_name,
    check_float,
    check_int,
)
from ivfsq.codecs.scalar import DEFAULT_RANGE_QUANTILE, RANGE_STATS
from ivfsq.ivf.transforms import TRANSFORMS

__all__ = ["IndexParams"]

PRECISE_DTYPES = ("float32", "float16")


class IndexParams:
    """Parameters to build an IVF-SQ index.

    Parameters
    ----------
    n_lists : int, default = 1024
        The number of clusters (inverted lists) of the coarse quantizer.
    metric : str, default = "sqeuclidean"
        One of "sqeuclidean" (``sum (a_i - b_i)^2``), "euclidean" (its square
        root), "inner_product" (``sum a_i b_i``, larger is better) and "cosine"
        (``1 - a.b / (|a| |b|)``).
    metric_arg : float, default = 2.0
        Kept for compatibility with cuVS; no metric here uses it.
    kmeans_n_iters : int, default = 20
        Iterations of k-means when training the coarse quantizer. With 256
        lists or more and an L2 metric, k-means is trained hierarchically
        (about ``sqrt(n_lists)`` mesoclusters, then the lists within each,
        then at most 4 iterations over all lists); each stage runs this many
        iterations.
    max_train_points_per_cluster : int, default = 256
        At most ``n_lists * max_train_points_per_cluster`` rows are sampled to
        train k-means and the scalar quantizer.
    add_data_on_build : bool, default = True
        Add the dataset to the index after training. Otherwise the index is
        left empty and :func:`extend` adds vectors.
    conservative_memory_allocation : bool, default = False
        By default list capacity grows geometrically on :func:`extend`, to
        amortize copies; ``True`` allocates exactly what is needed.
    quantizer : str, default = "sq8"
        The code of each vector: "sq8" (one byte per dimension, a range per
        dimension: the cuVS code), "sq4" (4 bits per dimension, ``ceil(dim /
        2)`` bytes), "sq8_uniform" and "sq4_uniform" (one range for all
        dimensions).
    by_residual : bool, default = True
        Quantize each vector's residual to its list's center (as cuVS does);
        ``False`` quantizes the vectors themselves.
    range_stat : str or None, default = None
        How each quantization range is chosen from the training sample:
        "minmax" (the extremes; at 8 bits widened by a 5 % margin each side, as
        cuVS does), "quantile" (clip at the ``range_quantile`` and ``1 -
        range_quantile`` quantiles) or "mse" (per dimension, the quantile clip
        with the least quantization error). ``None``: "mse" for "sq8",
        "minmax" for "sq8_uniform", "quantile" for 4-bit quantizers (the ones
        that gave the best recall; see the benchmark pages of the documentation).
    range_quantile : float, default = 0.001
        The clipped fraction on each side for ``range_stat="quantile"``.
    transform : str or None, default = None
        "rom": rotate vectors (and queries) by a random orthogonal matrix,
        seeded by ``seed`` and saved with the index, before clustering and
        quantization. It spreads variance evenly over the dimensions;
        distances are unchanged and ``centers`` stay in the original space.
    reorder : bool, default = False
        Keep a precise copy of every vector; searches then score
        ``refine_ratio * k`` candidates on the codes and re-rank them with
        exact distances (see :class:`SearchParams`).
    precise_dtype : str, default = "float32"
        Type of the precise copy: "float32" or "float16" (half the memory;
        distances are then exact for the float16-rounded vectors).
    seed : int, default = 0
        Seed of the training sample, k-means initialisation and rotation. The
        same seed, data and thread count give the same index on one machine.

    Examples
    --------
    >>> from ivfsq.neighbors import ivf_sq
    >>> ivf_sq.IndexParams(n_lists=256, metric="cosine").n_lists
    256
    >>> params = ivf_sq.IndexParams(quantizer="sq4", transform="rom", reorder=True)
    >>> params.range_stat, params.precise_dtype
    ('quantile', 'float32')
    """

    def __init__(
        self,
        *,
        n_lists=1024,
        metric="sqeuclidean",
        metric_arg=2.0,
        kmeans_n_iters=20,
        max_train_points_per_cluster=256,
        add_data_on_build=True,
        conservative_memory_allocation=False,
        quantizer="sq8",
        by_residual=True,
        range_stat=None,
        range_quantile=DEFAULT_RANGE_QUANTILE,
        transform=None,
        reorder=False,
        precise_dtype="float32",
        seed=0,
    ):
        self._n_lists = check_int("n_lists", n_lists, minimum=1)
        self._metric = check_choice("metric", metric, METRICS)
        self._metric_arg = check_float("metric_arg", metric_arg)
        self._kmeans_n_iters = check_int("kmeans_n_iters", kmeans_n_iters, minimum=1)
        self._max_train_points_per_cluster = check_int(
            "max_train_points_per_cluster", max_train_points_per_cluster, minimum=1
        )
        self._add_data_on_build = check_bool("add_data_on_build", add_data_on_build)
        self._conservative_memory_allocation = check_bool(
            "conservative_memory_allocation", conservative_memory_allocation
        )
        self._quantizer = check_choice("quantizer", quantizer, codecs.NAMES)
        self._by_residual = check_bool("by_residual", by_residual)
        self._range_stat = check_choice("range_stat", range_stat, RANGE_STATS, allow_none=True)
        if self._range_stat is None:
            self._range_stat = codecs.get(self._quantizer).default_range_stat
        self._range_quantile = check_float(
            "range_quantile", range_quantile, exclusive_minimum=0.0, exclusive_maximum=0.5
        )
        self._transform = check_choice("transform", transform, TRANSFORMS, allow_none=True)
        self._reorder = check_bool("reorder", reorder)
        self._precise_dtype = check_dtype_name("precise_dtype", precise_dtype, PRECISE_DTYPES)
        self._seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1)

    def get_handle(self):
        """An opaque handle (cuVS compatibility): the parameters object itself."""
        return self

    n_lists = property(lambda self: self._n_lists, doc="Number of inverted lists.")
    metric = property(lambda self: self._metric, doc="Distance metric name.")
    metric_arg = property(lambda self: self._metric_arg, doc="Unused metric argument.")
    kmeans_n_iters = property(lambda self: self._kmeans_n_iters, doc="k-means iterations.")
    max_train_points_per_cluster = property(
        lambda self: self._max_train_points_per_cluster, doc="Training rows per list."
    )
    add_data_on_build = property(lambda self: self._add_data_on_build, doc="Add data on build.")
    conservative_memory_allocation = property(
        lambda self: self._conservative_memory_allocation, doc="Exact list allocation."
    )
    quantizer = property(lambda self: self._quantizer, doc="Quantizer name.")
    by_residual = property(lambda self: self._by_residual, doc="Quantize residuals.")
    range_stat = property(
        lambda self: self._range_stat, doc="Range statistic (resolved when given as None)."
    )
    range_quantile = property(lambda self: self._range_quantile, doc="Quantile clip fraction.")
    transform = property(lambda self: self._transform, doc="Transform before quantization.")
    reorder = property(lambda self: self._reorder, doc="Keep a precise store for re-ranking.")
    precise_dtype = property(lambda self: self._precise_dtype, doc="Precise store dtype.")
    seed = property(lambda self: self._seed, doc="Training seed.")

    def _as_dict(self):
        return {
            "n_lists": self._n_lists,
            "metric": self._metric,
            "metric_arg": self._metric_arg,
            "kmeans_n_iters": self._kmeans_n_iters,
            "max_train_points_per_cluster": self._max_train_points_per_cluster,
            "add_data_on_build": self._add_data_on_build,
            "conservative_memory_allocation": self._conservative_memory_allocation,
            "quantizer": self._quantizer,
            "by_residual": self._by_residual,
            "range_stat": self._range_stat,
            "range_quantile": self._range_quantile,
            "transform": self._transform,
            "reorder": self._reorder,
            "precise_dtype": self._precise_dtype,
            "seed": self._seed,
        }

    def __repr__(self):
        fields = ", ".join(f"{key}={value!r}" for key, value in self._as_dict().items())
        return f"IndexParams({fields})"


IndexParams.__module__ = "ivfsq.neighbors.ivf_sq"
