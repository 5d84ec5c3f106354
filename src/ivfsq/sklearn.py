"""scikit-learn integration: the k-nearest-neighbour graph of an IVF-SQ index.

:class:`IVFSQTransformer` is a drop-in replacement for
:class:`sklearn.neighbors.KNeighborsTransformer`: it returns the same
sparse graph, found by an IVF-SQ index instead of an exact search, for
estimators that take precomputed neighbours (``Isomap``, ``TSNE``,
``SpectralClustering``, ``DBSCAN``, UMAP, ...). It needs scikit-learn
(``pip install "ivfsq[sklearn]"``).

>>> import numpy as np
>>> from ivfsq.sklearn import IVFSQTransformer
>>> X = np.random.default_rng(0).random((500, 8), dtype=np.float32)
>>> graph = IVFSQTransformer(n_neighbors=5).fit_transform(X)
>>> graph.shape, graph.nnz  # each row: the sample itself and 5 neighbours
((500, 500), 3000)
"""

import numbers
import warnings

import numpy as np
import scipy.sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ivfsq._threads import default_n_threads
from ivfsq.cli import default_n_lists
from ivfsq.common import Resources
from ivfsq.datasets import brute_force_knn, recall_at_k
from ivfsq.ivf.tune import probe_counts
from ivfsq.neighbors import ivf_sq

__all__ = ["IVFSQTransformer", "RECALL_SAMPLE"]

#: Fitted samples whose exact neighbours measure the graph's recall in
#: ``fit`` (``estimated_recall_``, and ``n_probes="auto"``).
RECALL_SAMPLE = 256

# Metrics whose values are distances (non-negative, 0 for a point and
# itself), which the estimators downstream expect.
_METRICS = ("euclidean", "sqeuclidean", "cosine")


class IVFSQTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Transform samples into the sparse graph of their approximate k nearest
    neighbours, found by an IVF-SQ index (:mod:`ivfsq.neighbors.ivf_sq`).

    The output is what :class:`sklearn.neighbors.KNeighborsTransformer`
    gives: a CSR matrix of shape ``(n_samples_transform, n_samples_fit)``
    whose row ``i`` holds the ``n_neighbors`` nearest fitted samples of
    sample ``i`` (one more in ``"distance"`` mode, since each fitted sample
    is its own nearest neighbour), best first. Every row has exactly that
    many entries: a query whose probed lists hold too few samples is
    searched again over every list.

    Parameters
    ----------
    n_neighbors : int, default=5
        Neighbours per sample (``n_neighbors + 1`` stored in "distance" mode).
    mode : {"distance", "connectivity"}, default="distance"
        "distance": the entries are distances; "connectivity": ones.
    metric : {"euclidean", "sqeuclidean", "cosine"}, default="euclidean"
        The distance ("cosine" is ``1 - cos``). With ``reorder=False`` the
        distances are those to the quantized samples.
    n_lists : int or None, default=None
        Inverted lists of the index; None: about ``4 * sqrt(n_samples)``
        (a power of two, at least 39 samples per list).
    n_probes : int or "auto", default="auto"
        Lists searched per query (clamped to ``n_lists``): more is slower
        and finds more of the true neighbours. "auto": the fewest that
        reach ``target_recall`` on a sample of the fitted samples (see
        ``estimated_recall_``).
    target_recall : float, default=0.95
        For ``n_probes="auto"``: the recall of each row's neighbours (the
        share of the true ones it holds) to reach on the sample; where
        no ``n_probes`` reaches it, every list, with a ``UserWarning``.
    quantizer : {"sq8", "sq4", "sq8_uniform", "sq4_uniform"}, default="sq8"
        The code of each sample (see :class:`ivfsq.neighbors.ivf_sq.IndexParams`).
    reorder : bool, default=False
        Keep the samples in float32 and re-rank ``refine_ratio * k``
        candidates by exact distance: exact distances in the graph.
    refine_ratio : float or None, default=None
        Candidates per neighbour re-ranked with ``reorder=True`` (None: 2).
    kmeans_n_iters : int, default=20
        Iterations of the index's k-means.
    seed : int, default=0
        Seed of the index's training; the same data, seed and ``n_jobs``
        give the same graph.
    n_jobs : int or None, default=None
        Threads; None or -1: every CPU this process may use, -2 all but
        one, and so on.

    Attributes
    ----------
    index_ : ivfsq.neighbors.ivf_sq.Index
        The index of the fitted samples (sample ``i`` has id ``i``).
    n_probes_ : int
        Lists searched per query.
    estimated_recall_ : float
        The graph's recall at ``n_probes_`` on up to
        :data:`RECALL_SAMPLE` fitted samples, against their exact
        neighbours among the fitted samples.
    n_samples_fit_ : int
        Number of fitted samples.
    n_features_in_ : int
        Number of features of the fitted samples.
    feature_names_in_ : ndarray of str
        Names of the features, one per feature, when ``X`` has string
        column names.

    Examples
    --------
    A k-nearest-neighbour graph for Isomap, as with ``KNeighborsTransformer``:

    >>> import numpy as np
    >>> from sklearn.manifold import Isomap
    >>> from sklearn.pipeline import make_pipeline
    >>> from ivfsq.sklearn import IVFSQTransformer
    >>> X = np.random.default_rng(0).random((1000, 16), dtype=np.float32)
    >>> pipeline = make_pipeline(IVFSQTransformer(n_neighbors=10),
    ...                          Isomap(n_neighbors=10, metric="precomputed"))
    >>> pipeline.fit_transform(X).shape
    (1000, 2)
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "mode": [StrOptions({"distance", "connectivity"})],
        "metric": [StrOptions(set(_METRICS))],
        "n_lists": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "n_probes": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "target_recall": [Interval(numbers.Real, 0, 1, closed="right")],
        "quantizer": [StrOptions({"sq8", "sq4", "sq8_uniform", "sq4_uniform"})],
        "reorder": ["boolean"],
        "refine_ratio": [Interval(numbers.Real, 1, None, closed="left"), None],
        "kmeans_n_iters": [Interval(numbers.Integral, 1, None, closed="left")],
        "seed": [Interval(numbers.Integral, 0, None, closed="left")],
        "n_jobs": [Interval(numbers.Integral, 1, None, closed="left"),
                   Interval(numbers.Integral, None, -1, closed="right"), None],
    }

    def __init__(self, n_neighbors=5, mode="distance", metric="euclidean", n_lists=None,
                 n_probes="auto", target_recall=0.95, quantizer="sq8", reorder=False,
                 refine_ratio=None, kmeans_n_iters=20, seed=0, n_jobs=None):
        self.n_neighbors = n_neighbors
        self.mode = mode
        self.metric = metric
        self.n_lists = n_lists
        self.n_probes = n_probes
        self.target_recall = target_recall
        self.quantizer = quantizer
        self.reorder = reorder
        self.refine_ratio = refine_ratio
        self.kmeans_n_iters = kmeans_n_iters
        self.seed = seed
        self.n_jobs = n_jobs

    def _resources(self):
        if self.n_jobs is None:
            return Resources()
        if self.n_jobs < 0:  # joblib's convention: -1 every CPU, -2 all but one, ...
            return Resources(n_threads=max(1, default_n_threads() + 1 + self.n_jobs))
        return Resources(n_threads=self.n_jobs)

    def fit(self, X, y=None):
        """Build the index of the samples ``X`` (array-like, n_samples x
        n_features). ``y`` is ignored. Returns the transformer."""
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        n_samples = X.shape[0]
        n_lists = self.n_lists if self.n_lists is not None else default_n_lists(n_samples)
        if n_lists > n_samples:
            raise ValueError(
                f"n_lists must be at most the number of samples, got n_lists = {n_lists} "
                f"and n_samples = {n_samples}"
            )
        params = ivf_sq.IndexParams(
            n_lists=n_lists, metric=self.metric, quantizer=self.quantizer,
            reorder=self.reorder, kmeans_n_iters=self.kmeans_n_iters, seed=self.seed)
        X = X.astype(np.float32, copy=False)
        self.index_ = ivf_sq.build(params, X, resources=self._resources())
        self.n_samples_fit_ = n_samples
        self._n_features_out = n_samples
        self.n_probes_, self.estimated_recall_ = self._choose_n_probes(X)
        return self

    def _choose_n_probes(self, X):
        """(n_probes, recall on a sample of X): ``n_probes`` clamped to the
        lists, or for "auto" the fewest on the ladder 1, 2, 3, 4, 6, 8, 12,
        ... (about x1.5 each) whose graph rows of the sample hold
        ``target_recall`` of their true neighbours."""
        n_lists = self.index_.n_lists
        k = min(self.n_neighbors + (self.mode == "distance"), X.shape[0])
        rng = np.random.default_rng(self.seed)
        sample = X[np.sort(rng.choice(X.shape[0], min(X.shape[0], RECALL_SAMPLE),
                                      replace=False))]
        truth = brute_force_knn(X, sample, k, metric=self.metric)[1]
        if self.n_probes == "auto":
            ladder = probe_counts(n_lists)
        else:
            ladder = [min(self.n_probes, n_lists)]
        for n_probes in ladder:
            found = self._search(sample, k, n_probes)[1]
            recall = recall_at_k(found, truth, k)
            if recall >= self.target_recall:
                break
        else:
            if self.n_probes == "auto":
                hint = ("a larger refine_ratio re-ranks more candidates" if self.reorder
                        else "reorder=True re-ranks by exact distances")
                warnings.warn(
                    f"target_recall={self.target_recall} is not reached: {recall:.4f} with "
                    f"every list searched (the codes' limit; {hint})", UserWarning,
                    stacklevel=3)
        return n_probes, float(recall)

    def transform(self, X):
        """The sparse neighbour graph of ``X`` (n_samples_transform x
        n_features) over the fitted samples: a CSR matrix of shape
        ``(n_samples_transform, n_samples_fit_)`` of float64 values (as
        ``KNeighborsTransformer`` returns), each row best first."""
        check_is_fitted(self, "index_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        k = self.n_neighbors + (self.mode == "distance")
        if k > self.n_samples_fit_:
            raise ValueError(
                f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {k}, "
                f"n_samples_fit = {self.n_samples_fit_}, n_samples = {X.shape[0]}"
            )
        distances, neighbors = self._search(X.astype(np.float32, copy=False), k,
                                            self.n_probes_)
        n_rows = X.shape[0]
        if self.mode == "distance":
            values = np.maximum(distances, 0).astype(np.float64).ravel()
        else:
            values = np.ones(n_rows * k)
        return scipy.sparse.csr_matrix(
            (values, neighbors.ravel(), np.arange(0, n_rows * k + 1, k)),
            shape=(n_rows, self.n_samples_fit_),
        )

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``: the graph of the samples over themselves."""
        return self.fit(X).transform(X)

    def _search(self, queries, k, n_probes):
        """(distances, ids) of the k nearest fitted samples of each query at
        ``n_probes``; queries whose probed lists hold fewer than k samples
        are searched again over every list, so no result is missing."""
        resources = self._resources()
        refine_ratio = (self.refine_ratio or 2.0) if self.reorder else None
        params = ivf_sq.SearchParams(n_probes=n_probes, refine_ratio=refine_ratio)
        distances, neighbors = ivf_sq.search(params, self.index_, queries, k,
                                             resources=resources)
        short = np.flatnonzero((neighbors < 0).any(axis=1))
        if short.size:
            every = ivf_sq.SearchParams(n_probes=self.index_.n_lists, refine_ratio=refine_ratio)
            distances[short], neighbors[short] = ivf_sq.search(
                every, self.index_, queries[short], k, resources=resources)
        return distances, neighbors
