"""IVF-SQ: an inverted file over scalar-quantized residuals.

The API follows ``cuvs.neighbors.ivf_sq``: :class:`IndexParams`,
:class:`SearchParams`, :class:`Index`, :func:`build`, :func:`extend`,
:func:`search`, :func:`save` and :func:`load` take the same names, keyword
arguments and defaults, so code written for cuVS runs by changing the import.
This module validates input and dispatches; the work is done in
:mod:`ivfsq.ivf.engine` and the numba kernels.

Examples
--------
>>> import numpy as np
>>> from ivfsq.neighbors import ivf_sq
>>> rng = np.random.default_rng(0)
>>> dataset = rng.random((5000, 32), dtype=np.float32)
>>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=64), dataset)
>>> distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=8),
...                                      index, dataset[:4], k=5)
>>> neighbors[:, 0].tolist()
[0, 1, 2, 3]
"""

import sys

import numpy as np

from ivfsq import _device
from ivfsq._validation import (
    check_bool,
    check_float,
    check_id_list,
    check_ids,
    check_int,
    check_matrix,
    output_writer,
)
from ivfsq.common import Resources, resolve_device, resolve_n_threads
from ivfsq.io import format as _format
from ivfsq.ivf import persistence as _persistence
from ivfsq.ivf import tune as _tune
from ivfsq.ivf.engine import IvfSqEngine
from ivfsq.ivf.planner import SearchPlan
from ivfsq.neighbors._index_params import IndexParams
from ivfsq.neighbors._search_params import SearchParams
from ivfsq.neighbors.filters import Filter

__all__ = [
    "Index",
    "IndexParams",
    "SearchParams",
    "SearchPlan",
    "build",
    "extend",
    "from_bytes",
    "load",
    "merge",
    "range_search",
    "reconstruct",
    "remove",
    "save",
    "search",
    "search_plan",
    "tune",
]

# Candidates re-ranked per result when an index has a precise store and
# SearchParams(refine_ratio=None).
DEFAULT_REFINE_RATIO = 2.0


class Index:
    """An IVF-SQ index; create one with :func:`build` or :func:`load`.

    ``Index()`` is an untrained, empty index: its accessors raise
    ``ValueError`` until it is built.
    """

    def __init__(self):
        self._engine = None
        self._params = None
        self._device = "cpu"  # where searches run by default (to_device, to_host)

    @classmethod
    def _from_engine(cls, engine, params):
        """The index over a trained engine, built with ``params``: the one
        way build, load and merge make a trained index."""
        index = cls()
        index._engine = engine
        index._params = params
        return index

    def _require_trained(self):
        if self._engine is None:
            raise ValueError("index is not trained: build it with ivf_sq.build() or ivf_sq.load()")
        return self._engine

    @property
    def trained(self):
        """Whether the index has been built (trained)."""
        return self._engine is not None

    @property
    def n_lists(self):
        """The number of inverted lists (clusters)."""
        return self._require_trained().centers.shape[0]

    @property
    def dim(self):
        """Dimensionality of the vectors (and of the cluster centers)."""
        return self._require_trained().centers.shape[1]

    @property
    def centers(self):
        """The cluster centers in the original space, float32 (n_lists, dim).

        For the cosine metric, vectors are normalized before clustering, so
        the centers are in the space of unit vectors. With ``transform="rom"``
        the rotation is undone.
        """
        engine = self._require_trained()
        centers = engine.original_space(engine.centers).view()
        centers.flags.writeable = False
        return centers

    @property
    def metric(self):
        """The distance metric name."""
        return self._require_trained().metric.name

    @property
    def quantizer(self):
        """The quantizer name ("sq8", "sq4", "sq8_uniform" or "sq4_uniform")."""
        return self._require_trained().quantizer.kind

    @property
    def index_params(self):
        """The :class:`IndexParams` the index was built with."""
        self._require_trained()
        return self._params

    @property
    def next_id(self):
        """The id :func:`extend` gives the next vector when ``new_indices`` is
        None: one past the largest id ever added (0 for an empty index)."""
        return int(self._require_trained().next_id)

    @property
    def size(self):
        """The number of vectors in the index (same as ``len(index)``)."""
        return self._require_trained().lists.size

    def __len__(self):
        return self.size if self.trained else 0

    @property
    def list_sizes(self):
        """Vectors in each list, int64 (n_lists,)."""
        return self._require_trained().lists.list_sizes.copy()

    @property
    def imbalance_factor(self):
        """``n_lists * sum(size^2) / size^2``: 1.0 when all lists are equal."""
        return self._require_trained().list_imbalance

    @property
    def memory_bytes(self):
        """Bytes held by the index: codes, ids, norms, lists, centers, ranges."""
        return sum(self.memory_breakdown.values())

    @property
    def memory_breakdown(self):
        """Bytes per part of the index, as a dict.

        ``codes``, ``ids``, ``norms`` (one float32 per vector) and ``precise``
        (the reorder store, 0 without one) count allocated rows, spare list
        capacity included; then ``list_metadata``, ``centers`` (with their
        squared norms), ``quantizer`` (the range table), ``rotation``, and
        ``first_pass``: the 4-bit copy of the lists that searches with
        ``first_pass_candidates`` scan (0 until one has made it; it is not
        saved with the index).
        """
        engine = self._require_trained()
        lists = engine.lists
        return {
            "codes": lists.codes.nbytes,
            "ids": lists.ids.nbytes,
            "norms": lists.aux.nbytes,
            "precise": 0 if lists.precise is None else lists.precise.nbytes,
            "list_metadata": lists.metadata_nbytes,
            "centers": engine.centers.nbytes + engine.center_sq_norms.nbytes,
            "quantizer": engine.quantizer.nbytes,
            "rotation": 0 if engine.rotation is None else engine.rotation.nbytes,
            "first_pass": engine.first_pass_nbytes(lists),
        }

    def to_bytes(self):
        """The index as bytes: the file :func:`save` writes (the same
        versioned, checksummed format; nothing pickled), for
        :func:`from_bytes`.

        Examples
        --------
        >>> import numpy as np
        >>> from ivfsq.neighbors import ivf_sq
        >>> data = np.random.default_rng(0).random((1000, 8), dtype=np.float32)
        >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), data)
        >>> len(ivf_sq.from_bytes(index.to_bytes()))
        1000
        """
        engine = self._require_trained()
        header, arrays = _persistence.to_file_contents(engine, self._params._as_dict())
        return _format.index_bytes(header, arrays)

    @property
    def device(self):
        """Where the index's searches run when a call names no device:
        "cpu", or "cuda" after :meth:`to_device`."""
        return self._device

    @property
    def device_memory_bytes(self):
        """Bytes of GPU memory the index's lists hold (0 on the host): the
        codes, ids, side values, list metadata, centers, quantizer ranges
        and precise store copied by :meth:`to_device` or a GPU search."""
        engine = self._require_trained()
        if "ivfsq.backends.cuda.search" not in sys.modules:
            return 0  # no GPU search ever ran in this process
        return sys.modules["ivfsq.backends.cuda.search"].device_nbytes(engine)

    def to_device(self):
        """Copy the index's lists to the GPU and search there from now on.

        The host copy stays (saving, ``extend`` and ``remove`` work on it,
        and each of these copies its new lists to the GPU again). Searches
        with NumPy queries still return NumPy arrays. Returns the index;
        RuntimeError where no GPU backend can run (it needs the ``gpu``
        extra and an NVIDIA GPU).
        """
        engine = self._require_trained()
        resolve_device(Resources(device="cuda"))
        from ivfsq.backends.cuda import search as cuda_search

        cuda_search.device_lists(engine)
        self._device = "cuda"
        return self

    def to_host(self):
        """Search on the CPU from now on and free the GPU copy of the lists
        (if any). Returns the index."""
        engine = self._require_trained()
        if self._device == "cuda":
            from ivfsq.backends.cuda import search as cuda_search

            cuda_search.release(engine)
        self._device = "cpu"
        return self

    def _refresh_device_copy(self):
        """After a change of the lists: copy the new ones to the GPU now, for
        an index that lives there."""
        if self._device == "cuda":
            from ivfsq.backends.cuda import search as cuda_search

            cuda_search.device_lists(self._engine)

    def __reduce__(self):
        # Pickled as its bytes (the index file format, checked on the way
        # back by from_bytes), not as Python objects: pickle, joblib,
        # multiprocessing and Ray carry an index that way.
        if not self.trained:
            return (Index, ())
        return (from_bytes, (self.to_bytes(),))

    def __repr__(self):
        if not self.trained:
            return "Index(trained=False)"
        return (
            f"Index(trained=True, n_lists={self.n_lists}, dim={self.dim}, size={self.size}, "
            f"metric={self.metric!r}, quantizer={self.quantizer!r})"
        )


def _data_device(index, *arrays):
    """Where a call's data lives: "cuda" for device arrays or an index moved
    to the GPU, else "cpu"."""
    if any(_device.is_device_array(array) for array in arrays):
        return "cuda"
    return "cuda" if index is not None and index._device == "cuda" else "cpu"


def _check_index(index):
    if not isinstance(index, Index):
        raise TypeError(f"index must be an ivf_sq.Index, got {type(index).__name__}")
    return index._require_trained()


def build(index_params, dataset, resources=None):
    """Build an IVF-SQ index from a dataset.

    Trains balanced k-means on ``min(n_rows, n_lists *
    max_train_points_per_cluster)`` sampled rows, trains the per-dimension
    8-bit ranges on their residuals, then (if ``add_data_on_build``) encodes
    every row, in batches so a memory-mapped dataset larger than RAM works.

    Parameters
    ----------
    index_params : IndexParams
    dataset : array (n_rows, dim)
        float32 or float16; other real dtypes (float64, uint8, int8, ...)
        are converted to float32. ``n_rows >= n_lists``.
    resources : ivfsq.common.Resources, optional
        ``device="cuda"`` (or a device array ``dataset``) trains and encodes
        on the GPU (k-means assigns rows there; its center updates run on
        the host) and returns an index there (:meth:`Index.to_device`).

    Returns
    -------
    Index

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> dataset = np.random.default_rng(0).random((2000, 16), dtype=np.float32)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), dataset)
    >>> index.trained, index.n_lists, index.dim, len(index)
    (True, 32, 16, 2000)
    """
    if not isinstance(index_params, IndexParams):
        raise TypeError(
            f"index_params must be an ivf_sq.IndexParams, got {type(index_params).__name__}"
        )
    device = resolve_device(resources, _data_device(None, dataset))
    dataset = check_matrix("dataset", dataset)
    n_rows = dataset.shape[0]
    if n_rows < index_params.n_lists:
        raise ValueError(
            f"dataset must have at least n_lists={index_params.n_lists} rows, got {n_rows}"
        )
    n_threads = resolve_n_threads(resources)
    engine, labels = IvfSqEngine.train(index_params, dataset, n_threads, device)
    if index_params.add_data_on_build:
        engine.add(dataset, np.arange(n_rows, dtype=np.int64), n_threads, labels, name="dataset",
                   device=device)
    index = Index._from_engine(engine, index_params)
    return index.to_device() if device == "cuda" else index


def extend(index, new_vectors, new_indices, resources=None):
    """Add vectors to a built index (without retraining).

    Parameters
    ----------
    index : Index
        A trained index; it is changed in place and returned.
    new_vectors : array (n_rows, dim)
        float32 or float16 (other real dtypes are converted).
    new_indices : int64 array (n_rows,), or None
        The ids of the new vectors: non-negative and unique, and not already in
        the index. ``None`` numbers them after the largest id so far.
    resources : ivfsq.common.Resources, optional

    Returns
    -------
    Index
        The same index object. If anything is invalid, the index is left as
        it was.

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> rng = np.random.default_rng(0)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16),
    ...                      rng.random((1000, 8), dtype=np.float32))
    >>> more = rng.random((10, 8), dtype=np.float32)
    >>> index = ivf_sq.extend(index, more, np.arange(1000, 1010, dtype=np.int64))
    >>> len(index)
    1010
    """
    engine = _check_index(index)
    device = resolve_device(resources, _data_device(index, new_vectors, new_indices))
    new_vectors = check_matrix("new_vectors", new_vectors, dim=index.dim, allow_empty=True)
    ids = None
    if new_indices is not None:
        ids = check_ids("new_indices", new_indices, new_vectors.shape[0])
    engine.add(new_vectors, ids, resolve_n_threads(resources), device=device)
    index._refresh_device_copy()
    return index


def merge(indexes, resources=None):
    """One index holding the vectors of several that share their training.

    Shards are built from one trained index: build it with
    ``add_data_on_build=False``, save it, and load it once per shard (or
    build each shard with the same parameters and training rows), then
    :func:`extend` each with its own vectors and ids.

    Parameters
    ----------
    indexes : sequence of Index
        At least one. They must have the same metric, centers, quantizer
        (kind and ranges), residual rule, rotation and precise store, and
        no id in common.
    resources : ivfsq.common.Resources, optional

    Returns
    -------
    Index
        A new index (the inputs are not changed), with the first index's
        parameters; lists keep each input's vectors in input order. It is
        on the GPU (:meth:`Index.to_device`) when any input is.

    Raises
    ------
    ValueError
        If two indexes were trained separately or differ in codec (the
        message says what differs), or share an id.

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> data = np.random.default_rng(0).random((2000, 8), dtype=np.float32)
    >>> params = ivf_sq.IndexParams(n_lists=16, add_data_on_build=False)
    >>> shards = [ivf_sq.build(params, data) for _ in range(2)]  # same training
    >>> shards[0] = ivf_sq.extend(shards[0], data[:1000], np.arange(1000))
    >>> shards[1] = ivf_sq.extend(shards[1], data[1000:], np.arange(1000, 2000))
    >>> len(ivf_sq.merge(shards))
    2000
    """
    if isinstance(indexes, Index) or not hasattr(indexes, "__iter__"):
        raise TypeError(
            f"indexes must be a sequence of ivf_sq.Index, got {type(indexes).__name__}"
        )
    indexes = list(indexes)
    if not indexes:
        raise ValueError("indexes must hold at least one index, got an empty sequence")
    engines = []
    for position, index in enumerate(indexes):
        if not isinstance(index, Index):
            raise TypeError(
                f"indexes[{position}] must be an ivf_sq.Index, got {type(index).__name__}"
            )
        engines.append(index._require_trained())
    for position, engine in enumerate(engines[1:], start=1):
        mismatch = engines[0].codec_mismatch(engine)
        if mismatch is not None:
            raise ValueError(
                f"indexes[{position}] cannot be merged with indexes[0]: it has {mismatch}"
            )
    merged = Index._from_engine(engines[0].merged(engines[1:]), indexes[0]._params)
    if any(index.device == "cuda" for index in indexes):
        merged.to_device()
    return merged


def remove(index, ids, resources=None):
    """Delete vectors by id.

    Parameters
    ----------
    index : Index
        Changed in place.
    ids : int64 array (n,)
        Ids to delete; ids not in the index are ignored, repeats count once.
    resources : ivfsq.common.Resources, optional

    Returns
    -------
    int
        How many vectors were removed. Searches no longer return them, and
        ``len(index)`` drops by as much; a later :func:`extend` may give their
        ids to new vectors (``new_indices=None`` still continues after the
        largest id ever added). Searches running meanwhile see the index
        before or after the removal.

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16),
    ...                      np.random.default_rng(0).random((1000, 8), dtype=np.float32))
    >>> ivf_sq.remove(index, np.array([3, 5, 5, 5000]))
    2
    >>> len(index)
    998
    """
    engine = _check_index(index)
    ids = np.unique(check_id_list("ids", ids))
    removed = engine.remove(ids)
    index._refresh_device_copy()
    return removed


def reconstruct(index, ids, resources=None):
    """The stored (decoded) vectors of some ids.

    Parameters
    ----------
    index : Index
    ids : int64 array (n,)
        Ids in the index (repeats allowed).
    resources : ivfsq.common.Resources, optional

    Returns
    -------
    float32 array (n, dim)
        ``c + vmin + code * delta`` for each id, in the original space (a
        rotation is undone): the vectors search distances are computed
        against (for cosine, the normalized vectors' decoding). An index
        with a precise store still returns the decoded codes.

    Raises
    ------
    ValueError
        If an id is not in the index (the message names it).

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> data = np.random.default_rng(0).random((1000, 8), dtype=np.float32)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), data)
    >>> vectors = ivf_sq.reconstruct(index, np.array([7, 3]))
    >>> vectors.shape, bool(np.abs(vectors - data[[7, 3]]).max() < 0.01)
    ((2, 8), True)
    """
    engine = _check_index(index)
    ids = check_id_list("ids", ids)
    if ids.shape[0] == 0:
        return np.empty((0, index.dim), dtype=np.float32)
    return engine.reconstruct(ids)


def tune(index, queries, *, target_recall, k, ground_truth=None, resources=None,
         first_pass=None, filter=None):
    """The cheapest search parameters that reach a recall on sample queries.

    ``n_probes`` is swept upwards (1, 2, 3, 4, 6, 8, 12, ... n_lists, each
    about 1.5x the last) until the target is met; for an index with a
    precise store each ``refine_ratio`` of 1, 2 and 4 is swept too, and for
    8-bit codes the exact scan and a 4-bit first pass keeping ``2 k`` and
    ``4 k`` candidates (``first_pass_candidates``). Each setting is
    searched once to warm up, then timed (the fastest of at least 3 runs,
    repeated for at least 0.05 s).

    Parameters
    ----------
    index : Index
    queries : array (n_queries, dim)
        Sample queries, like the ones the index will serve.
    target_recall : float
        Recall@k to reach, in (0, 1].
    k : int
        Neighbours per query.
    ground_truth : int array (n_queries, >= k), optional
        The true neighbours' ids, best first (e.g. from the raw vectors).
        When not given, the exact top-k over the vectors the index stores
        (the precise store if there is one, else the decoded codes) is
        computed by brute force: recall then measures what probing loses,
        not what quantization does. That decodes every stored vector
        (``len(index) x dim`` float32 in memory); for large indexes, pass
        ``ground_truth``.
    resources : ivfsq.common.Resources, optional
        Threads for the timed searches (QPS depends on it).
    first_pass : bool or None, default = None
        Sweep the 4-bit first pass too: ``None`` where the codes are 8-bit,
        ``False`` never (``True`` for 4-bit codes is an error).
    filter : Filter, optional
        Tune the searches with this filter (a bitset, or a bitmap with one
        row per query); the computed ground truth is then among the kept
        ids, and recall counts the true ids there are (fewer than ``k``
        where fewer pass).

    Returns
    -------
    search_params : SearchParams
        Among the measured settings that reach ``target_recall``: the
        highest measured QPS where more than ``n_probes`` is swept (a
        precise store or the first pass), else the fewest ``n_probes``.
    points : list of dict
        The measured Pareto front (no point has both higher recall and
        higher QPS), by increasing recall: ``n_probes``, ``refine_ratio``,
        ``first_pass_candidates``, ``recall``, ``qps``, ``seconds``.

    Raises
    ------
    ValueError
        If no setting reaches ``target_recall`` (the message gives the best
        recall measured), or for invalid arguments.

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> data = np.random.default_rng(0).random((3000, 16), dtype=np.float32)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), data)
    >>> params, points = ivf_sq.tune(index, data[:100], target_recall=0.9, k=10)
    >>> 1 <= params.n_probes <= 32, points[-1]["recall"] >= 0.9
    (True, True)
    """
    engine = _check_index(index)
    queries = check_matrix("queries", queries, dim=index.dim)
    k = check_int("k", k, minimum=1)
    if k > engine.lists.size:
        raise ValueError(
            f"k must be <= the number of vectors in the index ({engine.lists.size}), got {k}"
        )
    target_recall = check_float("target_recall", target_recall, minimum=0.0)
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    n_queries = queries.shape[0]
    keep_words = _filter_words(filter, engine, n_queries)
    if ground_truth is None:
        prepared = engine.prepare("queries", queries)[0]
        truth = _tune.stored_ground_truth(engine, prepared, k, keep_words)
    else:
        truth = np.asarray(ground_truth)
        if truth.dtype.kind not in "iu":
            raise TypeError(f"ground_truth must have an integer dtype, got dtype {truth.dtype}")
        if truth.ndim != 2 or truth.shape[0] != n_queries or truth.shape[1] < k:
            raise ValueError(
                f"ground_truth must have shape ({n_queries}, >= {k}) (one row per query), "
                f"got shape {truth.shape}"
            )
    eight_bit = engine.quantizer.bits == 8
    if first_pass is None:
        first_pass = eight_bit
    elif not isinstance(first_pass, (bool, np.bool_)):
        raise TypeError(f"first_pass must be a bool or None, got {type(first_pass).__name__}")
    elif first_pass and not eight_bit:
        raise ValueError(
            f"first_pass=True needs 8-bit codes ('sq8' or 'sq8_uniform'), got an index with "
            f"{engine.quantizer.bits}-bit codes"
        )
    variants = _tune.variants(engine.has_precise, first_pass, k)

    def run(n_probes, refine_ratio, candidates, count):
        params = SearchParams(n_probes=n_probes, refine_ratio=refine_ratio,
                              first_pass_candidates=candidates)
        return search(params, index, queries[:count], k, resources=resources,
                      filter=filter)[1]

    points = _tune.sweep(run, n_queries, truth[:, :k], k, index.n_lists, target_recall,
                         variants)
    chosen = _tune.choose(points, target_recall, k, by_qps=len(variants) > 1)
    return (
        SearchParams(n_probes=chosen["n_probes"], refine_ratio=chosen["refine_ratio"],
                     first_pass_candidates=chosen["first_pass_candidates"]),
        _tune.pareto_front(points),
    )


def _filter_words(filter, engine, n_queries):
    """The filter's bitsets as the engine takes them (one row for every
    query, or one per query; None without a filter), checked."""
    if filter is None:
        return None
    if not isinstance(filter, Filter):
        raise TypeError(
            "filter must be created with ivfsq.neighbors.filters.from_bitset or from_bitmap, "
            f"got {type(filter).__name__}"
        )
    return filter.rows(n_queries, engine.next_id)


def range_search(search_params, index, queries, radius, resources=None, filter=None):
    """Every vector within ``radius`` of each query, in the probed lists.

    Parameters
    ----------
    search_params : SearchParams
        ``n_probes`` lists are scanned per query, as in :func:`search`
        (``refine_ratio`` is not used).
    index : Index
    queries : array (n_queries, dim)
    radius : float
        "sqeuclidean": squared distance <= radius; "euclidean": distance
        <= radius; "cosine": ``1 - cos`` <= radius; "inner_product": inner
        product >= radius. Bounds are inclusive.
    resources : ivfsq.common.Resources, optional
    filter : ivfsq.neighbors.filters.Filter, optional

    Returns
    -------
    offsets : int64 (n_queries + 1,)
        Query ``i``'s results are ``neighbors[offsets[i]:offsets[i + 1]]``.
    neighbors : int64 (offsets[-1],)
    distances : float32 (offsets[-1],)
        Computed as :func:`search` computes them (exact for the decoded
        codes, or from the precise store when the index has one); each
        query's results best first, ties by id.

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> data = np.random.default_rng(0).random((2000, 8), dtype=np.float32)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), data)
    >>> offsets, neighbors, distances = ivf_sq.range_search(
    ...     ivf_sq.SearchParams(n_probes=16), index, data[:2], radius=0.05)
    >>> int(neighbors[offsets[0]]), bool(distances.max() <= 0.05)
    (0, True)
    """
    if not isinstance(search_params, SearchParams):
        raise TypeError(
            f"search_params must be an ivf_sq.SearchParams, got {type(search_params).__name__}"
        )
    engine = _check_index(index)
    given = queries
    on_device = _device.is_device_array(queries)
    device = resolve_device(resources, "cuda" if on_device else _data_device(index))
    queries = check_matrix("queries", queries, dim=index.dim, allow_empty=True)
    radius = check_float("radius", radius)
    n_queries = queries.shape[0]
    keep_words = _filter_words(filter, engine, n_queries)
    metric = engine.metric
    internal = metric.radius_to_internal(radius)
    if n_queries == 0 or engine.lists.size == 0:
        found = (np.zeros(n_queries + 1, dtype=np.int64), np.zeros(0, dtype=np.int64),
                 np.zeros(0, dtype=np.float32))
    else:
        prepared = engine.prepare("queries", queries)[0]
        offsets, neighbors, distances = engine.range_search(
            prepared, internal, search_params.n_probes, keep_words,
            resolve_n_threads(resources), int_filter=search_params.int_filter, device=device,
        )
        found = offsets, neighbors, metric.to_public(distances)
    if on_device:
        return tuple(_device.like(given, array) for array in found)
    return found


def _check_search_params(search_params):
    if not isinstance(search_params, SearchParams):
        raise TypeError(
            f"search_params must be an ivf_sq.SearchParams, got {type(search_params).__name__}"
        )


def _check_k_refine(search_params, lists, k):
    """``k`` checked against the snapshot ``lists``, and the refine ratio
    the search uses (None without a precise store)."""
    n_stored = lists.size
    k = check_int("k", k, minimum=1)
    if k > n_stored:
        raise ValueError(f"k must be <= the number of vectors in the index ({n_stored}), got {k}")
    refine_ratio = search_params.refine_ratio
    if lists.precise is not None:
        return k, DEFAULT_REFINE_RATIO if refine_ratio is None else refine_ratio
    if refine_ratio is not None:
        raise ValueError(
            "search_params.refine_ratio needs an index built with reorder=True, got "
            f"refine_ratio={refine_ratio} for an index without a precise store"
        )
    return k, None


def _search_one(search_params, index, queries, k, resources):
    """:func:`search` of one float32 query row with no filter and no output
    arrays, where the engine has a one-query runner for the arguments: they
    are checked once (per arguments and snapshot of the lists), and then
    each call only prepares its query (checked, as always) and runs it.
    None where the call is not such a one: the general path then runs, and
    raises what it raises."""
    # Exact types only: the slot compares the arguments with ``==``, which
    # other types (arrays) may not answer with a bool.
    if (type(index) is not Index or type(search_params) is not SearchParams
            or type(k) is not int or (resources is not None and type(resources) is not Resources)
            or type(queries) is not np.ndarray or queries.ndim != 2 or queries.shape[0] != 1
            or queries.dtype != np.float32):
        return None
    engine = index._engine
    if engine is None or queries.shape[1] != engine.centers.shape[1]:
        return None

    def make(lists):
        try:
            checked_k, refine_ratio = _check_k_refine(search_params, lists, k)
            return engine.one_query_runner(
                lists, checked_k, search_params.n_probes, resolve_n_threads(resources),
                refine_ratio, search_params.scan, search_params.int_filter,
                resolve_device(resources, index._device),
                search_params.first_pass_candidates or 0)
        except (TypeError, ValueError):
            return None  # the general path raises it

    # The index's device is part of the key: to_device() after a CPU runner
    # was made must not find it.
    runner = engine.one_query((search_params, k, resources, index._device), make)
    if runner is None:
        return None
    distances, neighbors = runner.run(engine.prepare("queries", queries)[0])
    engine.metric.to_public(distances)
    return distances, neighbors


def search(
    search_params,
    index,
    queries,
    k,
    neighbors=None,
    distances=None,
    resources=None,
    filter=None,
):
    """Find the k nearest neighbours of each query.

    Parameters
    ----------
    search_params : SearchParams
    index : Index
    queries : array (n_queries, dim)
        float32 or float16 (other real dtypes are converted).
    k : int
        Neighbours per query, ``1 <= k <= len(index)``.
    neighbors : int64 array (n_queries, k), optional
        Written in place when given, and returned: a NumPy array or any
        array that exposes host memory (``__array_interface__``,
        ``__dlpack__``, e.g. a PyTorch CPU tensor).
    distances : float32 array (n_queries, k), optional
        As ``neighbors``.
    resources : ivfsq.common.Resources, optional
    filter : ivfsq.neighbors.filters.Filter, optional
        Only ids whose bit is set are returned.

    Returns
    -------
    distances : float32 (n_queries, k)
        Best first: ascending for "sqeuclidean", "euclidean" and "cosine"
        (``1 - cos``), descending inner products for "inner_product". They are
        the exact distances between the query and the decoded vectors, or,
        for an index with a precise store (``reorder=True``), between the
        query and the stored precise vectors.
    neighbors : int64 (n_queries, k)
        Ids of the neighbours. When fewer than ``k`` vectors are found (few
        probed vectors, or a filter), the rest is padded with id -1 and
        distance +inf (-inf for "inner_product").

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import ivf_sq
    >>> rng = np.random.default_rng(0)
    >>> dataset = rng.random((2000, 16), dtype=np.float32)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), dataset)
    >>> distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=8),
    ...                                      index, dataset[:3], k=4)
    >>> distances.dtype, neighbors.dtype, neighbors.shape
    (dtype('float32'), dtype('int64'), (3, 4))
    """
    if neighbors is None and distances is None and filter is None:
        found = _search_one(search_params, index, queries, k, resources)
        if found is not None:
            return found
    _check_search_params(search_params)
    engine = _check_index(index)
    given = queries
    on_device = _device.is_device_array(queries)
    device = resolve_device(resources, "cuda" if on_device else _data_device(index))
    queries = check_matrix("queries", queries, dim=index.dim, allow_empty=True)
    k, refine_ratio = _check_k_refine(search_params, engine.lists, k)
    n_queries = queries.shape[0]
    keep_words = _filter_words(filter, engine, n_queries)
    if neighbors is not None:
        write_neighbors = output_writer("neighbors", neighbors, (n_queries, k), np.int64)
    if distances is not None:
        write_distances = output_writer("distances", distances, (n_queries, k), np.float32)
    n_threads = resolve_n_threads(resources)
    query_rows = engine.prepare("queries", queries)[0] if n_queries else queries
    if n_queries:
        out_d, out_i = engine.search(
            query_rows, k, search_params.n_probes, keep_words, n_threads, refine_ratio,
            filter_memo=None if filter is None else filter._memo,
            scan=search_params.scan, int_filter=search_params.int_filter, device=device,
            first_pass=search_params.first_pass_candidates or 0,
        )
    else:
        out_d = np.empty((0, k), dtype=np.float32)
        out_i = np.empty((0, k), dtype=np.int64)
    engine.metric.to_public(out_d)
    # Given buffers are written and returned as they came (a DLPack,
    # array-interface or device array stays that object); without them,
    # device queries get device arrays of their own kind.
    if neighbors is not None:
        write_neighbors(out_i)
        out_i = neighbors
    elif on_device:
        out_i = _device.like(given, out_i)
    if distances is not None:
        write_distances(out_d)
        out_d = distances
    elif on_device:
        out_d = _device.like(given, out_d)
    return out_d, out_i



def search_plan(search_params, index, n_queries, resources=None):
    """How :func:`search` would scan a batch of ``n_queries`` queries now.

    The planner's choice from the batch shape, the thread count and the
    index's lists, with ``search_params``' ``scan`` and ``int_filter``
    overrides applied (an override the index cannot take raises
    ``ValueError``, as the search would). A batch larger than the plan's
    ``block_queries`` is searched in blocks, each planned for its size.

    Returns
    -------
    plan : SearchPlan
        ``path`` ("few", "per_query", "per_list" or "list_major"),
        ``int_filter`` ("off", "int8" or "int16"), ``block_queries`` and
        ``coarse_in_kernel``.

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.common import Resources
    >>> from ivfsq.neighbors import ivf_sq
    >>> dataset = np.random.default_rng(0).random((2000, 16), dtype=np.float32)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), dataset)
    >>> params = ivf_sq.SearchParams(n_probes=4)
    >>> ivf_sq.search_plan(params, index, 1, resources=Resources(n_threads=1)).path
    'few'
    >>> ivf_sq.search_plan(params, index, 1000).path
    'list_major'
    """
    if not isinstance(search_params, SearchParams):
        raise TypeError(
            f"search_params must be an ivf_sq.SearchParams, got {type(search_params).__name__}"
        )
    engine = _check_index(index)
    n_queries = check_int("n_queries", n_queries, minimum=1)
    return engine.plan(engine.lists, n_queries, search_params.n_probes,
                       resolve_n_threads(resources), search_params.scan, search_params.int_filter,
                       search_params.first_pass_candidates or 0)


def save(filename, index, resources=None):
    """Save the index to a file (atomically: an older file survives a crash).

    The format is ivfsq's own: a versioned header and checksummed raw arrays;
    nothing is pickled.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from ivfsq.neighbors import ivf_sq
    >>> dataset = np.random.default_rng(0).random((1000, 8), dtype=np.float32)
    >>> index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), dataset)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "my_index.ivfsq")
    ...     ivf_sq.save(path, index)
    ...     len(ivf_sq.load(path))
    1000
    """
    engine = _check_index(index)
    header, arrays = _persistence.to_file_contents(engine, index._params._as_dict())
    _format.write_index_file(filename, header, arrays)


def load(filename, resources=None, *, mmap=False):
    """Load an index saved by :func:`save`.

    Parameters
    ----------
    filename : str or path
    resources : ivfsq.common.Resources, optional
    mmap : bool, default False
        Map the codes, ids and norms from the file instead of reading them
        into memory, for indexes larger than RAM. Searches give the same
        results; an ``extend`` copies the lists into memory.

    Raises
    ------
    ValueError
        ``ivfsq.io.format.IndexFileError``, naming the file and the problem,
        if the file is truncated, corrupt, of another version, or not an
        ivfsq index file, or if its content is not one consistent index
        (see :mod:`ivfsq.ivf.persistence`: counts that contradict each
        other or the parameters, repeated or out-of-range ids, invalid
        quantizer ranges, non-finite values, a rotation that is not
        orthogonal). No code from the file is ever run.
    """
    check_bool("mmap", mmap)
    device = resolve_device(resources)
    header, arrays = _format.read_index_file(filename, mmap=mmap)
    index = index_from_file_contents(filename, header, arrays)
    return index.to_device() if device == "cuda" else index


def from_bytes(data, resources=None):
    """The index in ``data``, bytes from :meth:`Index.to_bytes` (or the
    contents of a file :func:`save` wrote).

    Raises
    ------
    TypeError
        If ``data`` is not bytes (``bytes``, ``bytearray`` or ``memoryview``).
    ValueError
        As :func:`load` does for a file: truncated, corrupted or foreign
        bytes, another format version, or contents that are not one
        consistent index. No code from the bytes is ever run.
    """
    device = resolve_device(resources)
    header, arrays = _format.read_index_bytes(data)
    index = index_from_file_contents("index bytes", header, arrays)
    return index.to_device() if device == "cuda" else index


def index_from_file_contents(filename, header, arrays):
    """The index in a file's contents (the header and sections
    :func:`ivfsq.io.format.read_index_file` returns), checked as
    :func:`load` checks them; ``filename`` names the file in errors."""
    engine, params = _persistence.from_file_contents(
        filename, header, arrays, lambda fields: IndexParams(**fields)
    )
    return Index._from_engine(engine, params)
