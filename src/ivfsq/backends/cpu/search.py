"""The CPU execution of a search plan (:mod:`ivfsq.ivf.planner`).

The engine (:class:`ivfsq.ivf.engine.IvfSqEngine`) holds an index's state,
runs the coarse step and plans each block of queries; the functions here
scan the probed lists of one block as its plan says, with the numba
kernels of :mod:`ivfsq.backends.cpu.kernels` on the thread pool, and
re-rank with the precise store where there is one.
"""

import functools
import math

import numpy as np

from ivfsq._threads import run_chunks, single_threaded_blas
from ivfsq.backends.cpu import kernels

# search_few's "no probes given" (it runs the coarse step itself).
_NO_PROBES = np.zeros((0, 0), dtype=np.int64)
# A chunk of at least this many queries gets its coarse dots from BLAS; a
# smaller one from the kernel's own loops, cheaper than a BLAS call there.
COARSE_BLAS_MIN_QUERIES = 64
# Queries of a first-pass batch's chunk, at least: each chunk's kernel call
# has a fixed cost (its dispatch and buffers), which 4 chunks of a 100-query
# batch pay less often than 8 (the pool's threads take chunks as they come,
# so 4 still share the work evenly).
FIRST_PASS_MIN_CHUNK = 25


def _scan_in_parts(n_parts, scan_part, out_distances, out_ids, n_threads, parts_are_heaps=False):
    """Run ``scan_part(part, part_distances, part_ids)`` for each part on the
    thread pool, each into its own per-query top-k arrays (the shape of
    ``out_*``; max-heaps when ``parts_are_heaps``, else sorted), then merge
    them into ``out_*`` (sorted), in parallel over queries."""
    n_queries, n_candidates = out_distances.shape
    all_d = np.empty((n_queries, n_parts * n_candidates), dtype=np.float32)
    all_i = np.empty((n_queries, n_parts * n_candidates), dtype=np.int64)

    def task(part_start, part_stop):
        for part in range(part_start, part_stop):
            part_d = np.empty((n_queries, n_candidates), dtype=np.float32)
            part_i = np.empty((n_queries, n_candidates), dtype=np.int64)
            scan_part(part, part_d, part_i)
            columns = slice(part * n_candidates, (part + 1) * n_candidates)
            all_d[:, columns] = part_d
            all_i[:, columns] = part_i

    run_chunks(task, n_parts, n_threads, chunks_per_thread=1)

    def merge(start, stop):
        rows = slice(start, stop)
        kernels.heaps.merge_topk(all_d[rows], all_i[rows], parts_are_heaps, out_distances[rows],
                           out_ids[rows])

    run_chunks(merge, n_queries, n_threads, min_chunk=256, chunks_per_thread=1)


def _pair_groups(probes, list_consts, pairs, n_lists):
    """(query, probe) pairs (flat indices into ``probes``) grouped by list,
    as a :class:`~ivfsq.backends.cpu.kernels.common.PairGroups`: per list
    ``offsets`` into the pairs' query rows and their list constants."""
    pair_lists = probes.ravel()[pairs]
    order = np.argsort(pair_lists, kind="stable")
    pairs = pairs[order]
    pair_offsets = np.zeros(n_lists + 1, dtype=np.int64)
    np.cumsum(np.bincount(pair_lists, minlength=n_lists), out=pair_offsets[1:])
    pair_queries = pairs // probes.shape[1]
    pair_consts = np.ascontiguousarray(list_consts.ravel()[pairs])
    return kernels.common.PairGroups(pair_offsets, pair_queries, pair_consts)


def normalize_rows(vectors):
    """Rows (float32, C-contiguous) scaled to unit L2 norm in place; zero rows
    stay zero. Returns the vectors and a boolean mask of the nonzero rows."""
    nonzero = np.empty(vectors.shape[0], dtype=np.bool_)
    kernels.encode.normalize_rows(vectors, nonzero)
    return vectors, nonzero


_NO_FILTER = kernels.common.KeepFilter(np.zeros((1, 0), dtype=np.uint32), False)


def _kernel_filter(keep_words):
    """The filter as the kernels take it (no words without a filter):
    ``keep_words`` has one row of bitset words for every query, or one per
    query."""
    if keep_words is None:
        return _NO_FILTER
    return kernels.common.KeepFilter(keep_words, True)


def _keep_rows(keep, rows):
    """The filter of some queries (``rows``: a slice or index array): their
    own rows of a per-query filter, else the filter itself."""
    if keep.words.shape[0] > 1:
        return kernels.common.KeepFilter(np.ascontiguousarray(keep.words[rows]), keep.enabled)
    return keep


def _list_arrays(lists):
    """A snapshot's lists as the kernels take them."""
    return kernels.common.ListArrays(lists.codes, lists.ids, lists.aux, lists.list_offsets,
                                     lists.list_sizes)


class _FewCall:
    """A one-call search kernel (``kernels.scan.search_few``, or
    ``kernels.fastscan.search_first_pass`` for a plan with the first pass)
    with the arguments that the snapshot, the plan and ``n_probes`` fix,
    gathered once for each (:func:`_few_call`): a single query then pays
    only for its own arrays, not for some twenty lookups.

    ``coarse_bound`` is the engine's bound when the probes pay to be
    selected before the call (else None: the kernel selects them)."""

    def __init__(self, engine, lists, plan, n_probes):
        quantizer = engine.quantizer
        head = (engine.centers, engine.center_sq_norms, n_probes, quantizer.vmin, quantizer.delta,
                engine.by_residual, *_list_arrays(lists))
        self.first_pass = plan.first_pass
        if self.first_pass:
            self.kernel = kernels.fastscan.search_first_pass
            self.fixed = head + (*engine.first_pass_layout(lists), engine.kernel_metric)
        else:
            self.kernel = kernels.scan.search_few
            self.fixed = head + (engine.kernel_metric, quantizer.bits)
            weights = quantizer.int_weights_buffer(0, plan.int_weights, plan.wide)
            self.weights_dtype, self.weights_columns = weights.dtype, weights.shape[1]
        self.n_probes = n_probes
        self.coarse_bound = engine.coarse_bound(n_probes)

    def run(self, queries, keep, emit_rows, probes, out_distances, out_ids):
        """Search ``queries`` into ``out_*`` (their columns: the results per
        query). ``probes``: their probed lists, or ``_NO_PROBES`` for the
        kernel to select them; ``emit_rows``: keys are storage rows (for
        re-ranking)."""
        if self.first_pass:
            n_candidates = max(self.first_pass, out_distances.shape[1])
            self.kernel(queries, *self.fixed, *keep, emit_rows, n_candidates, probes,
                        out_distances, out_ids)
        else:
            weights = np.empty((queries.shape[0], self.weights_columns), self.weights_dtype)
            self.kernel(queries, *self.fixed, *keep, emit_rows, weights, probes, out_distances,
                        out_ids)


def _few_call(engine, lists, plan, n_probes):
    """The :class:`_FewCall` of ``plan`` (made once per snapshot and key)."""
    return engine.snapshot_value(
        lists, ("few call", n_probes, plan.int_filter, plan.first_pass),
        lambda: _FewCall(engine, lists, plan, n_probes))


def _n_candidates(k, lists, refine_ratio):
    """Results per query scored on the codes: ``ceil(refine_ratio * k)`` (at
    least ``k``) to re-rank on a precise store, else ``k``."""
    return max(k, math.ceil(refine_ratio * k)) if lists.precise is not None else k


def _finish(engine, prepared, lists, k, distances, neighbors, n_threads):
    """A block's results: the candidates (storage rows) re-ranked on the
    precise store where there is one, else ``distances`` and ``neighbors``."""
    if lists.precise is None:
        return distances, neighbors
    return _rerank(engine, prepared, neighbors, k, lists, engine.kernel_metric, n_threads)


def _search_few(engine, call, lists, prepared, queries, keep, k, n_candidates, n_threads,
                coarse_in_kernel):
    """The "few" path: the whole search of a few queries in one kernel call
    of :class:`_FewCall` ``call`` (after one for the probes where the coarse
    bound pays), with or without the first pass, then :func:`_finish`."""
    distances = np.empty((queries.shape[0], n_candidates), dtype=np.float32)
    neighbors = np.empty((queries.shape[0], n_candidates), dtype=np.int64)
    probes = _NO_PROBES
    if call.coarse_bound is not None:
        probes = engine.coarse_probes(queries, call.n_probes, n_threads, coarse_in_kernel)
    call.run(queries, keep, lists.precise is not None, probes, distances, neighbors)
    return _finish(engine, prepared, lists, k, distances, neighbors, n_threads)


class OneQuery:
    """:func:`search_block` for one query without a filter on the "few"
    path, bound to one snapshot, plan, ``k``, ``n_probes`` and
    ``refine_ratio``: ``run(prepared)`` (shape (1, dim)) returns the same.

    Made once for repeated single queries (:func:`one_query`): a call then
    pays for its output arrays and its kernel calls, not for the look-ups."""

    def __init__(self, engine, lists, plan, k, n_probes, refine_ratio):
        self._engine = engine
        self._lists = lists
        self._call = _few_call(engine, lists, plan, n_probes)
        self._coarse_in_kernel = plan.coarse_in_kernel
        self._k = k
        self._n_candidates = _n_candidates(k, lists, refine_ratio)

    def run(self, prepared):
        return _search_few(self._engine, self._call, self._lists, prepared,
                           self._engine.internal(prepared), _NO_FILTER, self._k,
                           self._n_candidates, 1, self._coarse_in_kernel)


def one_query(engine, plan, lists, k, n_probes, refine_ratio=None):
    """A :class:`OneQuery` where ``plan`` (for one query) takes the "few"
    path, else None. ``refine_ratio``: the search's, for a snapshot with a
    precise store."""
    if plan.path != "few":
        return None
    return OneQuery(engine, lists, plan, k, min(n_probes, engine.centers.shape[0]), refine_ratio)


def _rows_of(tables, rows):
    """The query tables of some queries (``rows``: a slice)."""
    return kernels.common.QueryTables(*(table[rows] for table in tables))


@functools.lru_cache(maxsize=1)
def _half_table():
    """float32 value of every float16 bit pattern (for the re-rank kernel)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(
        np.float32
    )


def _precise_views(lists, dim):
    """The precise store as the exact kernels take it: float32 rows, or
    (no rows and) float16 bit patterns with their float32 table."""
    precise = lists.precise
    if precise.dtype == np.float16:
        return kernels.common.PreciseStore(np.zeros((0, dim), dtype=np.float32),
                                           precise.view(np.uint16), _half_table())
    return kernels.common.PreciseStore(precise, np.zeros((0, dim), dtype=np.uint16),
                                       np.zeros(0, dtype=np.float32))


def search_block(engine, plan, prepared, lists, k, n_probes, keep_words, n_threads,
                  refine_ratio):
    queries = engine.internal(prepared, n_threads)
    refine = lists.precise is not None
    n_queries = queries.shape[0]
    n_probes = min(n_probes, engine.centers.shape[0])
    n_candidates = _n_candidates(k, lists, refine_ratio)
    metric = engine.kernel_metric
    keep = _kernel_filter(keep_words)
    if plan.path == "few":
        return _search_few(engine, _few_call(engine, lists, plan, n_probes), lists, prepared,
                           queries, keep, k, n_candidates, n_threads, plan.coarse_in_kernel)
    distances = np.empty((n_queries, n_candidates), dtype=np.float32)
    neighbors = np.empty((n_queries, n_candidates), dtype=np.int64)
    if plan.first_pass:
        # A batch with the first pass: each chunk of queries gets its
        # coarse step and then the one-call kernel on the same thread, one
        # parallel step with no wait between the two. A small chunk's
        # probes are selected in the kernel (its dots cost less than a BLAS
        # call there).
        call = _few_call(engine, lists, plan, n_probes)

        def task(start, stop):
            rows = slice(start, stop)
            probes = _NO_PROBES
            in_kernel = stop - start < COARSE_BLAS_MIN_QUERIES
            if call.coarse_bound is not None or not in_kernel:
                probes = engine.coarse_probes(queries[rows], n_probes, 1, in_kernel)
            call.run(queries[rows], _keep_rows(keep, rows), refine, probes, distances[rows],
                     neighbors[rows])

        with single_threaded_blas():
            run_chunks(task, n_queries, n_threads, min_chunk=FIRST_PASS_MIN_CHUNK)
        return _finish(engine, prepared, lists, k, distances, neighbors, n_threads)
    arrays = _list_arrays(lists)
    bits = engine.quantizer.bits
    probes = engine.coarse_probes(queries, n_probes, n_threads, plan.coarse_in_kernel)
    list_consts, query_sq_norms = engine.list_constants(queries, probes, n_threads)
    weights = engine.quantizer.weights(queries, n_threads)
    tables = kernels.common.QueryTables(weights, query_sq_norms, *engine.quantizer.int_weights(
        weights, plan.int_weights, n_threads=n_threads, wide=plan.wide
    ))

    def scan_pairs(query_rows, probe_cols, out_d, out_i):
        kernels.scan.scan_lists(
            np.ascontiguousarray(probes[query_rows, probe_cols]),
            np.ascontiguousarray(list_consts[query_rows, probe_cols]),
            _rows_of(tables, query_rows), arrays, _keep_rows(keep, query_rows), metric, bits,
            refine, out_d, out_i,
        )

    if plan.path == "list_major":
        if keep.words.shape[0] > 1:
            raise ValueError("a list-major plan cannot check per-query bitsets; plan the "
                             "search with per_query_filter=True")
        # Big batches: list-major, each list read once for all its queries.
        _scan_grouped(engine, probes, list_consts, tables, lists, keep, metric, bits, refine,
                      distances, neighbors, n_threads)
    elif plan.path == "per_query":
        # Batches: parallel over queries, each query's top-k in one heap.
        def task(start, stop):
            rows = slice(start, stop)
            scan_pairs(rows, slice(None), distances[rows], neighbors[rows])

        run_chunks(task, n_queries, n_threads)
    else:
        # Few queries: parallel over probed lists, then merge the partial top-k.
        n_parts = max(1, min(n_threads, n_probes))
        bounds = [round(n_probes * part / n_parts) for part in range(n_parts + 1)]

        def scan_part(part, out_d, out_i):
            scan_pairs(slice(None), slice(bounds[part], bounds[part + 1]), out_d, out_i)

        _scan_in_parts(n_parts, scan_part, distances, neighbors, n_threads)
    return _finish(engine, prepared, lists, k, distances, neighbors, n_threads)


def range_search(engine, prepared, radius, n_probes, keep_words, n_threads,
                 int_filter="auto"):
    """Per query, the stored vectors with internal distance <= ``radius``.

    Returns CSR arrays: ``offsets`` (n_queries + 1), ``ids`` and internal
    distances, each query's results sorted by (distance, id). The probes,
    constants and weights are those of :meth:`search`, and the codes are
    scanned by its per-query loop with the range handler (the integer
    filter included, as the planner chooses it for per-query scans);
    with a precise store the probed rows' exact distances are used
    instead, as re-ranking does.
    """
    lists = engine.lists  # one snapshot
    queries = engine.internal(prepared, n_threads)
    n_queries = queries.shape[0]
    n_probes = min(n_probes, engine.centers.shape[0])
    metric = engine.kernel_metric
    keep = _kernel_filter(keep_words)
    arrays = _list_arrays(lists)
    probes = engine.coarse_probes(queries, n_probes, n_threads)
    radius = np.float32(radius)
    chunks = {}
    if lists.precise is not None:
        store = _precise_views(lists, queries.shape[1])

        def task(start, stop):
            rows = slice(start, stop)
            chunks[start] = kernels.exact.range_exact(
                np.ascontiguousarray(probes[rows]), prepared[rows], store, arrays,
                _keep_rows(keep, rows), metric, radius,
            )
    else:
        list_consts, query_sq_norms = engine.list_constants(queries, probes, n_threads)
        weights = engine.quantizer.weights(queries, n_threads)
        plan = engine.plan(lists, n_queries, n_probes, n_threads, "per_query", int_filter)
        tables = kernels.common.QueryTables(weights, query_sq_norms, *engine.quantizer.int_weights(
            weights, plan.int_weights, n_threads=n_threads, wide=plan.wide
        ))

        def task(start, stop):
            rows = slice(start, stop)
            chunks[start] = kernels.scan.range_lists(
                np.ascontiguousarray(probes[rows]), np.ascontiguousarray(list_consts[rows]),
                _rows_of(tables, rows), arrays, _keep_rows(keep, rows), metric,
                engine.quantizer.bits, radius,
            )

    run_chunks(task, n_queries, n_threads)
    parts = [chunks[start] for start in sorted(chunks)]
    counts = np.concatenate([part[0] for part in parts])
    ids = np.concatenate([part[1] for part in parts])
    distances = np.concatenate([part[2] for part in parts])
    offsets = np.zeros(n_queries + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    # Each query's results by (distance, id).
    owner = np.repeat(np.arange(n_queries), counts)
    order = np.lexsort((ids, distances, owner))
    return offsets, ids[order], distances[order]


def int8_excess(engine, lists, k=10, n_samples=32):
    """Past the ``k`` that must be scored exactly, the share of a list's
    rows whose int8-filter bound does not rule them out at the final
    k-th distance, averaged over queries that are stored vectors (evenly
    spaced rows, decoded) and their nearest lists."""
    quantizer = engine.quantizer
    rows = lists.valid_rows()
    labels = np.repeat(np.arange(lists.n_lists), lists.list_sizes)
    picked = np.linspace(0, rows.shape[0] - 1, min(n_samples, rows.shape[0])).astype(int)
    rows = rows[picked]
    centers, labels = engine.code_reference(labels[picked])
    queries = quantizer.decode(lists.codes[rows], centers, labels)
    if engine.metric.normalized:
        normalize_rows(queries)
    probes = engine.coarse_probes(queries, 1, 1)
    consts, query_sq_norms = engine.list_constants(queries, probes, 1)
    weights = quantizer.weights(queries)
    int_weights, params = quantizer.int_weights(weights, wide=False)
    excess = np.empty(queries.shape[0], dtype=np.float64)
    kernels.scan.int_filter_excess(
        np.ascontiguousarray(probes[:, 0]), np.ascontiguousarray(consts[:, 0]),
        kernels.common.QueryTables(weights, query_sq_norms, int_weights, params),
        _list_arrays(lists), engine.kernel_metric, 4, k, excess,
    )
    excess = excess[excess >= 0]  # lists left empty by removals are passed over
    return float(excess.mean()) if excess.size else 0.0


def _scan_grouped(engine, probes, list_consts, tables, lists, keep, metric, bits, emit_rows,
                  out_distances, out_ids, n_threads):
    """List-major scan of a batch into ``out_*`` (sorted top-k per query).

    The (query, probe) pairs are grouped by list, and each list is read
    once per group for all its queries. Without the integer filter the
    probed lists are cut into one contiguous part per thread of about
    equal work (pairs x list size); each part keeps its own per-query
    heaps, merged at the end.

    With the filter, every candidate that might enter a heap is rescored
    exactly, so heaps that start empty cost more: threads take shares
    of the queries instead (one heap per query), and each query's nearest
    list is scanned first (its *lead* pair, a group of its own), so its
    k-th distance is tight early and fewer candidates pass the filter.
    Where :func:`ivfsq.backends.cpu.kernels.scan.two_phase_pays`, the lead
    lists are scanned in two phases (bounds of every row, then exact scores
    for the rows the k-th smallest upper bound leaves in), which scores
    fewer rows of the lead list exactly than scoring them as they come.
    """
    # int16 weights for 4-bit codes give a bound as tight as 8-bit codes':
    # the lists are then cut among threads as without the filter.
    int_weights = tables.int_weights
    wide = bits == 4 and int_weights.dtype.itemsize == 2
    if int_weights.shape[1] > 0 and not wide:
        _scan_grouped_by_queries(engine, probes, list_consts, tables, lists, keep, metric, bits,
                                 emit_rows, out_distances, out_ids, n_threads)
        return
    n_lists = engine.centers.shape[0]
    arrays = _list_arrays(lists)
    pairs = _pair_groups(probes, list_consts, np.arange(probes.size), n_lists)
    counts = np.diff(pairs.offsets)
    active = np.flatnonzero(counts)
    work = np.cumsum(counts[active] * (lists.list_sizes[active] + 1))
    n_parts = max(1, min(n_threads, active.shape[0]))
    cuts = np.searchsorted(work, work[-1] * np.arange(1, n_parts) / n_parts)
    bounds = [0, *cuts.tolist(), active.shape[0]]

    def scan_part(part, part_d, part_i):
        kernels.heaps.init_heaps(part_d, part_i)
        kernels.grouped.scan_lists_grouped(
            active[bounds[part] : bounds[part + 1]], pairs, tables, arrays, keep, metric, bits,
            emit_rows, part_d, part_i,
        )

    _scan_in_parts(n_parts, scan_part, out_distances, out_ids, n_threads,
                   parts_are_heaps=True)


def _scan_grouped_by_queries(engine, probes, list_consts, tables, lists, keep, metric, bits,
                             emit_rows, out_distances, out_ids, n_threads):
    """:func:`_scan_grouped` with the filter: a share of the queries per
    thread, lead pairs first."""
    arrays = _list_arrays(lists)
    n_queries, n_probes = probes.shape
    n_lists = engine.centers.shape[0]
    k = out_distances.shape[1]
    mean_rows = lists.size / max(1, n_lists)
    first_kernel = kernels.grouped.scan_lists_grouped
    # The plain Python function: called through numba, this inlined helper
    # would be compiled in every process (only kernels are cached on disk).
    if kernels.scan.two_phase_pays.py_func(k, lists.codes.shape[1], mean_rows):
        first_kernel = kernels.grouped.scan_first_lists_grouped

    def task(start, stop):
        rows = slice(start, stop)
        part_probes = probes[rows]
        heap_d = np.empty((stop - start, k), dtype=np.float32)
        heap_i = np.empty((stop - start, k), dtype=np.int64)
        kernels.heaps.init_heaps(heap_d, heap_i)
        is_lead = np.arange(part_probes.size) % n_probes == 0
        part_tables = _rows_of(tables, rows)
        for kernel, chosen in ((first_kernel, np.flatnonzero(is_lead)),
                               (kernels.grouped.scan_lists_grouped, np.flatnonzero(~is_lead))):
            pairs = _pair_groups(part_probes, list_consts[rows], chosen, n_lists)
            kernel(np.flatnonzero(np.diff(pairs.offsets)), pairs, part_tables, arrays, keep,
                   metric, bits, emit_rows, heap_d, heap_i)
        kernels.heaps.merge_topk(heap_d, heap_i, True, out_distances[rows], out_ids[rows])

    run_chunks(task, n_queries, n_threads, chunks_per_thread=1)


def _rerank(engine, queries, candidate_rows, k, lists, metric, n_threads):
    """Exact top-k over candidate storage rows, from the precise store."""
    n_queries = queries.shape[0]
    distances = np.empty((n_queries, k), dtype=np.float32)
    neighbors = np.empty((n_queries, k), dtype=np.int64)
    store = _precise_views(lists, queries.shape[1])

    def task(start, stop):
        rows = slice(start, stop)
        kernels.exact.rerank_rows(queries[rows], store, candidate_rows[rows], lists.ids, metric,
                                  distances[rows], neighbors[rows])

    run_chunks(task, n_queries, n_threads, min_chunk=16)
    return distances, neighbors


# ------------------------------------------------------------ filtered search
def count_kept(words, n_ids):
    """Per row of ``words`` (2-D uint32 bitsets), how many of the ids
    ``[0, n_ids)`` it keeps."""
    out = np.empty(words.shape[0], dtype=np.int64)
    kernels.filtered.count_kept(words, n_ids, out)
    return out


def kept_per_list(lists, words):
    """Per list of the snapshot, the rows whose ids the bitset ``words`` (1-D) keeps."""
    out = np.empty(lists.n_lists, dtype=np.int64)
    kernels.filtered.kept_per_list(words, lists.ids, lists.list_offsets, lists.list_sizes, out)
    return out


def lists_to_walk(lists, ranked, words, targets, n_threads):
    """Per query, the fewest of its ``ranked`` lists (nearest first) whose
    rows include ``targets`` kept ones (-1: all of them hold fewer), and the
    kept rows counted (see ``kernels.filtered.lists_to_walk``)."""
    n_queries = ranked.shape[0]
    out_lists = np.empty(n_queries, dtype=np.int64)
    out_seen = np.empty(n_queries, dtype=np.int64)
    per_query = words.shape[0] > 1

    def task(start, stop):
        rows = slice(start, stop)
        kernels.filtered.lists_to_walk(
            ranked[rows], words[rows] if per_query else words, lists.ids, lists.list_offsets,
            lists.list_sizes, targets[rows], out_lists[rows], out_seen[rows],
        )

    run_chunks(task, n_queries, n_threads, min_chunk=8)
    return out_lists, out_seen


def search_rows(engine, prepared, lists, k, row_starts, rows, row_lists, n_threads,
                refine_ratio):
    """Each query's top ``k`` among the storage ``rows[row_starts[i] :
    row_starts[i + 1]]`` (two ``row_starts``: the same rows for every
    query; ``row_lists``: the list of each), scored on their codes as the
    scan scores them, then re-ranked on the precise store where there is
    one: internal distances and ids, (n_queries, k), padded."""
    queries = engine.internal(prepared, n_threads)
    n_queries = queries.shape[0]
    n_candidates = _n_candidates(k, lists, refine_ratio)
    quantizer = engine.quantizer
    weights = quantizer.weights(queries, n_threads)
    distances = np.empty((n_queries, n_candidates), dtype=np.float32)
    keys = np.empty((n_queries, n_candidates), dtype=np.int64)
    shared = row_starts.shape[0] == 2

    def task(start, stop):
        part = slice(start, stop)
        starts = row_starts if shared else row_starts[start : stop + 1]
        kernels.filtered.score_rows(
            queries[part], weights[part], engine.centers, quantizer.vmin, engine.by_residual,
            lists.codes, lists.ids, lists.aux, starts, rows, row_lists, engine.kernel_metric,
            quantizer.bits, lists.precise is not None, distances[part], keys[part],
        )

    run_chunks(task, n_queries, n_threads, min_chunk=4)
    return _finish(engine, prepared, lists, k, distances, keys, n_threads)
