"""The GPU execution of searches: the backend protocol of
:mod:`ivfsq.backends` on an NVIDIA GPU, with the kernels of
:mod:`ivfsq.backends.cuda.kernels`.

Per block of queries: the queries go to the device; the coarse scores
(a GEMM through CuPy where it is installed, else a kernel), the probes,
the list constants, the scan with its top-k (one block of threads per
query and split of its rows, the splits merged by a second selection) and
the re-ranking on the precise store all run there; the top-k comes back.
The lists are copied to the device once per snapshot (:func:`device_lists`)
and kept beside it, so a host index searched with device queries pays the
copy once, and ``extend`` or ``remove`` (a new snapshot) pays it again.

What runs on the host: the queries' preparation (checks, normalization,
rotation) and their float weights (small arrays), and the filtered-search
bookkeeping of :mod:`ivfsq.ivf.filtering` (``count_kept``,
``kept_per_list``, ``lists_to_walk``, ``search_rows``: the few rows of a
rare filter), which are the CPU backend's. A search of more than
:data:`~ivfsq.backends.cuda.kernels.MAX_K` candidates per query runs on the
CPU backend.
"""

from collections import namedtuple

import numpy as np
from numba import config, cuda

from ivfsq.backends.cpu import search as cpu
from ivfsq.backends.cpu.kernels.common import METRIC_COSINE, METRIC_L2
from ivfsq.backends.cuda import kernels

# The host-side steps of filtered search are the CPU's.
count_kept = cpu.count_kept
kept_per_list = cpu.kept_per_list
lists_to_walk = cpu.lists_to_walk
search_rows = cpu.search_rows

# Blocks in flight a scan aims for per streaming multiprocessor: a few
# queries' rows are split among this many blocks in all.
BLOCKS_PER_SM = 4
# Threads a query's scan aims for at least: a larger k has fewer threads per
# block (kernels.SHAPES), so its rows are split among more blocks. (On the
# simulator, whose blocks are smaller, as many as its largest block.)
MIN_THREADS_PER_QUERY = kernels.SHAPES[0][1] if config.ENABLE_CUDASIM else 128
# Rows a scan thread takes at least: below this, splitting a query's rows
# further costs more in the merge than it saves in the scan.
MIN_ROWS_PER_THREAD = 16

_SNAPSHOT_KEY = ("cuda", "lists")


class DeviceLists:
    """A snapshot of the lists (and the engine's coarse and codec arrays)
    copied to the device."""

    def __init__(self, engine, lists):
        quantizer = engine.quantizer
        self.codes = cuda.to_device(lists.codes)
        self.ids = cuda.to_device(lists.ids)
        self.aux = cuda.to_device(lists.aux)
        self.offsets = cuda.to_device(lists.list_offsets)
        self.sizes = cuda.to_device(lists.list_sizes)
        self.centers = cuda.to_device(engine.centers)
        self.center_sq_norms = cuda.to_device(engine.center_sq_norms)
        self.vmin = cuda.to_device(quantizer.vmin)
        dim = engine.centers.shape[1]
        precise = lists.precise
        self.precise = cuda.to_device(np.zeros((0, dim), dtype=np.float32))
        self.half_bits = cuda.to_device(np.zeros((0, dim), dtype=np.uint16))
        self.half_table = cuda.to_device(np.zeros(1, dtype=np.float32))
        if precise is not None and precise.dtype == np.float16:
            self.half_bits = cuda.to_device(np.ascontiguousarray(precise).view(np.uint16))
            self.half_table = cuda.to_device(cpu._half_table())
        elif precise is not None:
            self.precise = cuda.to_device(np.ascontiguousarray(precise, dtype=np.float32))
        self.mean_list_rows = lists.size / max(1, lists.n_lists)

    @property
    def nbytes(self):
        """Device bytes of the copy."""
        return sum(int(getattr(self, name).nbytes) for name in (
            "codes", "ids", "aux", "offsets", "sizes", "centers", "center_sq_norms", "vmin",
            "precise", "half_bits", "half_table"))


def device_lists(engine, lists=None):
    """The device copy of the snapshot ``lists`` (the current one by
    default), made on first use and kept as long as the snapshot."""
    lists = engine.lists if lists is None else lists
    return engine.snapshot_value(lists, _SNAPSHOT_KEY, lambda: DeviceLists(engine, lists))


def release(engine):
    """Drop the device copy of the engine's current snapshot (frees its
    device memory once no search holds it)."""
    engine.forget_snapshot_value(engine.lists, _SNAPSHOT_KEY)


def device_nbytes(engine):
    """Device bytes held for the engine's current snapshot, 0 if none."""
    copy = engine.peek_snapshot_value(engine.lists, _SNAPSHOT_KEY)
    return 0 if copy is None else copy.nbytes


_EMPTY = {}


def _empty(shape, dtype):
    # Zero-size device arrays the kernels take for "none" (one per kind).
    key = (shape, np.dtype(dtype).str)
    if key not in _EMPTY:
        _EMPTY[key] = cuda.to_device(np.zeros(shape, dtype=dtype))
    return _EMPTY[key]


def _n_sms():
    device = cuda.get_current_device()
    return int(getattr(device, "MULTIPROCESSOR_COUNT", 1) or 1)


def n_splits(n_queries, rows_per_query, threads):
    """Blocks sharing one query's rows: enough blocks in all to fill the
    GPU and :data:`MIN_THREADS_PER_QUERY` threads a query, but none with
    fewer than :data:`MIN_ROWS_PER_THREAD` rows a thread."""
    wanted = max(-(-BLOCKS_PER_SM * _n_sms() // max(1, n_queries)),
                 -(-MIN_THREADS_PER_QUERY // threads))
    most = max(1, int(rows_per_query) // (threads * MIN_ROWS_PER_THREAD))
    return max(1, min(wanted, most))


def _cupy():
    """CuPy for the coarse GEMM, where it is installed and a real GPU runs
    (the simulator's arrays are host arrays CuPy cannot take)."""
    if config.ENABLE_CUDASIM:
        return None
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def _nearest_centers(queries, centers, center_sq_norms, use_l2, k):
    """Per query (device rows), its ``k`` best centers by the coarse score
    ``|c|^2 - 2 q.c`` (L2) or ``-q.c``, ties to the lower center: device
    (scores, centers), best first."""
    n_queries, n_centers = queries.shape[0], centers.shape[0]
    scores = cuda.device_array((n_queries, n_centers), dtype=np.float32)
    blocks, threads = kernels.grid_2d(n_queries, n_centers)
    cupy = _cupy()
    if cupy is not None:
        dots = cupy.asarray(queries) @ cupy.asarray(centers).T
        kernels.scores_from_dots[blocks, threads](cuda.as_cuda_array(dots), center_sq_norms,
                                                  use_l2, scores)
    else:
        kernels.coarse_scores[blocks, threads](queries, centers, center_sq_norms, use_l2,
                                               scores)
    kcap, tpb = kernels.shape_for(k)
    best = cuda.device_array((n_queries, k), dtype=np.float32)
    chosen = cuda.device_array((n_queries, k), dtype=np.int64)
    kernels.select_kernel(kcap, tpb)[n_queries, tpb](scores, _empty((0, 0), np.int64), k, best,
                                                    chosen)
    return best, chosen


def coarse_probes(engine, copy, queries, host_queries, n_probes, n_threads):
    """Probed lists per query on the device, int64 (n_queries, n_probes),
    best first (ties to the lower list), as the CPU's coarse step (which
    selects them from ``host_queries`` where there are more than the
    kernels select)."""
    if n_probes > kernels.MAX_K:
        return cuda.to_device(engine.coarse_probes(host_queries, n_probes, n_threads))
    return _nearest_centers(queries, copy.centers, copy.center_sq_norms,
                            engine.kernel_metric == METRIC_L2, n_probes)[1]


# Coarse scores per block of rows in assign_nearest (256 MiB of float32).
ASSIGN_BLOCK_SCORES = 1 << 26


def assign_nearest(vectors, centers, center_sq_norms, inner_product, return_distances=False):
    """:func:`ivfsq.ivf.kmeans.assign_nearest` on the device: each row's
    nearest center (largest dot with ``inner_product``), ties to the lower
    center, and with ``return_distances`` its squared L2 distance (``-2 x.c``
    with ``inner_product``), float32. A GEMM and an argmin through CuPy where
    it is installed, else a kernel with a thread per row; blocks of rows
    bound the device memory."""
    n_rows, n_centers = vectors.shape[0], centers.shape[0]
    if inner_product or center_sq_norms is None:
        center_sq_norms = (np.zeros(n_centers, dtype=np.float32) if inner_product
                           else np.einsum("ij,ij->i", centers, centers))
    centers_d = cuda.to_device(np.ascontiguousarray(centers, dtype=np.float32))
    norms_d = cuda.to_device(np.ascontiguousarray(center_sq_norms, dtype=np.float32))
    labels = np.empty(n_rows, dtype=np.int64)
    scores = np.empty(n_rows, dtype=np.float32)
    cupy = _cupy()
    step = max(1, ASSIGN_BLOCK_SCORES // max(1, n_centers))
    for start in range(0, n_rows, step):
        rows = np.ascontiguousarray(vectors[start:start + step], dtype=np.float32)
        done = slice(start, start + rows.shape[0])
        if cupy is not None:
            dots = cupy.asarray(rows) @ cupy.asarray(centers_d).T
            block_scores = (cupy.asarray(norms_d) - 2 * dots) if not inner_product else -dots
            best = block_scores.argmin(axis=1)  # the first of equal minima
            labels[done] = cupy.asnumpy(best)
            scores[done] = cupy.asnumpy(cupy.take_along_axis(block_scores, best[:, None], 1)[:, 0])
            continue
        out_labels = cuda.device_array(rows.shape[0], dtype=np.int64)
        out_scores = cuda.device_array(rows.shape[0], dtype=np.float32)
        blocks, threads = kernels.grid_1d(rows.shape[0])
        kernels.nearest_centers[blocks, threads](cuda.to_device(rows), centers_d, norms_d,
                                                 not inner_product, out_labels, out_scores)
        labels[done] = out_labels.copy_to_host()
        scores[done] = out_scores.copy_to_host()
    if not return_distances:
        return labels
    if inner_product:
        return labels, np.float32(2.0) * scores
    row_sq = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float32)
    return labels, np.maximum(scores + row_sq, np.float32(0.0))


class Block(namedtuple("Block", ["queries", "probes", "consts", "sq_norms", "weights"])):
    """One block of queries on the device, ready to scan: internal-space
    queries, probes, list constants, ``|q|^2`` (L2) and scan weights."""


def prepare_block(engine, copy, prepared, n_probes, n_threads):
    """The :class:`Block` of ``prepared`` queries: the coarse step and the
    list constants run on the device, the weights on the host."""
    host_queries = engine.internal(prepared, n_threads)
    n_queries = host_queries.shape[0]
    queries = cuda.to_device(np.ascontiguousarray(host_queries, dtype=np.float32))
    probes = coarse_probes(engine, copy, queries, host_queries, n_probes, n_threads)
    consts = cuda.device_array((n_queries, n_probes), dtype=np.float32)
    sq_norms = cuda.device_array(n_queries, dtype=np.float32)
    blocks, threads = kernels.grid_2d(n_queries, n_probes)
    kernels.list_constants[blocks, threads](
        queries, copy.centers, probes, copy.vmin, engine.by_residual,
        engine.kernel_metric == METRIC_L2, consts, sq_norms)
    weights = cuda.to_device(engine.quantizer.weights(host_queries, n_threads))
    return Block(queries, probes, consts, sq_norms, weights)


def scan_block(engine, copy, block, keep_words, n_candidates, emit_rows):
    """The top ``n_candidates`` of each query of ``block`` over its probed
    rows, scored on the codes: device (distances, keys), keys storage rows
    with ``emit_rows``, else ids."""
    n_queries, n_probes = block.probes.shape
    filtered = keep_words is not None
    words = (cuda.to_device(np.ascontiguousarray(keep_words)) if filtered
             else _empty((1, 0), np.uint32))
    kcap, tpb = kernels.shape_for(n_candidates)
    splits = n_splits(n_queries, n_probes * copy.mean_list_rows, tpb)
    out_d = cuda.device_array((n_queries, splits * n_candidates), dtype=np.float32)
    out_k = cuda.device_array((n_queries, splits * n_candidates), dtype=np.int64)
    kernels.scan_kernel(kcap, tpb)[(n_queries, splits), tpb](
        block.weights, block.consts, block.sq_norms, block.probes, copy.codes, copy.aux,
        copy.ids, copy.offsets, copy.sizes, words, filtered, engine.kernel_metric,
        engine.quantizer.bits, emit_rows, n_candidates, out_d, out_k)
    if splits == 1:
        return out_d, out_k
    merged_d = cuda.device_array((n_queries, n_candidates), dtype=np.float32)
    merged_k = cuda.device_array((n_queries, n_candidates), dtype=np.int64)
    kernels.select_kernel(kcap, tpb)[n_queries, tpb](out_d, out_k, n_candidates, merged_d,
                                                    merged_k)
    return merged_d, merged_k


def rerank_block(engine, copy, prepared, candidate_rows, k):
    """Exact top-``k`` of each query over its candidate storage rows, from
    the precise store: device (distances, ids)."""
    n_queries = prepared.shape[0]
    queries = cuda.to_device(np.ascontiguousarray(prepared, dtype=np.float32))
    kcap, tpb = kernels.shape_for(k)
    out_d = cuda.device_array((n_queries, k), dtype=np.float32)
    out_i = cuda.device_array((n_queries, k), dtype=np.int64)
    kernels.rerank_kernel(kcap, tpb)[n_queries, tpb](
        queries, copy.precise, copy.half_bits, copy.half_table, candidate_rows, copy.ids,
        engine.kernel_metric, k, out_d, out_i)
    return out_d, out_i


def search_block(engine, plan, prepared, lists, k, n_probes, keep_words, n_threads,
                 refine_ratio):
    n_candidates = cpu._n_candidates(k, lists, refine_ratio)
    if n_candidates > kernels.MAX_K or lists.size == 0:
        return cpu.search_block(engine, plan, prepared, lists, k, n_probes, keep_words,
                                n_threads, refine_ratio)
    copy = device_lists(engine, lists)
    n_probes = min(n_probes, engine.centers.shape[0])
    block = prepare_block(engine, copy, prepared, n_probes, n_threads)
    refine = lists.precise is not None
    out_d, out_k = scan_block(engine, copy, block, keep_words, n_candidates, refine)
    if refine:
        out_d, out_k = rerank_block(engine, copy, prepared, out_k, k)
    return out_d.copy_to_host(), out_k.copy_to_host()


def refine_rows(rows, queries, candidates, ids, metric, k):
    """:func:`ivfsq.neighbors.refine` on the device, over the gathered
    candidate ``rows`` (float32; ``candidates`` index them, -1 for none,
    and ``ids`` name them): exact internal distances and ids, host arrays,
    ascending by (distance, id). For cosine the queries are normalized
    first (a zero query keeps distance 1 to every row), as the re-ranking
    of a search takes them."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == METRIC_COSINE:
        norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        queries = (queries / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    n_queries = queries.shape[0]
    kcap, tpb = kernels.shape_for(k)
    out_d = cuda.device_array((n_queries, k), dtype=np.float32)
    out_i = cuda.device_array((n_queries, k), dtype=np.int64)
    dim = queries.shape[1]
    kernels.rerank_kernel(kcap, tpb)[n_queries, tpb](
        cuda.to_device(queries), cuda.to_device(np.ascontiguousarray(rows, dtype=np.float32)),
        _empty((0, dim), np.uint16), _empty((1,), np.float32),
        cuda.to_device(np.ascontiguousarray(candidates, dtype=np.int64)),
        cuda.to_device(np.ascontiguousarray(ids, dtype=np.int64)), metric, k, out_d, out_i)
    return out_d.copy_to_host(), out_i.copy_to_host()


def range_search(engine, prepared, radius, n_probes, keep_words, n_threads,
                 int_filter="auto"):
    """:func:`ivfsq.backends.cpu.search.range_search` on the device: per
    query, the rows of its probed lists within ``radius`` (internal
    distance), scored on the codes, or on the precise store where there is
    one. CSR arrays ``offsets``, ``ids`` and distances, each query's results
    sorted by (distance, id). ``int_filter`` is the CPU's and has no effect
    here (the results do not depend on it)."""
    lists = engine.lists  # one snapshot
    if lists.size == 0:
        return cpu.range_search(engine, prepared, radius, n_probes, keep_words, n_threads)
    copy = device_lists(engine, lists)
    n_probes = min(n_probes, engine.centers.shape[0])
    block = prepare_block(engine, copy, prepared, n_probes, n_threads)
    n_queries = prepared.shape[0]
    filtered = keep_words is not None
    words = (cuda.to_device(np.ascontiguousarray(keep_words)) if filtered
             else _empty((1, 0), np.uint32))
    exact = lists.precise is not None
    precise_queries = (cuda.to_device(np.ascontiguousarray(prepared, dtype=np.float32)) if exact
                       else _empty((0, prepared.shape[1]), np.float32))
    counts = cuda.to_device(np.zeros((n_queries, n_probes), dtype=np.int64))
    grid = (n_queries, n_probes), kernels.ROW_THREADS

    def run(write, starts, out_ids, out_d):
        kernels.range_rows[grid](
            block.weights, block.consts, block.sq_norms, block.probes, copy.codes, copy.aux,
            copy.ids, copy.offsets, copy.sizes, words, filtered, engine.kernel_metric,
            engine.quantizer.bits, precise_queries, copy.precise, copy.half_bits,
            copy.half_table, exact, np.float32(radius), write, counts, starts, out_ids, out_d)

    no_starts = _empty((0, 0), np.int64)
    run(False, no_starts, _empty((0,), np.int64), _empty((0,), np.float32))
    per_probe = counts.copy_to_host()
    starts = np.zeros(per_probe.size, dtype=np.int64)
    np.cumsum(per_probe.ravel()[:-1], out=starts[1:])
    total = int(per_probe.sum())
    ids = cuda.device_array(max(total, 1), dtype=np.int64)
    distances = cuda.device_array(max(total, 1), dtype=np.float32)
    counts.copy_to_device(np.zeros_like(per_probe))
    run(True, cuda.to_device(starts.reshape(per_probe.shape)), ids, distances)
    ids = ids.copy_to_host()[:total]
    distances = distances.copy_to_host()[:total]
    per_query = per_probe.sum(axis=1)
    offsets = np.zeros(n_queries + 1, dtype=np.int64)
    np.cumsum(per_query, out=offsets[1:])
    owner = np.repeat(np.arange(n_queries), per_query)
    order = np.lexsort((ids, distances, owner))
    return offsets, ids[order], distances[order]


def one_query(engine, plan, lists, k, n_probes, refine_ratio=None):
    """No single-query shortcut on the GPU: a query takes :func:`search_block`."""
    return None


def encode(engine, vectors, labels):
    """Codes and side values of prepared (internal-space) rows in lists
    ``labels``, encoded on the device: :meth:`ivfsq.ivf.engine.IvfSqEngine.encode`."""
    quantizer = engine.quantizer
    n_rows = vectors.shape[0]
    centers, references = engine.code_reference(labels)
    codes = cuda.to_device(np.zeros((n_rows, quantizer.code_size), dtype=np.uint8))
    aux = cuda.device_array(n_rows, dtype=np.float32)
    blocks, threads = kernels.grid_1d(n_rows)
    kernels.encode_rows[blocks, threads](
        cuda.to_device(np.ascontiguousarray(vectors, dtype=np.float32)),
        cuda.to_device(np.ascontiguousarray(centers, dtype=np.float32)),
        cuda.to_device(np.ascontiguousarray(references, dtype=np.int64)),
        cuda.to_device(quantizer.vmin), cuda.to_device(quantizer.delta), quantizer.bits,
        engine.kernel_metric, codes, aux)
    return codes.copy_to_host(), aux.copy_to_host()
