"""The per-query scan: each query reads its probed lists into its own heap
(top-k) or result list (range), with the integer filter; and the whole
search of a few queries in one call.

The hot loop of :func:`scan_list` stays whole in this file: numba counts
references to arrays passed to helpers, so the per-row path calls
array-taking helpers only for rows that pass the filter.
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu.kernels import simd
from ivfsq.backends.cpu.kernels.coarse import query_probes, selection_workspace
from ivfsq.backends.cpu.kernels.common import (
    FAST,
    HANDLE_RANGE,
    HANDLE_TOPK,
    INT_PARAMS,
    JIT,
    METRIC_L2,
)
from ivfsq.backends.cpu.kernels.encode import dot64, int_weights_row, list_constant, weights_row
from ivfsq.backends.cpu.kernels.heaps import greater, heap_init, heap_push_replace, heap_sort
from ivfsq.backends.cpu.kernels.score import (
    any_may_pass,
    distance_lower_bound,
    distance_upper_bound,
    exact_score,
    int_dot,
    int_margin,
    int_margin_below,
    is_kept,
    n_int_chunks,
    plane_scales,
    plane_score,
    plane_width,
    score_to_distance,
)

# Buckets of the histogram that picks a list's cutoff (_kth_smallest_cover).
HISTOGRAM_BUCKETS = 64
# A first list is scanned in two phases when k * code bytes is at least this
# many times its rows (see two_phase_pays).
TWO_PHASE_MIN_RATIO = 16
# The per-query scan takes the integer dots of four consecutive rows at a
# time (simd.dots_4rows_*) on rows of two chunks up to this many bytes: each
# weight is loaded once for four rows. On longer rows the four sums no longer
# fit the registers, and a row of one chunk is a single load anyway.
FOUR_ROWS_MAX_CODE_BYTES = 192


@njit(inline="always")
def scan_list(
    w, base, q_sq, lst, codes, ids, aux, list_offsets, list_sizes, metric, bits,
    keep_words, use_filter, emit_rows, heap_d, heap_i, int_weights, int_params, query,
    handler, radius, position,
):
    """Hand the vectors of list ``lst`` that pass the threshold to a handler.

    A vector scores ``base + w . u``; see :func:`scan_lists`. With integer
    weights (row ``query`` of ``int_weights``, see :mod:`ivfsq.backends.cpu.kernels.simd`),
    the integer dot ``scale * (w8 . u)`` first gives a lower bound of the
    distance (``int_params[query] = (scale, error bound above, error bound
    below)``, see :func:`int_weights_row`; the bound above serves here);
    only vectors whose bound passes are scored exactly
    (:func:`plane_score` or :func:`exact_score`). On rows of at most
    ``FOUR_ROWS_MAX_CODE_BYTES`` the integer dots come four rows at a time
    (a list's last four rows may overlap the block before; the rows done
    already are passed over), and the rows are visited in the same order.

    ``HANDLE_TOPK``: the threshold is the max-heap's root (the k-th
    distance), and winners are pushed into ``heap_*``. ``HANDLE_RANGE``: the
    threshold is ``radius``; each vector within it is written to
    ``heap_*[position]`` while there is room, and counted. Returns the
    position after this list's results (unchanged for top-k).
    """
    k = heap_d.shape[0]
    code_size = codes.shape[1]
    n_chunks = n_int_chunks(int_weights, bits)
    # The threshold, in a register: most candidates lose to it.
    worst = heap_d[0] if handler == HANDLE_TOPK else radius
    start = list_offsets[lst]
    stop = start + list_sizes[lst]
    plane = plane_width(int_weights, bits)
    int_scale = margin = scale2 = scale3 = np.float32(0.0)
    if n_chunks > 0:
        int_scale = int_params[query, 0]
        margin = int_margin(int_params, query, base)
        scale2, scale3 = plane_scales(int_params, query, plane)
    n_block = 1
    if n_chunks >= 2 and code_size <= FOUR_ROWS_MAX_CODE_BYTES and stop - start >= 4:
        n_block = 4
    row = start
    while row < stop:
        first = min(row, stop - n_block)
        if n_block == 4:
            if bits == 8:
                dots = simd.dots_4rows_bytes(codes, first, int_weights, query, n_chunks)
            else:
                dots = simd.dots_4rows_nibbles(codes, first, int_weights, query, n_chunks)
            if first == row and not any_may_pass(
                    metric, base, int_scale, margin, q_sq, worst, dots,
                    (aux[first], aux[first + 1], aux[first + 2], aux[first + 3])):
                # The common case: one branch for the block (faster than
                # a branch per row).
                row = first + 4
                continue
        elif n_chunks > 0:
            dot = int_dot(codes, first, int_weights, query, n_chunks, bits)
            dots = (dot, dot, dot, dot)
        else:
            dots = (np.int32(0), np.int32(0), np.int32(0), np.int32(0))
        for member in range(row - first, n_block):
            current = first + member
            if use_filter and not is_kept(keep_words, ids[current]):
                continue
            if n_chunks > 0:
                dot = dots[member]
                approx = base + int_scale * np.float32(dot)
                if distance_lower_bound(metric, approx, margin, q_sq, aux[current]) > worst:
                    continue
                if plane > 0:
                    s = plane_score(
                        base, int_scale, scale2, scale3, dot,
                        simd.dot_nibbles_at(codes, current, int_weights, query, n_chunks, plane),
                        simd.dot_nibbles_at(codes, current, int_weights, query, n_chunks,
                                            2 * plane),
                    )
                else:
                    s = exact_score(w, base, codes, current, bits, code_size)
            else:
                s = exact_score(w, base, codes, current, bits, code_size)
            dist = score_to_distance(metric, s, q_sq, aux[current])
            if dist <= worst:
                key = current if emit_rows else ids[current]
                if handler == HANDLE_TOPK:
                    if greater(heap_d[0], heap_i[0], dist, key):
                        heap_push_replace(heap_d, heap_i, k, dist, key)
                        worst = heap_d[0]
                else:
                    if position < k:
                        heap_d[position] = dist
                        heap_i[position] = key
                    position += 1
        row = first + n_block
    return position


@njit(fastmath=FAST, **JIT)
def scan_lists(
    probes,
    list_consts,
    tables,
    lists,
    keep,
    metric,
    bits,
    emit_rows,
    out_distances,
    out_ids,
):
    """Scan the probed lists of each query and keep its top-k.

    For query ``i`` and probe ``p`` the list ``probes[i, p]`` is scanned; a
    vector with codes ``u`` scores ``s = list_consts[i, p] + weights[i] . u``,
    which is ``q . x_hat`` (DESIGN 4.1: ``q.c + q.vmin + (q*delta).u``). The
    distance is then ``|q|^2 + |x_hat|^2 - 2 s`` (L2), ``-s`` (inner product)
    or ``1 - s / |x_hat|`` (cosine). ``bits`` (8 or 4) says how codes are
    packed (see ``ivfsq.codecs.scalar``). Filtered-out ids are skipped before
    scoring. Rows of ``out_*`` receive the ascending top-k, padded with
    (+inf, -1); ``out_ids`` holds ids, or storage row numbers when
    ``emit_rows`` (for re-ranking against the precise store). When
    ``int_weights`` has columns, its row ``i`` and ``int_params[i]`` are
    query ``i``'s integer weights (see :func:`scan_list`), and each query's
    first list is scanned in two phases (:func:`_scan_list_bounded`) where
    :func:`two_phase_pays`; the results are the same.
    """
    weights, query_sq_norms, int_weights, int_params = tables
    codes, ids, aux, list_offsets, list_sizes = lists
    all_words, use_filter = keep
    n_queries, n_probes = probes.shape
    bounded = n_int_chunks(int_weights, bits) > 0
    lowers = np.empty(0, dtype=np.float32)
    uppers = np.empty(0, dtype=np.float32)
    row_dots = np.empty(0, dtype=np.int32)
    counts = np.empty(HISTOGRAM_BUCKETS, dtype=np.int64)
    for i in range(n_queries):
        keep_words = all_words[i if all_words.shape[0] > 1 else 0]  # one bitset, or its own
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        heap_init(heap_d, heap_i)
        for p in range(n_probes):
            lst = probes[i, p]
            if (lst >= 0 and p == 0 and bounded
                    and two_phase_pays(heap_d.shape[0], codes.shape[1], list_sizes[lst])):
                if list_sizes[lst] > lowers.shape[0]:
                    lowers = np.empty(list_sizes[lst], dtype=np.float32)
                    uppers = np.empty(list_sizes[lst], dtype=np.float32)
                    row_dots = np.empty(list_sizes[lst], dtype=np.int32)
                _scan_list_bounded(
                    weights[i], list_consts[i, p], query_sq_norms[i], lst, codes, ids, aux,
                    list_offsets, list_sizes, metric, bits, keep_words, use_filter, emit_rows,
                    heap_d, heap_i, int_weights, int_params, i, lowers, uppers, counts,
                    row_dots,
                )
            elif lst >= 0:
                scan_list(
                    weights[i], list_consts[i, p], query_sq_norms[i], lst, codes, ids, aux,
                    list_offsets, list_sizes, metric, bits, keep_words, use_filter,
                    emit_rows, heap_d, heap_i, int_weights, int_params, i,
                    HANDLE_TOPK, np.float32(0.0), 0,
                )
        heap_sort(heap_d, heap_i, heap_d.shape[0])


@njit(fastmath=FAST, **JIT)
def range_lists(
    probes,
    list_consts,
    tables,
    lists,
    keep,
    metric,
    bits,
    radius,
):
    """:func:`scan_lists` with the range handler: every vector of the probed
    lists whose distance is ``<= radius``.

    Returns per-query counts and the ids and distances, query by query, in
    scan order. Results go into a buffer that doubles when a query
    overflows it (that query is then scanned again).
    """
    weights, query_sq_norms, int_weights, int_params = tables
    codes, ids, aux, list_offsets, list_sizes = lists
    all_words, use_filter = keep
    n_queries, n_probes = probes.shape
    counts = np.zeros(n_queries, dtype=np.int64)
    found_d = np.empty(4096, dtype=np.float32)
    found_i = np.empty(4096, dtype=np.int64)
    used = 0
    for i in range(n_queries):
        keep_words = all_words[i if all_words.shape[0] > 1 else 0]  # one bitset, or its own
        while True:
            position = used
            for p in range(n_probes):
                position = scan_list(
                    weights[i], list_consts[i, p], query_sq_norms[i], probes[i, p], codes,
                    ids, aux, list_offsets, list_sizes, metric, bits, keep_words, use_filter,
                    False, found_d, found_i, int_weights, int_params, i,
                    HANDLE_RANGE, radius, position,
                )
            if position <= found_d.shape[0]:
                break
            capacity = max(2 * found_d.shape[0], position)
            grown_d = np.empty(capacity, dtype=np.float32)
            grown_i = np.empty(capacity, dtype=np.int64)
            grown_d[:used] = found_d[:used]
            grown_i[:used] = found_i[:used]
            found_d = grown_d
            found_i = grown_i
        counts[i] = position - used
        used = position
    return counts, found_i[:used].copy(), found_d[:used].copy()


@njit(inline="always")
def _kth_smallest_cover(values, n, k, counts):
    """One of ``values[:n]`` at or above their k-th smallest (1 <= k <= n;
    +inf when fewer than k are finite), found without sorting: a histogram
    of the finite values over ``counts.shape[0]`` equal buckets, then the
    largest value in the buckets up to the one where the running count
    reaches k. ``counts`` (int64) is a workspace."""
    low = np.float32(np.inf)
    high = np.float32(-np.inf)
    n_finite = 0
    for i in range(n):
        value = values[i]
        if value < np.inf:
            low = min(low, value)
            high = max(high, value)
            n_finite += 1
    if n_finite < k:
        return np.float32(np.inf)
    if not high > low:
        return high
    n_buckets = counts.shape[0]
    counts[:] = 0
    inverse = np.float32(n_buckets) / (high - low)
    for i in range(n):
        value = values[i]
        if value < np.inf:
            counts[_bucket(value, low, inverse, n_buckets)] += 1
    last = 0
    total = 0
    for bucket in range(n_buckets):
        total += counts[bucket]
        if total >= k:
            last = bucket
            break
    # At least k values lie in buckets 0..last: the largest of them is at
    # or above the k-th smallest.
    cover = np.float32(-np.inf)
    for i in range(n):
        value = values[i]
        if value < np.inf and _bucket(value, low, inverse, n_buckets) <= last:
            cover = max(cover, value)
    return cover


@njit(inline="always")
def _bucket(value, low, inverse, n_buckets):
    # In range whatever the float arithmetic gives (a NaN from 0 * inf
    # included): an index out of it would write past the counts.
    position = (value - low) * inverse
    if position >= np.float32(0.0) and position < np.float32(n_buckets):
        return np.int64(position)
    if position >= np.float32(n_buckets):
        return n_buckets - 1
    return 0


@njit(inline="always")
def score_bounded(w, heap_d, heap_i, k, metric, base, codes, bits, start, n_rows, q_sq, aux,
                   ids, emit_rows, lowers, uppers, counts, int_weights, int_params, query,
                   dots):
    """Score exactly, into one query's max-heap ``heap_*``, the rows ``start
    + r`` of one list whose distance lower bound ``lowers[r]`` (+inf for a
    row to skip) the threshold cannot rule out. The threshold is the heap's
    root or, when lower, a value at or above the k-th smallest upper bound
    ``uppers[r]``: k rows of the list lie within it, so the final k-th
    distance does too. The heap's first k entries then cost about k exact
    scores, not the 2-3k that scoring rows as they come takes while the
    heap fills. ``dots[r]`` are the rows' integer dots with row ``query``
    of ``int_weights`` (see :func:`plane_score`)."""
    cutoff = np.float32(np.inf)
    if n_rows >= k:
        cutoff = _kth_smallest_cover(uppers, n_rows, k, counts)
    worst = min(heap_d[0], cutoff)
    n_chunks = n_int_chunks(int_weights, bits)
    plane = plane_width(int_weights, bits)
    scale = int_params[query, 0]
    scale2, scale3 = plane_scales(int_params, query, plane)
    code_size = codes.shape[1]
    for r in range(n_rows):
        # Rows the filter skipped have infinite bounds, which an empty
        # heap's root (+inf) would not rule out.
        if lowers[r] <= worst and lowers[r] < np.inf:
            row = start + r
            if plane > 0:
                score = plane_score(
                    base, scale, scale2, scale3, dots[r],
                    simd.dot_nibbles_at(codes, row, int_weights, query, n_chunks, plane),
                    simd.dot_nibbles_at(codes, row, int_weights, query, n_chunks, 2 * plane),
                )
            else:
                score = exact_score(w, base, codes, row, bits, code_size)
            dist = score_to_distance(metric, score, q_sq, aux[row])
            if dist <= heap_d[0]:
                key = row if emit_rows else ids[row]
                if greater(heap_d[0], heap_i[0], dist, key):
                    heap_push_replace(heap_d, heap_i, k, dist, key)
                worst = min(heap_d[0], cutoff)


@njit(inline="always")
def two_phase_pays(k, code_size, n_rows):
    """Whether a first list of ``n_rows`` rows is worth two phases: they save
    exact scores (about 2k of them, each reading ``code_size`` bytes) and
    cost a bound per row. ``TWO_PHASE_MIN_RATIO`` weighs the bytes of the
    exact scores saved against that per-row cost: few rows of long codes pay
    off, many rows of short codes do not."""
    return k * code_size >= TWO_PHASE_MIN_RATIO * n_rows


@njit(inline="always")
def _scan_list_bounded(
    w, base, q_sq, lst, codes, ids, aux, list_offsets, list_sizes, metric, bits, keep_words,
    use_filter, emit_rows, heap_d, heap_i, int_weights, int_params, query, lowers, uppers,
    counts, dots,
):
    """:func:`scan_list` (top-k, integer filter on) in two phases: the
    bounds of every row, then :func:`score_bounded`. For a query's first
    list, where its heap starts empty. ``lowers``, ``uppers`` and ``dots``
    (int32) are workspaces of at least the list's length."""
    n_chunks = n_int_chunks(int_weights, bits)
    start = list_offsets[lst]
    n_rows = list_sizes[lst]
    scale = int_params[query, 0]
    margin = int_margin(int_params, query, base)
    below = int_margin_below(int_params, query, base)
    for r in range(n_rows):
        row = start + r
        if use_filter and not is_kept(keep_words, ids[row]):
            lowers[r] = np.inf
            uppers[r] = np.inf
            continue
        dot = int_dot(codes, row, int_weights, query, n_chunks, bits)
        dots[r] = dot
        approx = base + scale * np.float32(dot)
        lowers[r] = distance_lower_bound(metric, approx, margin, q_sq, aux[row])
        uppers[r] = distance_upper_bound(metric, approx, below, q_sq, aux[row])
    score_bounded(w, heap_d, heap_i, heap_d.shape[0], metric, base, codes, bits, start, n_rows,
                   q_sq, aux, ids, emit_rows, lowers, uppers, counts, int_weights, int_params,
                   query, dots)


@njit(fastmath=FAST, **JIT)
def search_few(
    queries,
    centers,
    center_sq_norms,
    n_probes,
    vmin,
    delta,
    by_residual,
    codes,
    ids,
    aux,
    list_offsets,
    list_sizes,
    metric,
    bits,
    all_words,
    use_filter,
    emit_rows,
    int_weights,
    given_probes,
    out_distances,
    out_ids,
):
    """The whole search of a few queries in one call, on one thread.

    It takes the lists and the filter as plain arrays, not bundles: it is
    called once per query batch of the latency path, where numba's typing
    of tuple arguments at each call would cost more than its scan of a
    small list.

    Per query: coarse dots and probe selection (:func:`select_probes_small`),
    list constants (:func:`list_constants`), weights (:func:`query_weights`)
    and the scan of the probed lists (:func:`scan_lists`), with the same
    arithmetic as those kernels. A single query pays one dispatch instead of
    one per step. ``int_weights``, one row of the integer filter's dtype and
    width (see :func:`query_int_weights`), is its workspace; with no columns
    the filter is off. ``given_probes`` (n_queries, n_probes), when it has
    rows, holds the probed lists (from :func:`select_probes_bounded_few`)
    and the coarse step is skipped.
    """
    n_queries, dim = queries.shape
    code_size = codes.shape[1]
    use_l2 = metric == METRIC_L2
    dots = np.empty(centers.shape[0], dtype=np.float32)
    probe_scores = np.empty(n_probes, dtype=np.float32)
    probe_lists = np.empty(n_probes, dtype=np.int64)
    workspace = selection_workspace(centers.shape[0], n_probes)
    weights = np.zeros(dim if bits == 8 else 2 * code_size, dtype=np.float32)
    int_params = np.zeros((1, INT_PARAMS), dtype=np.float32)
    levels = np.empty(weights.shape[0], dtype=np.float32)
    bounded = int_weights.shape[1] > 0
    lowers = np.empty(0, dtype=np.float32)
    uppers = np.empty(0, dtype=np.float32)
    row_dots = np.empty(0, dtype=np.int32)
    counts = np.empty(HISTOGRAM_BUCKETS, dtype=np.int64)
    for i in range(n_queries):
        query = queries[i]
        keep_words = all_words[i if all_words.shape[0] > 1 else 0]  # one bitset, or its own
        query_probes(query, i, given_probes, centers, center_sq_norms, use_l2, dots,
                     probe_scores, probe_lists, workspace)
        weights_row(query, delta, bits, code_size, weights)
        if int_weights.shape[1] > 0:
            int_weights_row(weights, bits, code_size, int_weights[0], levels, int_params[0])
        q_sq = np.float32(dot64(query, query)) if use_l2 else np.float32(0.0)
        offset = dot64(query, vmin)
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        heap_init(heap_d, heap_i)
        for p in range(n_probes):
            lst = probe_lists[p]
            base = list_constant(query, centers, lst, offset, by_residual)
            if p == 0 and bounded and two_phase_pays(heap_d.shape[0], code_size, list_sizes[lst]):
                # The nearest list first, in two phases (its heap is empty).
                if list_sizes[lst] > lowers.shape[0]:
                    lowers = np.empty(list_sizes[lst], dtype=np.float32)
                    uppers = np.empty(list_sizes[lst], dtype=np.float32)
                    row_dots = np.empty(list_sizes[lst], dtype=np.int32)
                _scan_list_bounded(
                    weights, base, q_sq, lst, codes, ids, aux, list_offsets, list_sizes, metric,
                    bits, keep_words, use_filter, emit_rows, heap_d, heap_i, int_weights,
                    int_params, 0, lowers, uppers, counts, row_dots,
                )
                continue
            scan_list(
                weights, base, q_sq, lst, codes, ids, aux, list_offsets, list_sizes, metric,
                bits, keep_words, use_filter, emit_rows, heap_d, heap_i, int_weights,
                int_params, 0, HANDLE_TOPK, np.float32(0.0), 0,
            )
        heap_sort(heap_d, heap_i, heap_d.shape[0])


@njit(fastmath=FAST, **JIT)
def int_filter_excess(
    probed,
    list_consts,
    tables,
    lists,
    metric,
    bits,
    k,
    out,
):
    """Per query ``i`` and its list ``probed[i]``: the share of the list's
    rows past the first ``k`` whose integer-filter bound (the scan's, with
    these integer weights) does not rule them out at the list's k-th exact
    distance; -1 for an empty list. Arguments as in :func:`scan_lists`."""
    weights, query_sq_norms, int_weights, int_params = tables
    codes, _, aux, list_offsets, list_sizes = lists
    n_chunks = n_int_chunks(int_weights, bits)
    plane = plane_width(int_weights, bits)
    for i in range(probed.shape[0]):
        lst = probed[i]
        start = list_offsets[lst]
        n_rows = list_sizes[lst]
        if n_rows == 0:
            out[i] = -1.0
            continue
        base = list_consts[i]
        q_sq = query_sq_norms[i]
        scale = int_params[i, 0]
        margin = int_margin(int_params, i, base)
        distances = np.empty(n_rows, dtype=np.float32)
        bounds = np.empty(n_rows, dtype=np.float32)
        for r in range(n_rows):
            row = start + r
            dot = int_dot(codes, row, int_weights, i, n_chunks, bits)
            approx = base + scale * np.float32(dot)
            bounds[r] = distance_lower_bound(metric, approx, margin, q_sq, aux[row])
            if plane > 0:
                score = plane_score(
                    base, scale, int_params[i, 3], int_params[i, 4], dot,
                    simd.dot_nibbles_at(codes, row, int_weights, i, n_chunks, plane),
                    simd.dot_nibbles_at(codes, row, int_weights, i, n_chunks, 2 * plane),
                )
            else:
                score = exact_score(weights[i], base, codes, row, bits, codes.shape[1])
            distances[r] = score_to_distance(metric, score, q_sq, aux[row])
        kth = min(k, n_rows) - 1
        cutoff = np.partition(distances, kth)[kth]
        passed = 0
        for r in range(n_rows):
            if bounds[r] <= cutoff:
                passed += 1
        out[i] = max(passed - k, 0) / n_rows
