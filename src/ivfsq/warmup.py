"""Compile every kernel variant ahead of use.

The CPU kernels are numba functions compiled on their first call and kept
in numba's disk cache. :func:`warm_up` runs every operation of the library
on tiny indexes, through every search path the planner can choose, so that
each kernel variant those operations use is compiled (or loaded) once, up
front: later processes then load them from the cache, and no call pays for
compilation, whatever its ``n_probes``, ``k``, batch size, filter, codec or
metric.

The variants a call compiles depend only on the *types* of the arrays the
kernels receive (dtype, number of dimensions, layout, whether read-only),
never on their sizes or on scalar values. Tiny data therefore reaches
every variant that real data reaches; ``tests/test_warmup.py`` checks that no operation
compiles anything after a warm-up.

Installing from source runs it while the wheel is built (see
``setup.py``), so an installed package starts warm; ``ivfsq warmup`` (the
command line) runs it again after an upgrade of numba or for another cache
directory (``NUMBA_CACHE_DIR``).
"""

import os
import tempfile

import numpy as np

__all__ = ["warm_up"]

_METRICS = ("sqeuclidean", "inner_product", "cosine")
_QUANTIZERS = ("sq8", "sq4")


def _configs():
    """IndexParams keywords of the indexes the warm-up builds: every codec
    width, metric and precise store, plus one of each other option."""
    for quantizer in _QUANTIZERS:
        for metric in _METRICS:
            yield dict(quantizer=quantizer, metric=metric)
        for dtype in ("float32", "float16"):
            yield dict(quantizer=quantizer, reorder=True, precise_dtype=dtype)
    yield dict(quantizer="sq8_uniform", transform="rom", by_residual=False, metric="cosine")
    yield dict(quantizer="sq4_uniform", range_stat="mse", metric="euclidean")


def _searches(index, queries, n_lists):
    """Run every search path and integer filter the index allows, with and
    without filters, for one query, a few and a batch."""
    from ivfsq.common import Resources
    from ivfsq.ivf.planner import int_filter_choices
    from ivfsq.neighbors import filters, ivf_sq

    n = index.next_id
    keep = np.zeros(n, dtype=bool)
    keep[::3] = True
    bitset = filters.from_bitset(keep)
    few = np.zeros(n, dtype=bool)
    few[:4] = True
    sparse = filters.from_bitset(few)
    bitmap = filters.from_bitmap(np.resize(keep, (queries.shape[0], n)))
    quantizer = index._engine.quantizer
    one_thread, two_threads = Resources(n_threads=1), Resources(n_threads=2)
    reorder = index.index_params.reorder
    ratios = (None, 2.0) if reorder else (None,)
    first_passes = (None, 8) if quantizer.bits == 8 else (None,)
    for first_pass in first_passes:
        if first_pass:
            plans = [(scan, "auto") for scan in ("few", "per_query")]
        else:
            plans = [(scan, int_filter)
                     for scan in ("few", "per_query", "per_list", "list_major")
                     for int_filter in int_filter_choices(quantizer)]
        for scan, int_filter in plans:
            for refine_ratio in ratios:
                params = ivf_sq.SearchParams(
                    n_probes=n_lists, scan=scan, int_filter=int_filter,
                    refine_ratio=refine_ratio, first_pass_candidates=first_pass)
                for rows in (queries[:1], queries[:3], queries):
                    for resources in (one_thread, two_threads):
                        for k in (1, 10):
                            ivf_sq.search(params, index, rows, k, resources=resources)
                    ivf_sq.search(params, index, rows, 10, filter=bitset)
                    ivf_sq.search(params, index, rows, 10, filter=sparse)
                    if rows is queries:
                        ivf_sq.search(params, index, rows, 10, filter=bitmap)
    for n_probes in (1, 2, n_lists):
        params = ivf_sq.SearchParams(n_probes=n_probes)
        for rows in (queries[:1], queries):
            ivf_sq.search(params, index, rows, 5)
            ivf_sq.search(params, index, rows, 5, filter=bitset)
            ivf_sq.range_search(params, index, rows, 1.0)
            ivf_sq.range_search(params, index, rows, 1.0, filter=bitset)
    neighbors = np.empty((queries.shape[0], 4), dtype=np.int64)
    distances = np.empty((queries.shape[0], 4), dtype=np.float32)
    ivf_sq.search(ivf_sq.SearchParams(n_probes=2), index, queries, 4,
                  neighbors=neighbors, distances=distances)


def _lifecycle(index, dataset, queries):
    """extend, remove, reconstruct, merge, save and load (memory-mapped and
    from bytes: read-only arrays are a type of their own), refine."""
    from ivfsq.neighbors import ivf_sq
    from ivfsq.neighbors.refine import refine

    extra = dataset[:8] + np.float32(0.01)
    index = ivf_sq.extend(index, extra, None)
    index = ivf_sq.extend(index, extra, np.arange(10_000, 10_008))
    ivf_sq.reconstruct(index, np.arange(4))
    ivf_sq.remove(index, np.arange(0, 40, 2))
    params = ivf_sq.SearchParams(n_probes=index.n_lists)
    shard = ivf_sq.from_bytes(index.to_bytes())
    ivf_sq.remove(shard, np.arange(shard.next_id))
    ivf_sq.extend(shard, extra, np.arange(20_000, 20_008))
    ivf_sq.merge([index, shard])
    loaded = [ivf_sq.from_bytes(index.to_bytes())]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "index.ivfsq")
        ivf_sq.save(path, index)
        loaded.append(ivf_sq.load(path))
        loaded.append(ivf_sq.load(path, mmap=True))
        for other in loaded:
            _searches(other, queries, other.n_lists)
            ivf_sq.reconstruct(other, np.arange(1, 8, 2))
            ivf_sq.extend(other, extra, None)
        del loaded, other
    ivf_sq.search(params, index, queries, 8)
    candidates = np.tile(np.arange(8), (queries.shape[0], 1))
    for dtype in (np.float32, np.float16, np.int8, np.uint8, np.float64):
        refine(dataset.astype(dtype), queries.astype(dtype), candidates, 4,
                      metric=index.metric)
    return index


def warm_up(*, progress=None, device="cpu", _part=(0, 1)):
    """Compile (or load from numba's disk cache) every kernel variant that
    the library's operations use.

    It builds small indexes of every codec, metric and precise store and
    runs build, extend, remove, merge, save and load, refine, range search
    and every search path and integer filter on them; it returns nothing.
    A process that runs it before timing anything times no compilation;
    with the cache already warm it takes seconds.

    Parameters
    ----------
    progress : callable, optional
        Called with a one-line description before each index is built.
    device : {"cpu", "cuda"}, default = "cpu"
        "cuda" compiles the GPU backend's kernels instead, every block
        shape of them, by building, searching and re-ranking on the GPU.
        numba-cuda keeps them in the process only, so a server calls this
        at its start; the first GPU call then waits for nothing.

    Examples
    --------
    >>> import ivfsq
    >>> ivfsq.warm_up()  # doctest: +SKIP
    """
    if device == "cuda":
        _warm_up_gpu(progress)
        return
    if device != "cpu":
        raise ValueError(f"device must be one of 'cpu', 'cuda', got {device!r}")
    # _part = (i, n): only the configurations of part i of n, for processes
    # that share the work (the package build); parts split by code width,
    # whose kernel variants differ.
    part, parts = _part
    from ivfsq.data.groundtruth import brute_force_knn
    from ivfsq.neighbors import ivf_sq

    rng = np.random.default_rng(0)
    n_lists = 4
    # 64 dimensions: a 4-bit code row then holds whole chunks of the integer
    # dots, so the integer filters run too.
    dataset = rng.standard_normal((400, 64), dtype=np.float32)
    queries = rng.standard_normal((12, 64), dtype=np.float32)
    for config in _configs():
        if parts > 1 and ("sq4" in config["quantizer"]) % parts != part:
            continue
        if progress is not None:
            progress(", ".join(f"{key}={value}" for key, value in config.items()))
        params = ivf_sq.IndexParams(n_lists=n_lists, kmeans_n_iters=2, **config)
        for data in (dataset.astype(np.float16), dataset):
            index = ivf_sq.build(params, data)
        _searches(index, queries, n_lists)
        index = _lifecycle(index, dataset, queries)
        ivf_sq.tune(index, queries[:4], target_recall=0.5, k=2)
        brute_force_knn(dataset, queries, 4, metric=index.metric)



def _warm_up_gpu(progress):
    """:func:`warm_up` of the GPU backend. Its kernels' argument types do not
    depend on the codec, metric or filter (those are run-time values), only
    their block shapes on k: one index with and one without a precise store,
    searched at each shape's largest k, reach every compiled variant."""
    from ivfsq.backends.cuda import kernels
    from ivfsq.common import Resources, resolve_device
    from ivfsq.neighbors import ivf_sq, refine

    gpu = Resources(device="cuda")
    resolve_device(gpu)  # a clear error where no GPU backend runs
    largest = kernels.SHAPES[-1][0]
    rng = np.random.default_rng(0)
    dataset = rng.standard_normal((largest + largest // 2, 16), dtype=np.float32)
    queries = rng.standard_normal((2, 16), dtype=np.float32)
    for reorder in (False, True):
        if progress is not None:
            progress(f"device=cuda, reorder={reorder}")
        index = ivf_sq.build(ivf_sq.IndexParams(n_lists=4, kmeans_n_iters=1, reorder=reorder),
                             dataset, resources=gpu)
        for capacity, _ in kernels.SHAPES:
            params = ivf_sq.SearchParams(n_probes=4, refine_ratio=1.0 if reorder else None)
            ivf_sq.search(params, index, queries, capacity, resources=gpu)
        ivf_sq.range_search(ivf_sq.SearchParams(n_probes=4), index, queries, 1.0,
                            resources=gpu)
    refine(dataset, queries, np.arange(8)[None].repeat(2, axis=0), 4, resources=gpu)
