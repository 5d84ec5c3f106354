"""A sharded or replicated ivfsq index on Ray actors.

Train once on one machine (centers and quantizer), then spread the vectors:
each Ray actor holds one ivfsq index sharing the trained codec. In
``"sharded"`` mode every actor holds a part of the vectors and a search asks
them all, merging their top-k exactly (all shards probe the same lists, since
they share the centers, so the result is that of one index holding every
vector). In ``"replicated"`` mode every actor holds all the vectors and
batches of queries go to one replica each. Ray is the only transport: no RPC
layer of our own. Install it with ``pip install "ivfsq[ray]"``.

Example (needs a running Ray; not run as a doctest)::

    import numpy as np, ray
    from ivfsq import distributed
    from ivfsq.neighbors import ivf_sq

    ray.init()
    data = np.random.default_rng(0).random((30000, 32), dtype=np.float32)
    trained = distributed.train(ivf_sq.IndexParams(n_lists=64), data[:10000])
    index = distributed.ShardedIndex.create(trained, n_shards=3)
    distributed.extend(index, np.array_split(data, 3))   # one part per shard
    distances, neighbors = distributed.search(
        ivf_sq.SearchParams(n_probes=8), index, data[:5], k=10)
"""

import collections
import inspect
import json
import os

import numpy as np

from ivfsq import metrics
from ivfsq._validation import check_int
from ivfsq.backends.cpu import kernels
from ivfsq.neighbors import ivf_sq
from ivfsq.neighbors.filters import Filter

MANIFEST = "manifest.json"
MANIFEST_KIND = "ivfsq.distributed"
MODES = ("sharded", "replicated")
# Queries sent to the shards per round trip, and round trips out at once:
# together they bound the driver's memory.
SEARCH_BATCH_QUERIES = 65536
SEARCH_BATCHES_IN_FLIGHT = 4
# The names of IndexParams' keyword arguments: each is also its property.
_INDEX_PARAM_NAMES = tuple(inspect.signature(ivf_sq.IndexParams).parameters)


class ShardError(RuntimeError):
    """A shard's actor failed or died; the message names the shard."""


def _ray():
    try:
        import ray
    except ImportError as error:  # pragma: no cover - depends on the extra
        raise ImportError(
            'ivfsq.distributed needs Ray: pip install "ivfsq[ray]"'
        ) from error
    return ray


def train(index_params, sample, resources=None):
    """The trained, empty index (centers and quantizer) that every shard
    shares: ``ivf_sq.build`` with ``add_data_on_build=False`` on ``sample``."""
    if not isinstance(index_params, ivf_sq.IndexParams):
        raise TypeError(
            f"index_params must be an ivf_sq.IndexParams, got {type(index_params).__name__}"
        )
    fields = {name: getattr(index_params, name) for name in _INDEX_PARAM_NAMES}
    fields["add_data_on_build"] = False
    return ivf_sq.build(ivf_sq.IndexParams(**fields), sample, resources=resources)


class _Shard:
    """The actor body: one ivfsq index."""

    def __init__(self, source, mmap=False):
        if isinstance(source, bytes):
            self.index = ivf_sq.from_bytes(source)
        else:
            self.index = ivf_sq.load(source, mmap=mmap)

    @staticmethod
    def _rows(part):
        if isinstance(part, str):
            return np.load(part, mmap_mode="r")  # read here: never through the driver
        return part

    def count(self, part):
        return int(self._rows(part).shape[0])

    def extend(self, part, ids):
        ivf_sq.extend(self.index, self._rows(part), ids)
        return len(self.index)

    def search(self, plan_fields, queries, k, keep_words):
        params = ivf_sq.SearchParams(**plan_fields)
        search_filter = None
        if keep_words is not None:
            # One bitset (1-D) or one per query (2-D), as the driver made them.
            search_filter = Filter(keep_words, keep_words.shape[-1] * 32)
        k = min(k, len(self.index))
        if k == 0:
            return None
        return ivf_sq.search(params, self.index, queries, k, filter=search_filter)

    def remove(self, ids):
        return ivf_sq.remove(self.index, ids)

    def size(self):
        return len(self.index)

    def next_id(self):
        return self.index.next_id

    def save(self, path):
        ivf_sq.save(path, self.index)
        return os.path.getsize(path)


class ShardedIndex:
    """ivfsq indexes on Ray actors sharing one trained codec.

    Create one with :meth:`create` (from a trained index) or :func:`load`.
    """

    def __init__(self, actors, mode, metric, dim, next_id):
        self._actors = actors
        self.mode = mode
        self.metric = metric
        self.dim = dim
        self.next_id = next_id
        self._turn = 0

    @classmethod
    def create(cls, trained, n_shards, *, mode="sharded", actor_options=None):
        """``n_shards`` actors, each with a copy of ``trained`` (an
        ``ivf_sq.Index``, usually from :func:`train`; any vectors it holds
        are copied to every actor). ``actor_options`` go to Ray's
        ``.options()`` (``num_cpus``, ``resources``, ...)."""
        ray = _ray()
        if not isinstance(trained, ivf_sq.Index):
            raise TypeError(f"trained must be an ivf_sq.Index, got {type(trained).__name__}")
        n_shards = check_int("n_shards", n_shards, minimum=1)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        payload = ray.put(trained.to_bytes())
        actor_class = ray.remote(_Shard).options(**(actor_options or {}))
        actors = [actor_class.remote(payload) for _ in range(n_shards)]
        return cls(actors, mode, trained.metric, trained.dim, trained.next_id)

    @property
    def n_shards(self):
        return len(self._actors)

    def _call(self, shards, method, *args_per_shard):
        """Call ``method`` on the given shards (args per shard) and gather
        the results; a failure names its shard."""
        shards = list(shards)
        return self._gather(shards, method, self._submit(shards, method, args_per_shard))

    def _submit(self, shards, method, args_per_shard):
        return [getattr(self._actors[shard], method).remote(*args)
                for shard, args in zip(shards, args_per_shard)]

    def _gather(self, shards, method, refs):
        ray = _ray()
        results = []
        for shard, ref in zip(shards, refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError as error:
                raise ShardError(
                    f"shard {shard} of {self.n_shards} is unavailable (its actor died): "
                    f"restore it with restore_shard(index, {shard}, path) from a saved file"
                ) from error
            except ray.exceptions.RayTaskError as error:
                raise ShardError(f"shard {shard} failed in {method}: {error}") from error
        return results

    def __len__(self):
        sizes = self._call(range(self.n_shards), "size", *[()] * self.n_shards)
        return sum(sizes) if self.mode == "sharded" else sizes[0]

    def __repr__(self):
        return (f"ShardedIndex(mode={self.mode!r}, n_shards={self.n_shards}, "
                f"metric={self.metric!r}, dim={self.dim})")


def _check_sharded(index):
    if not isinstance(index, ShardedIndex):
        raise TypeError(f"index must be a distributed.ShardedIndex, got {type(index).__name__}")
    return index


def extend(index, parts, ids=None):
    """Add vectors, ``parts[i]`` to shard ``i`` (sharded mode) or every
    part to every replica (replicated mode). A single 2-D array is routed
    in near-equal contiguous slices, one per shard (with ``ids`` one array
    for all its rows).

    A part is an array, a Ray object ref of one, or the path of a ``.npy``
    file that the actor maps itself (the data never passes through the
    driver). ``ids``: one int64 array per part, or None to number the rows
    after the largest id so far, part after part.
    """
    index = _check_sharded(index)
    n_shards = index.n_shards
    if isinstance(parts, np.ndarray) and parts.ndim == 2:
        # One array: routed in contiguous, near-equal slices, one per shard.
        parts = np.array_split(parts, n_shards) if index.mode == "sharded" else [parts]
        if ids is not None:
            ids = np.asarray(ids)
            ids = (np.array_split(ids, n_shards) if index.mode == "sharded" else [ids])
    parts = list(parts)
    if index.mode == "sharded" and len(parts) != n_shards:
        raise ValueError(f"parts must have one entry per shard ({n_shards}), got {len(parts)}")
    if ids is not None:
        ids = [np.ascontiguousarray(part_ids, dtype=np.int64) for part_ids in ids]
        if len(ids) != len(parts):
            raise ValueError(f"ids must have one array per part ({len(parts)}), got {len(ids)}")
    else:
        counts = _counts(index, parts)
        starts = index.next_id + np.concatenate([[0], np.cumsum(counts)[:-1]])
        ids = [np.arange(start, start + count, dtype=np.int64)
               for start, count in zip(starts, counts)]
    if index.mode == "sharded":
        index._call(range(n_shards), "extend", *zip(parts, ids))
    else:
        for part, part_ids in zip(parts, ids):
            index._call(range(n_shards), "extend", *[(part, part_ids)] * n_shards)
    largest = [int(part_ids.max()) for part_ids in ids if part_ids.shape[0]]
    if largest:
        index.next_id = max(index.next_id, max(largest) + 1)
    return index


def _counts(index, parts):
    """Rows per part, counted by the actors that will read them."""
    shards = [shard % index.n_shards for shard in range(len(parts))]
    return index._call(shards, "count", *[(part,) for part in parts])


def _merge(results, k, metric):
    """The exact top-k over per-shard top-k lists."""
    distances = np.concatenate([result[0] for result in results], axis=1)
    neighbors = np.concatenate([result[1] for result in results], axis=1)
    # Internal order: smaller is better, ties by id (as one index would).
    metric = metrics.get(metric)
    internal = np.ascontiguousarray(metric.sort_key(distances), dtype=np.float32)
    pad = float("inf")
    internal[neighbors < 0] = pad
    out_d = np.empty((internal.shape[0], k), dtype=np.float32)
    out_i = np.empty((internal.shape[0], k), dtype=np.int64)
    kernels.heaps.merge_topk(internal, np.ascontiguousarray(neighbors), False, out_d, out_i)
    return metric.sort_key(out_d), out_i


def search(search_params, index, queries, k, filter=None, batch_size=SEARCH_BATCH_QUERIES):
    """Top-k of each query over every shard (sharded) or one replica per
    batch (replicated); like ``ivf_sq.search``. Queries go out in batches of
    ``batch_size``, so the driver holds one batch of per-shard results."""
    index = _check_sharded(index)
    if not isinstance(search_params, ivf_sq.SearchParams):
        raise TypeError(
            f"search_params must be an ivf_sq.SearchParams, got {type(search_params).__name__}"
        )
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != index.dim:
        raise ValueError(
            f"queries must have shape (n_queries, {index.dim}), got shape {queries.shape}"
        )
    k = check_int("k", k, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    n_queries = queries.shape[0]
    keep_words = per_query = None
    if filter is not None:
        if not isinstance(filter, Filter):
            raise TypeError(f"filter must be a filters.Filter, got {type(filter).__name__}")
        # Bitsets over the index's ids (a bitmap in cuVS's layout is read
        # with the whole index's next_id), one row or one per query.
        keep_words = filter.rows(n_queries, index.next_id)
        per_query = keep_words.shape[0] > 1
    ray = _ray()
    words_ref = ray.put(keep_words[0]) if keep_words is not None and not per_query else None
    out_d = np.empty((n_queries, k), dtype=np.float32)
    out_i = np.empty((n_queries, k), dtype=np.int64)
    in_flight = collections.deque()

    def gather():
        rows, shards, refs = in_flight.popleft()
        results = index._gather(shards, "search", refs)
        results = [result for result in results if result is not None]
        if sum(result[1].shape[1] for result in results) < k:
            raise ValueError(f"k must be <= the number of vectors in the index, got {k}")
        out_d[rows], out_i[rows] = _merge(results, k, index.metric)

    # Up to SEARCH_BATCHES_IN_FLIGHT batches are out at once: the shards (or
    # replicas) work on the next batch while the driver merges one.
    fields = dict(n_probes=search_params.n_probes, refine_ratio=search_params.refine_ratio,
                  scan=search_params.scan, int_filter=search_params.int_filter)
    for start in range(0, n_queries, batch_size):
        batch = np.ascontiguousarray(queries[start:start + batch_size])
        words = keep_words[start:start + batch.shape[0]] if per_query else words_ref
        args = (fields, batch, k, words)
        if index.mode == "replicated":
            shards = [index._turn % index.n_shards]
            index._turn += 1
        else:
            shards = list(range(index.n_shards))
        refs = index._submit(shards, "search", [args] * len(shards))
        in_flight.append((slice(start, start + batch.shape[0]), shards, refs))
        if len(in_flight) >= SEARCH_BATCHES_IN_FLIGHT:
            gather()
    while in_flight:
        gather()
    return out_d, out_i


def remove(index, ids):
    """Delete vectors by id on every shard; returns how many were removed
    (counted once in replicated mode)."""
    index = _check_sharded(index)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    counts = index._call(range(index.n_shards), "remove", *[(ids,)] * index.n_shards)
    return sum(counts) if index.mode == "sharded" else counts[0]


def save(index, folder):
    """Each actor writes its shard to ``folder/shard-<i>.ivfsq``; then a
    manifest (JSON) lists them. The folder must be reachable by the actors
    (a shared file system across machines)."""
    index = _check_sharded(index)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    names = [f"shard-{shard}.ivfsq" for shard in range(index.n_shards)]
    sizes = index._call(range(index.n_shards), "save",
                        *[(os.path.join(folder, name),) for name in names])
    manifest = {
        "kind": MANIFEST_KIND, "version": 1, "mode": index.mode, "metric": index.metric,
        "dim": index.dim, "next_id": index.next_id,
        "shards": [{"file": name, "bytes": size} for name, size in zip(names, sizes)],
    }
    temporary = os.path.join(folder, MANIFEST + ".tmp")
    with open(temporary, "w") as file:
        json.dump(manifest, file, indent=1)
    os.replace(temporary, os.path.join(folder, MANIFEST))


def _read_manifest(folder):
    path = os.path.join(os.fspath(folder), MANIFEST)
    try:
        with open(path) as file:
            manifest = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable ivfsq.distributed manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise ValueError(f"{path}: not an ivfsq.distributed manifest")
    return manifest


def load(folder, *, mmap=False, actor_options=None):
    """A :class:`ShardedIndex` from a folder written by :func:`save`: one
    new actor per shard file, each loading its own file."""
    ray = _ray()
    manifest = _read_manifest(folder)
    actor_class = ray.remote(_Shard).options(**(actor_options or {}))
    actors = [actor_class.remote(os.path.join(os.fspath(folder), shard["file"]), mmap)
              for shard in manifest["shards"]]
    index = ShardedIndex(actors, manifest["mode"], manifest["metric"], manifest["dim"],
                         manifest["next_id"])
    len(index)  # every shard loaded (or a ShardError naming the one that did not)
    return index


def restore_shard(index, shard, path, *, mmap=False, actor_options=None):
    """Replace shard ``shard`` (e.g. after its actor died) by a new actor
    loading ``path`` (that shard's saved file); the other shards are kept."""
    ray = _ray()
    index = _check_sharded(index)
    shard = check_int("shard", shard, minimum=0)
    if shard >= index.n_shards:
        raise ValueError(f"shard must be < n_shards ({index.n_shards}), got {shard}")
    actor_class = ray.remote(_Shard).options(**(actor_options or {}))
    index._actors[shard] = actor_class.remote(os.fspath(path), mmap)
    index._call([shard], "size", ())
    return index
