"""numba kernels: encoding, list scans with a bounded top-k, merging, refine.

Kernels take arrays and scalars only. They are serial, compiled with
``cache=True`` (so a fresh process loads them from disk instead of compiling)
and ``nogil=True`` (so they run in parallel from Python threads, see
:mod:`ivfsq._threads`). No ``parallel=True`` kernel is used: that keeps every
kernel cacheable and makes concurrent searches from user threads safe with any
numba threading layer.

Distances inside the kernels are "smaller is better"; inner products are
negated by the caller on the way out.
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu import simd

# Score cases of the kernels, one per metric family (ivfsq.metrics). The
# per-vector auxiliary value ``aux`` differs per case: ||x_hat||^2 for L2,
# unused for inner product, 1/||x_hat|| for cosine (0 for a zero vector,
# giving cosine distance 1).
METRIC_L2 = 0
METRIC_IP = 1
METRIC_COSINE = 2
METRIC_CODES = {"l2": METRIC_L2, "ip": METRIC_IP, "cosine": METRIC_COSINE}
# What the per-query scan (_scan_list) does with a vector that passes: keep
# the top k in a heap, or collect every one within a radius.
HANDLE_TOPK = 0
HANDLE_RANGE = 1

# Per query, the integer filter's (scale, bound above, bound below) and the
# scales of the int8 planes past the first (4-bit codes, else 0): see
# _int_weights_row.
INT_PARAMS = 5
# Buckets of the histogram that picks a list's cutoff (_kth_smallest_cover).
HISTOGRAM_BUCKETS = 64
# A first list is scanned in two phases when k * code bytes is at least this
# many times its rows (see two_phase_pays).
TWO_PHASE_MIN_RATIO = 16
# The per-query scan takes the integer dots of four consecutive rows at a
# time (simd.dots_4rows_*) on rows of two chunks up to this many bytes. One
# query, rows in cache, per row: 64 B 1.2-1.4x faster (int8, int16 weights
# for 4-bit codes, 8-bit codes), 128-192 B 1.2-1.35x; at 256 B and more it
# was 0.9-1.15x, and one chunk is a single load (0.8x).
FOUR_ROWS_MAX_CODE_BYTES = 192
# The coarse selection's first cut (_n_select_groups): lists per group
# (_group_minima is written for 8), and the fewest groups per probe for
# exact scores (below it, _select_by_keys) and for lower bounds.
SELECT_GROUP = 8
SELECT_RATIO_EXACT = 4
SELECT_RATIO_BOUNDED = 2

_JIT = dict(cache=True, nogil=True)
# Reassociation lets LLVM vectorise the dot-product reductions; the flags
# that assume no inf/NaN are left out because the top-k heap holds +inf.
_FAST = {"reassoc", "contract", "nsz", "arcp"}
# An inlined helper's array arguments become new references: numba counts
# them with atomic calls that its pruning pass cannot remove across branches.
# In the list-major scan they cost more than its dot products, so its
# per-vector path indexes arrays in the kernel body and calls array-taking
# helpers only for vectors that win or pass the filter.


# ---------------------------------------------------------------- top-k heap
@njit(inline="always")
def _greater(d1, i1, d2, i2):
    # Total order on (distance, id): ties are broken by the smaller id, which
    # makes the selected set independent of the scan order.
    return d1 > d2 or (d1 == d2 and i1 > i2)


@njit(inline="always")
def _sift_down(heap_d, heap_i, size, dist, idx):
    """Put (dist, idx) at the root of the max-heap ``[0, size)`` and sift it down."""
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and _greater(heap_d[right], heap_i[right], heap_d[child], heap_i[child]):
            child = right
        if _greater(heap_d[child], heap_i[child], dist, idx):
            heap_d[pos] = heap_d[child]
            heap_i[pos] = heap_i[child]
            pos = child
        else:
            break
    heap_d[pos] = dist
    heap_i[pos] = idx


@njit(inline="always")
def _heap_push_replace(heap_d, heap_i, k, dist, idx):
    """Replace the root (the worst kept candidate) of a max-heap of size k."""
    _sift_down(heap_d, heap_i, k, dist, idx)


@njit(inline="always")
def _heap_sort(heap_d, heap_i, k):
    """Sort a max-heap in place into ascending (distance, id) order."""
    for end in range(k - 1, 0, -1):
        last_d = heap_d[end]
        last_i = heap_i[end]
        heap_d[end] = heap_d[0]
        heap_i[end] = heap_i[0]
        _sift_down(heap_d, heap_i, end, last_d, last_i)


@njit(inline="always")
def _heap_init(heap_d, heap_i):
    for j in range(heap_d.shape[0]):
        heap_d[j] = np.inf
        heap_i[j] = -1


# -------------------------------------------------------------------- encode
@njit(**_JIT)
def encode_sq(vectors, centers, labels, vmin, delta, bits, codes, decoded):
    """Encode rows as 8- or 4-bit residual codes; write the decoded rows too.

    ``code = clamp(round((x - c - vmin) / delta), 0, 2^bits - 1)`` and
    ``x_hat = c + vmin + code * delta``. ``centers`` has one row of zeros when
    residuals are not used (``labels`` all 0). 8 bits: one byte per dimension.
    4 bits: dimension ``2j`` in the low nibble of byte ``j``, ``2j + 1`` in the
    high nibble; ``codes`` must be zeroed by the caller.
    """
    n_rows, dim = vectors.shape
    max_level = np.float32((1 << bits) - 1)
    for row in range(n_rows):
        center = labels[row]
        for j in range(dim):
            scaled = (vectors[row, j] - centers[center, j] - vmin[j]) / delta[j]
            level = np.floor(scaled + np.float32(0.5))
            if level < 0:
                level = 0
            elif level > max_level:
                level = max_level
            code = np.uint8(level)
            if bits == 8:
                codes[row, j] = code
            else:
                codes[row, j >> 1] |= code << np.uint8((j & 1) * 4)
            decoded[row, j] = centers[center, j] + (vmin[j] + np.float32(code) * delta[j])


@njit(**_JIT)
def quantization_mse(values, lo, delta, levels, out):
    """Per column, the mean squared error of rounding ``values`` to the
    levels ``lo + code * delta``, ``code`` in ``[0, levels]`` (float64)."""
    n_rows, dim = values.shape
    # Multiplying by the inverse step instead of dividing by it: 6x faster
    # (16,384 x 384 float32, eight calls: 153 -> 26 ms). Where the two round
    # a value to different levels it lies half-way between them (to within
    # a rounding error), at the same distance from either.
    inverse = np.empty(dim, dtype=np.float64)
    for j in range(dim):
        out[j] = 0.0
        inverse[j] = 1.0 / delta[j]
    for i in range(n_rows):
        for j in range(dim):
            value = np.float64(values[i, j])
            code = np.floor((value - lo[j]) * inverse[j] + 0.5)
            code = min(max(code, 0.0), levels)
            error = lo[j] + code * delta[j] - value
            out[j] += error * error
    for j in range(dim):
        out[j] /= max(n_rows, 1)


# ---------------------------------------------------------------------- scan
@njit(inline="always")
def _dot_codes8(weights, codes, row, code_size):
    # float x uint8 dot product; fastmath lets LLVM vectorise the reduction.
    total = np.float32(0.0)
    for j in range(code_size):
        total += weights[j] * np.float32(codes[row, j])
    return total


@njit(inline="always")
def _dot_codes4(weights, codes, row, code_size):
    # Low nibbles meet weights[:code_size], high nibbles weights[code_size:].
    # int32 arithmetic: with numba's default int64 the int -> float
    # conversions do not vectorise (measured 2x slower). The two halves are
    # taken as 1-D slices: indexing them as weights[code_size + j] kept the
    # loop from vectorising (4.5x slower).
    low_weights = weights[:code_size]
    high_weights = weights[code_size:]
    low = np.float32(0.0)
    high = np.float32(0.0)
    for j in range(code_size):
        byte = np.int32(codes[row, j])
        low += low_weights[j] * np.float32(byte & np.int32(15))
        high += high_weights[j] * _high_nibble(byte)
    return low + high


@njit(inline="always")
def _high_nibble(byte):
    # (byte & 0xF0) / 16, exactly the high nibble as a float. LLVM vectorises
    # ``byte >> 4`` through 64-bit lanes here; this form was 1.6x faster in
    # a 784-d SQ4 dot (114 -> 71 ns).
    return np.float32(byte & np.int32(240)) * np.float32(0.0625)


@njit(inline="always")
def _is_kept(keep_words, vid):
    # cuVS bitset: bit vid % 32 of word vid // 32 set means kept; ids past
    # the bitset are not kept.
    word = vid >> 5
    return word < keep_words.shape[0] and ((keep_words[word] >> (vid & 31)) & 1) == 1


@njit(inline="always")
def _score_to_distance(metric, s, q_sq, aux_value):
    if metric == METRIC_L2:
        return q_sq + aux_value - np.float32(2.0) * s
    if metric == METRIC_IP:
        return -s
    return np.float32(1.0) - aux_value * s


@njit(inline="always")
def _distance_lower_bound(metric, approx, margin, q_sq, aux_value):
    """A distance no larger than the exact one of a vector whose score is
    within ``margin`` of ``approx`` (see :func:`_scan_list`); the last terms
    absorb float32 rounding."""
    best = approx + margin
    if metric == METRIC_L2:
        magnitude = q_sq + aux_value
        return magnitude - np.float32(2.0) * best - np.float32(1e-6) * magnitude
    if metric == METRIC_IP:
        return -best
    return np.float32(1.0) - aux_value * best - np.float32(1e-6)


@njit(inline="always")
def _distance_upper_bound(metric, approx, margin, q_sq, aux_value):
    """A distance no smaller than the exact one of a vector whose score is
    within ``margin`` below ``approx``: :func:`_distance_lower_bound`'s mirror."""
    worst = approx - margin
    if metric == METRIC_L2:
        magnitude = q_sq + aux_value
        return magnitude - np.float32(2.0) * worst + np.float32(1e-6) * magnitude
    if metric == METRIC_IP:
        return -worst
    return np.float32(1.0) - aux_value * worst + np.float32(1e-6)


@njit(inline="always")
def _int_margin_below(int_params, query, base):
    # How much the exact score can fall short of the integer one.
    return int_params[query, 2] + np.float32(1e-6) * abs(base)


@njit(inline="always")
def _int_margin(int_params, query, base):
    # The integer dot's error bound for this query, and rounding of the base.
    return int_params[query, 1] + np.float32(1e-6) * abs(base)


@njit(inline="always")
def _exact_score(w, base, codes, row, bits, code_size):
    if bits == 8:
        return base + _dot_codes8(w, codes, row, code_size)
    return base + _dot_codes4(w, codes, row, code_size)


@njit(inline="always")
def _int_dot(codes, row, int_weights, query, n_chunks, bits):
    if bits == 8:
        return simd.dot_bytes(codes, row, int_weights, query, n_chunks)
    return simd.dot_nibbles(codes, row, int_weights, query, n_chunks)


@njit(inline="always")
def _n_int_chunks(int_weights, bits):
    # 0 when the integer path is off (no int weights were made).
    per_chunk = 2 * simd.SQ4_CHUNK_BYTES if bits == 4 else simd.SQ8_CHUNK_BYTES
    return int_weights.shape[1] // (per_chunk * _n_planes(int_weights, bits))


@njit(inline="always")
def _n_planes(int_weights, bits):
    # simd.n_planes for the kernels.
    return simd.SQ4_PLANES if bits == 4 and int_weights.itemsize == 1 else 1


@njit(inline="always")
def _plane_score(base, scale, scale2, scale3, dot, second, third):
    """The exact score of a row that the integer filter let through, for
    4-bit codes with int8 weights: ``base + s1 dot + s2 (W2 . u) + s3 (W3 .
    u)`` (the three weight planes' dots, ``simd.SQ4_PLANES``), summed in
    float64. Other codes take :func:`_exact_score` (float weights).

    The callers run the two plane dots in their own bodies: passed to a
    helper, the arrays they read would be reference-counted with atomic
    calls for every row (about 35 ns per exact score on fashion-mnist)."""
    total = (np.float64(scale) * np.float64(dot) + np.float64(scale2) * np.float64(second)
             + np.float64(scale3) * np.float64(third))
    return base + np.float32(total)


@njit(inline="always")
def _plane_scales(int_params, query, plane):
    # (scale2, scale3) of a query; zeros without planes.
    if plane > 0:
        return int_params[query, 3], int_params[query, 4]
    return np.float32(0.0), np.float32(0.0)


@njit(inline="always")
def _plane_width(int_weights, bits):
    # Columns per plane of the integer weights; 0 without planes.
    if _n_planes(int_weights, bits) == 1:
        return 0
    return int_weights.shape[1] // simd.SQ4_PLANES


@njit(inline="always")
def _any_may_pass(metric, base, int_scale, margin, q_sq, worst, dots, aux_values):
    """Whether any of four rows' distance lower bounds (integer dots
    ``dots``, see :func:`_scan_list`) passes ``worst``."""
    passes = False
    for member in range(4):
        approx = base + int_scale * np.float32(dots[member])
        lower = _distance_lower_bound(metric, approx, margin, q_sq, aux_values[member])
        passes |= lower <= worst
    return passes


@njit(inline="always")
def _scan_list(
    w, base, q_sq, lst, codes, ids, aux, list_offsets, list_sizes, metric, bits,
    keep_words, use_filter, emit_rows, heap_d, heap_i, int_weights, int_params, query,
    handler, radius, position,
):
    """Hand the vectors of list ``lst`` that pass the threshold to a handler.

    A vector scores ``base + w . u``; see :func:`scan_lists`. With integer
    weights (row ``query`` of ``int_weights``, see :mod:`ivfsq.backends.cpu.simd`),
    the integer dot ``scale * (w8 . u)`` first gives a lower bound of the
    distance (``int_params[query] = (scale, error bound above, error bound
    below)``, see :func:`_int_weights_row`; the bound above serves here);
    only vectors whose bound passes are scored exactly
    (:func:`_plane_score` or :func:`_exact_score`). On rows of at most
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
    n_chunks = _n_int_chunks(int_weights, bits)
    # The threshold, in a register: most candidates lose to it.
    worst = heap_d[0] if handler == HANDLE_TOPK else radius
    start = list_offsets[lst]
    stop = start + list_sizes[lst]
    plane = _plane_width(int_weights, bits)
    int_scale = margin = scale2 = scale3 = np.float32(0.0)
    if n_chunks > 0:
        int_scale = int_params[query, 0]
        margin = _int_margin(int_params, query, base)
        scale2, scale3 = _plane_scales(int_params, query, plane)
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
            if first == row and not _any_may_pass(
                    metric, base, int_scale, margin, q_sq, worst, dots,
                    (aux[first], aux[first + 1], aux[first + 2], aux[first + 3])):
                # The common case: one branch for the block (1.2x faster
                # than a branch per row, 1M x 128 at 1 probe).
                row = first + 4
                continue
        elif n_chunks > 0:
            dot = _int_dot(codes, first, int_weights, query, n_chunks, bits)
            dots = (dot, dot, dot, dot)
        else:
            dots = (np.int32(0), np.int32(0), np.int32(0), np.int32(0))
        for member in range(row - first, n_block):
            current = first + member
            if use_filter and not _is_kept(keep_words, ids[current]):
                continue
            if n_chunks > 0:
                dot = dots[member]
                approx = base + int_scale * np.float32(dot)
                if _distance_lower_bound(metric, approx, margin, q_sq, aux[current]) > worst:
                    continue
                if plane > 0:
                    s = _plane_score(
                        base, int_scale, scale2, scale3, dot,
                        simd.dot_nibbles_at(codes, current, int_weights, query, n_chunks, plane),
                        simd.dot_nibbles_at(codes, current, int_weights, query, n_chunks,
                                            2 * plane),
                    )
                else:
                    s = _exact_score(w, base, codes, current, bits, code_size)
            else:
                s = _exact_score(w, base, codes, current, bits, code_size)
            dist = _score_to_distance(metric, s, q_sq, aux[current])
            if dist <= worst:
                key = current if emit_rows else ids[current]
                if handler == HANDLE_TOPK:
                    if _greater(heap_d[0], heap_i[0], dist, key):
                        _heap_push_replace(heap_d, heap_i, k, dist, key)
                        worst = heap_d[0]
                else:
                    if position < k:
                        heap_d[position] = dist
                        heap_i[position] = key
                    position += 1
        row = first + n_block
    return position


@njit(fastmath=_FAST, **_JIT)
def scan_lists(
    probes,
    list_consts,
    weights,
    query_sq_norms,
    codes,
    ids,
    aux,
    list_offsets,
    list_sizes,
    metric,
    bits,
    keep_words,
    use_filter,
    emit_rows,
    int_weights,
    int_params,
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
    query ``i``'s integer weights (see :func:`_scan_list`), and each query's
    first list is scanned in two phases (:func:`_scan_list_bounded`) where
    :func:`two_phase_pays`; the results are the same.
    """
    n_queries, n_probes = probes.shape
    bounded = _n_int_chunks(int_weights, bits) > 0
    lowers = np.empty(0, dtype=np.float32)
    uppers = np.empty(0, dtype=np.float32)
    row_dots = np.empty(0, dtype=np.int32)
    counts = np.empty(HISTOGRAM_BUCKETS, dtype=np.int64)
    for i in range(n_queries):
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        _heap_init(heap_d, heap_i)
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
                _scan_list(
                    weights[i], list_consts[i, p], query_sq_norms[i], lst, codes, ids, aux,
                    list_offsets, list_sizes, metric, bits, keep_words, use_filter,
                    emit_rows, heap_d, heap_i, int_weights, int_params, i,
                    HANDLE_TOPK, np.float32(0.0), 0,
                )
        _heap_sort(heap_d, heap_i, heap_d.shape[0])


@njit(fastmath=_FAST, **_JIT)
def range_lists(
    probes, list_consts, weights, query_sq_norms, codes, ids, aux, list_offsets, list_sizes,
    metric, bits, keep_words, use_filter, int_weights, int_params, radius,
):
    """:func:`scan_lists` with the range handler: every vector of the probed
    lists whose distance is ``<= radius``.

    Returns per-query counts and the ids and distances, query by query, in
    scan order. Results go into a buffer that doubles when a query
    overflows it (that query is then scanned again).
    """
    n_queries, n_probes = probes.shape
    counts = np.zeros(n_queries, dtype=np.int64)
    found_d = np.empty(4096, dtype=np.float32)
    found_i = np.empty(4096, dtype=np.int64)
    used = 0
    for i in range(n_queries):
        while True:
            position = used
            for p in range(n_probes):
                position = _scan_list(
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


# ------------------------------------------------------- list-major batches
@njit(inline="always")
def _push(heap_d, heap_i, query, k, dist, key):
    """Push (dist, key) into query's max-heap if it beats the root; the new root."""
    if _greater(heap_d[query, 0], heap_i[query, 0], dist, key):
        _sift_down(heap_d[query], heap_i[query], k, dist, key)
    return heap_d[query, 0]


@njit(inline="always")
def _offer_exact(heap_d, heap_i, query, k, metric, base, weights, codes, row, bits, q_sq,
                 aux_value, key, worst):
    """Score a vector exactly (float weights) and push it if it wins; the new worst."""
    score = _exact_score(weights[query], base, codes, row, bits, codes.shape[1])
    dist = _score_to_distance(metric, score, q_sq, aux_value)
    if dist <= worst:
        return _push(heap_d, heap_i, query, k, dist, key)
    return worst


@njit(inline="always")
def _offer_score(heap_d, heap_i, query, k, metric, score, q_sq, aux_value, key, worst):
    """Push a vector of this exact score if it wins; the new worst. (Not
    called by :func:`_offer_exact`: each level of inlined helpers that
    passes the heaps on counts references to them once more.)"""
    dist = _score_to_distance(metric, score, q_sq, aux_value)
    if dist <= worst:
        return _push(heap_d, heap_i, query, k, dist, key)
    return worst


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
def _score_bounded(w, heap_d, heap_i, k, metric, base, codes, bits, start, n_rows, q_sq, aux,
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
    of ``int_weights`` (see :func:`_plane_score`)."""
    cutoff = np.float32(np.inf)
    if n_rows >= k:
        cutoff = _kth_smallest_cover(uppers, n_rows, k, counts)
    worst = min(heap_d[0], cutoff)
    n_chunks = _n_int_chunks(int_weights, bits)
    plane = _plane_width(int_weights, bits)
    scale = int_params[query, 0]
    scale2, scale3 = _plane_scales(int_params, query, plane)
    code_size = codes.shape[1]
    for r in range(n_rows):
        # Rows the filter skipped have infinite bounds, which an empty
        # heap's root (+inf) would not rule out.
        if lowers[r] <= worst and lowers[r] < np.inf:
            row = start + r
            if plane > 0:
                score = _plane_score(
                    base, scale, scale2, scale3, dots[r],
                    simd.dot_nibbles_at(codes, row, int_weights, query, n_chunks, plane),
                    simd.dot_nibbles_at(codes, row, int_weights, query, n_chunks, 2 * plane),
                )
            else:
                score = _exact_score(w, base, codes, row, bits, code_size)
            dist = _score_to_distance(metric, score, q_sq, aux[row])
            if dist <= heap_d[0]:
                key = row if emit_rows else ids[row]
                if _greater(heap_d[0], heap_i[0], dist, key):
                    _heap_push_replace(heap_d, heap_i, k, dist, key)
                worst = min(heap_d[0], cutoff)


@njit(inline="always")
def two_phase_pays(k, code_size, n_rows):
    """Whether a first list of ``n_rows`` rows is worth two phases: they save
    exact scores (about 2k of them, each reading ``code_size`` bytes) and
    cost a few nanoseconds per row. On fashion-mnist (60-row lists, 392-
    and 784-byte rows, k = 10) they took a quarter off the first lists'
    scan; on 1M x 128 (980-row lists of 128 bytes) single queries were no
    faster."""
    return k * code_size >= TWO_PHASE_MIN_RATIO * n_rows


@njit(inline="always")
def _scan_list_bounded(
    w, base, q_sq, lst, codes, ids, aux, list_offsets, list_sizes, metric, bits, keep_words,
    use_filter, emit_rows, heap_d, heap_i, int_weights, int_params, query, lowers, uppers,
    counts, dots,
):
    """:func:`_scan_list` (top-k, integer filter on) in two phases: the
    bounds of every row, then :func:`_score_bounded`. For a query's first
    list, where its heap starts empty. ``lowers``, ``uppers`` and ``dots``
    (int32) are workspaces of at least the list's length."""
    n_chunks = _n_int_chunks(int_weights, bits)
    start = list_offsets[lst]
    n_rows = list_sizes[lst]
    scale = int_params[query, 0]
    margin = _int_margin(int_params, query, base)
    below = _int_margin_below(int_params, query, base)
    for r in range(n_rows):
        row = start + r
        if use_filter and not _is_kept(keep_words, ids[row]):
            lowers[r] = np.inf
            uppers[r] = np.inf
            continue
        dot = _int_dot(codes, row, int_weights, query, n_chunks, bits)
        dots[r] = dot
        approx = base + scale * np.float32(dot)
        lowers[r] = _distance_lower_bound(metric, approx, margin, q_sq, aux[row])
        uppers[r] = _distance_upper_bound(metric, approx, below, q_sq, aux[row])
    _score_bounded(w, heap_d, heap_i, heap_d.shape[0], metric, base, codes, bits, start, n_rows,
                   q_sq, aux, ids, emit_rows, lowers, uppers, counts, int_weights, int_params,
                   query, dots)


@njit(inline="always")
def _block_members(pair_queries, pair_consts, query_sq_norms, block, n_block):
    """The query rows, list constants and ``|q|^2`` of a block of up to four
    pairs of one list; missing members repeat the first."""
    q0 = pair_queries[block]
    q1 = pair_queries[block + 1] if n_block > 1 else q0
    q2 = pair_queries[block + 2] if n_block > 2 else q0
    q3 = pair_queries[block + 3] if n_block > 3 else q0
    c0 = pair_consts[block]
    c1 = pair_consts[block + 1] if n_block > 1 else c0
    c2 = pair_consts[block + 2] if n_block > 2 else c0
    c3 = pair_consts[block + 3] if n_block > 3 else c0
    return (
        (q0, q1, q2, q3),
        (c0, c1, c2, c3),
        (query_sq_norms[q0], query_sq_norms[q1], query_sq_norms[q2], query_sq_norms[q3]),
    )


@njit(fastmath=_FAST, **_JIT)
def scan_lists_grouped(
    lists_to_scan,
    pair_offsets,
    pair_queries,
    pair_consts,
    weights,
    query_sq_norms,
    codes,
    ids,
    aux,
    list_offsets,
    list_sizes,
    metric,
    bits,
    keep_words,
    use_filter,
    emit_rows,
    int_weights,
    int_params,
    heap_distances,
    heap_ids,
):
    """List-major scan of a batch: each list is read once for all its queries.

    The (query, probe) pairs are grouped by list: list ``l``'s pairs are
    ``pair_offsets[l] .. pair_offsets[l + 1]`` of ``pair_queries`` (query
    rows) and ``pair_consts`` (their list constants). For each list of
    ``lists_to_scan``, blocks of four of its queries are scored together
    against every vector. Scores, distances, filtering and the integer
    weights (``int_*``, rows indexed like ``weights``) are those of
    :func:`scan_lists`. Results go into the max-heaps ``heap_*`` (one row per
    query, initialised by the caller, left unsorted).
    """
    k = heap_distances.shape[1]
    code_size = codes.shape[1]
    n_chunks = _n_int_chunks(int_weights, bits)
    plane = _plane_width(int_weights, bits)
    for li in range(lists_to_scan.shape[0]):
        lst = lists_to_scan[li]
        first = pair_offsets[lst]
        last = pair_offsets[lst + 1]
        start = list_offsets[lst]
        stop = start + list_sizes[lst]
        for block in range(first, last, 4):
            n_block = min(4, last - block)
            if n_block < 4 and n_chunks > 0:
                # The last one to three queries: each scans the list alone
                # (four rows per integer dot call where rows are short)
                # rather than in a block padded with copies of the first.
                for member in range(block, last):
                    query = pair_queries[member]
                    _scan_list(
                        weights[query], pair_consts[member], query_sq_norms[query], lst, codes,
                        ids, aux, list_offsets, list_sizes, metric, bits, keep_words,
                        use_filter, emit_rows, heap_distances[query], heap_ids[query],
                        int_weights, int_params, query, HANDLE_TOPK, np.float32(0.0), 0,
                    )
                continue
            # Missing block members repeat the first query; their scores are dropped.
            (q0, q1, q2, q3), (c0, c1, c2, c3), (sq0, sq1, sq2, sq3) = _block_members(
                pair_queries, pair_consts, query_sq_norms, block, n_block
            )
            # Each member's current k-th distance, kept in registers: most
            # candidates lose to it, and only winners touch the heap.
            # Missing members get -inf, which no distance beats.
            worst0 = heap_distances[q0, 0]
            worst1 = heap_distances[q1, 0] if n_block > 1 else -np.inf
            worst2 = heap_distances[q2, 0] if n_block > 2 else -np.inf
            worst3 = heap_distances[q3, 0] if n_block > 3 else -np.inf
            low0, high0 = weights[q0, :code_size], weights[q0, code_size:]
            low1, high1 = weights[q1, :code_size], weights[q1, code_size:]
            low2, high2 = weights[q2, :code_size], weights[q2, code_size:]
            low3, high3 = weights[q3, :code_size], weights[q3, code_size:]
            scale0 = scale1 = scale2 = scale3 = np.float32(0.0)
            margin0 = margin1 = margin2 = margin3 = np.float32(0.0)
            if n_chunks > 0:
                scale0, margin0 = int_params[q0, 0], _int_margin(int_params, q0, c0)
                scale1, margin1 = int_params[q1, 0], _int_margin(int_params, q1, c1)
                scale2, margin2 = int_params[q2, 0], _int_margin(int_params, q2, c2)
                scale3, margin3 = int_params[q3, 0], _int_margin(int_params, q3, c3)
            # The other planes' scales (4-bit codes with int8 weights).
            planes0 = _plane_scales(int_params, q0, plane)
            planes1 = _plane_scales(int_params, q1, plane)
            planes2 = _plane_scales(int_params, q2, plane)
            planes3 = _plane_scales(int_params, q3, plane)
            for row in range(start, stop):
                if use_filter and not _is_kept(keep_words, ids[row]):
                    continue
                aux_value = aux[row]
                if n_chunks > 0:
                    # Integer dots bound the distances; the few vectors the
                    # bound cannot rule out are scored exactly.
                    if bits == 8:
                        d0, d1, d2, d3 = simd.dots4_bytes(
                            codes, row, int_weights, (q0, q1, q2, q3), n_chunks
                        )
                    else:
                        d0, d1, d2, d3 = simd.dots4_nibbles(
                            codes, row, int_weights, (q0, q1, q2, q3), n_chunks
                        )
                    pass0 = _distance_lower_bound(
                        metric, c0 + scale0 * np.float32(d0), margin0, sq0, aux_value
                    ) <= worst0
                    pass1 = _distance_lower_bound(
                        metric, c1 + scale1 * np.float32(d1), margin1, sq1, aux_value
                    ) <= worst1
                    pass2 = _distance_lower_bound(
                        metric, c2 + scale2 * np.float32(d2), margin2, sq2, aux_value
                    ) <= worst2
                    pass3 = _distance_lower_bound(
                        metric, c3 + scale3 * np.float32(d3), margin3, sq3, aux_value
                    ) <= worst3
                    # (Bitwise: one branch, where ``or`` took four.)
                    if not (pass0 | pass1 | pass2 | pass3):
                        continue
                    key = row if emit_rows else ids[row]
                    # Written out per member: a helper that took the arrays
                    # would count references to them on every call (see
                    # _plane_score).
                    if pass0 and plane > 0:
                        score = _plane_score(
                            c0, scale0, planes0[0], planes0[1], d0,
                            simd.dot_nibbles_at(codes, row, int_weights, q0, n_chunks, plane),
                            simd.dot_nibbles_at(codes, row, int_weights, q0, n_chunks,
                                                2 * plane),
                        )
                        worst0 = _offer_score(heap_distances, heap_ids, q0, k, metric, score,
                                              sq0, aux_value, key, worst0)
                    elif pass0:
                        worst0 = _offer_exact(heap_distances, heap_ids, q0, k, metric, c0,
                                              weights, codes, row, bits, sq0, aux_value, key,
                                              worst0)
                    if pass1 and plane > 0:
                        score = _plane_score(
                            c1, scale1, planes1[0], planes1[1], d1,
                            simd.dot_nibbles_at(codes, row, int_weights, q1, n_chunks, plane),
                            simd.dot_nibbles_at(codes, row, int_weights, q1, n_chunks,
                                                2 * plane),
                        )
                        worst1 = _offer_score(heap_distances, heap_ids, q1, k, metric, score,
                                              sq1, aux_value, key, worst1)
                    elif pass1:
                        worst1 = _offer_exact(heap_distances, heap_ids, q1, k, metric, c1,
                                              weights, codes, row, bits, sq1, aux_value, key,
                                              worst1)
                    if pass2 and plane > 0:
                        score = _plane_score(
                            c2, scale2, planes2[0], planes2[1], d2,
                            simd.dot_nibbles_at(codes, row, int_weights, q2, n_chunks, plane),
                            simd.dot_nibbles_at(codes, row, int_weights, q2, n_chunks,
                                                2 * plane),
                        )
                        worst2 = _offer_score(heap_distances, heap_ids, q2, k, metric, score,
                                              sq2, aux_value, key, worst2)
                    elif pass2:
                        worst2 = _offer_exact(heap_distances, heap_ids, q2, k, metric, c2,
                                              weights, codes, row, bits, sq2, aux_value, key,
                                              worst2)
                    if pass3 and plane > 0:
                        score = _plane_score(
                            c3, scale3, planes3[0], planes3[1], d3,
                            simd.dot_nibbles_at(codes, row, int_weights, q3, n_chunks, plane),
                            simd.dot_nibbles_at(codes, row, int_weights, q3, n_chunks,
                                                2 * plane),
                        )
                        worst3 = _offer_score(heap_distances, heap_ids, q3, k, metric, score,
                                              sq3, aux_value, key, worst3)
                    elif pass3:
                        worst3 = _offer_exact(heap_distances, heap_ids, q3, k, metric, c3,
                                              weights, codes, row, bits, sq3, aux_value, key,
                                              worst3)
                    continue
                # Float path: each code byte is loaded and converted once for
                # the four queries (the reuse a GEMM gets from blocking).
                s0 = s1 = s2 = s3 = np.float32(0.0)
                if bits == 8:
                    for j in range(code_size):
                        code = np.float32(codes[row, j])
                        s0 += low0[j] * code
                        s1 += low1[j] * code
                        s2 += low2[j] * code
                        s3 += low3[j] * code
                else:
                    # Low nibbles meet the first half of the weights, high
                    # nibbles the second; int32 keeps the conversions vectorised.
                    for j in range(code_size):
                        byte = np.int32(codes[row, j])
                        low = np.float32(byte & np.int32(15))
                        high = _high_nibble(byte)
                        s0 += low0[j] * low + high0[j] * high
                        s1 += low1[j] * low + high1[j] * high
                        s2 += low2[j] * low + high2[j] * high
                        s3 += low3[j] * low + high3[j] * high
                dist0 = _score_to_distance(metric, c0 + s0, sq0, aux_value)
                dist1 = _score_to_distance(metric, c1 + s1, sq1, aux_value)
                dist2 = _score_to_distance(metric, c2 + s2, sq2, aux_value)
                dist3 = _score_to_distance(metric, c3 + s3, sq3, aux_value)
                if dist0 > worst0 and dist1 > worst1 and dist2 > worst2 and dist3 > worst3:
                    continue
                key = row if emit_rows else ids[row]
                if dist0 <= worst0:
                    worst0 = _push(heap_distances, heap_ids, q0, k, dist0, key)
                if dist1 <= worst1:
                    worst1 = _push(heap_distances, heap_ids, q1, k, dist1, key)
                if dist2 <= worst2:
                    worst2 = _push(heap_distances, heap_ids, q2, k, dist2, key)
                if dist3 <= worst3:
                    worst3 = _push(heap_distances, heap_ids, q3, k, dist3, key)


@njit(fastmath=_FAST, **_JIT)
def scan_first_lists_grouped(
    lists_to_scan,
    pair_offsets,
    pair_queries,
    pair_consts,
    weights,
    query_sq_norms,
    codes,
    ids,
    aux,
    list_offsets,
    list_sizes,
    metric,
    bits,
    keep_words,
    use_filter,
    emit_rows,
    int_weights,
    int_params,
    heap_distances,
    heap_ids,
):
    """:func:`scan_lists_grouped` (same arguments) for lists that are their
    queries' first, the heaps still empty, with the integer filter on.

    Each block of four queries takes every row's bounds first, then each
    query scores exactly only the rows they leave in
    (:func:`_score_bounded`). A separate kernel: inside
    :func:`scan_lists_grouped` this code made the scan of the other lists
    slower (SQ8 on fashion-mnist, 16-32 probes).
    """
    k = heap_distances.shape[1]
    n_chunks = _n_int_chunks(int_weights, bits)
    longest = 0
    for li in range(lists_to_scan.shape[0]):
        longest = max(longest, list_sizes[lists_to_scan[li]])
    lowers = np.empty((4, longest), dtype=np.float32)
    uppers = np.empty((4, longest), dtype=np.float32)
    row_dots = np.empty((4, longest), dtype=np.int32)
    counts = np.empty(HISTOGRAM_BUCKETS, dtype=np.int64)
    for li in range(lists_to_scan.shape[0]):
        lst = lists_to_scan[li]
        first = pair_offsets[lst]
        last = pair_offsets[lst + 1]
        start = list_offsets[lst]
        n_rows = list_sizes[lst]
        for block in range(first, last, 4):
            n_block = min(4, last - block)
            # Missing block members repeat the first query; their bounds go unused.
            (q0, q1, q2, q3), (c0, c1, c2, c3), (sq0, sq1, sq2, sq3) = _block_members(
                pair_queries, pair_consts, query_sq_norms, block, n_block
            )
            scale0, scale1 = int_params[q0, 0], int_params[q1, 0]
            scale2, scale3 = int_params[q2, 0], int_params[q3, 0]
            above0, below0 = _int_margin(int_params, q0, c0), _int_margin_below(int_params, q0, c0)
            above1, below1 = _int_margin(int_params, q1, c1), _int_margin_below(int_params, q1, c1)
            above2, below2 = _int_margin(int_params, q2, c2), _int_margin_below(int_params, q2, c2)
            above3, below3 = _int_margin(int_params, q3, c3), _int_margin_below(int_params, q3, c3)
            for r in range(n_rows):
                row = start + r
                if use_filter and not _is_kept(keep_words, ids[row]):
                    for m in range(4):
                        lowers[m, r] = np.inf
                        uppers[m, r] = np.inf
                    continue
                aux_value = aux[row]
                if bits == 8:
                    d0, d1, d2, d3 = simd.dots4_bytes(
                        codes, row, int_weights, (q0, q1, q2, q3), n_chunks
                    )
                else:
                    d0, d1, d2, d3 = simd.dots4_nibbles(
                        codes, row, int_weights, (q0, q1, q2, q3), n_chunks
                    )
                row_dots[0, r], row_dots[1, r], row_dots[2, r], row_dots[3, r] = d0, d1, d2, d3
                a0 = c0 + scale0 * np.float32(d0)
                a1 = c1 + scale1 * np.float32(d1)
                a2 = c2 + scale2 * np.float32(d2)
                a3 = c3 + scale3 * np.float32(d3)
                lowers[0, r] = _distance_lower_bound(metric, a0, above0, sq0, aux_value)
                lowers[1, r] = _distance_lower_bound(metric, a1, above1, sq1, aux_value)
                lowers[2, r] = _distance_lower_bound(metric, a2, above2, sq2, aux_value)
                lowers[3, r] = _distance_lower_bound(metric, a3, above3, sq3, aux_value)
                uppers[0, r] = _distance_upper_bound(metric, a0, below0, sq0, aux_value)
                uppers[1, r] = _distance_upper_bound(metric, a1, below1, sq1, aux_value)
                uppers[2, r] = _distance_upper_bound(metric, a2, below2, sq2, aux_value)
                uppers[3, r] = _distance_upper_bound(metric, a3, below3, sq3, aux_value)
            for m in range(n_block):
                q = pair_queries[block + m]
                _score_bounded(
                    weights[q], heap_distances[q], heap_ids[q], k, metric, pair_consts[block + m],
                    codes, bits, start, n_rows, query_sq_norms[q], aux, ids, emit_rows,
                    lowers[m], uppers[m], counts, int_weights, int_params, q, row_dots[m],
                )


@njit(**_JIT)
def init_heaps(heap_distances, heap_ids):
    """Every row an empty max-heap: (+inf, -1)."""
    for i in range(heap_distances.shape[0]):
        _heap_init(heap_distances[i], heap_ids[i])


# ------------------------------------------------------------------ re-rank
@njit(inline="always")
def _exact_distance(query, vector, metric):
    """Exact distance (float64 accumulation) of two float32 vectors.

    Squared L2, negated inner product, or ``1 - q.x / |x|`` for cosine (the
    query is normalized; a zero vector gives 1).
    """
    acc = 0.0
    if metric == METRIC_L2:
        for j in range(query.shape[0]):
            diff = np.float64(query[j]) - np.float64(vector[j])
            acc += diff * diff
        return acc
    if metric == METRIC_IP:
        for j in range(query.shape[0]):
            acc += np.float64(query[j]) * np.float64(vector[j])
        return -acc
    sq_norm = 0.0
    for j in range(query.shape[0]):
        x = np.float64(vector[j])
        acc += np.float64(query[j]) * x
        sq_norm += x * x
    if sq_norm == 0.0:
        return 1.0
    return 1.0 - acc / np.sqrt(sq_norm)


@njit(**_JIT)
def rerank_rows(
    queries, precise, precise_half_bits, half_table, candidate_rows, ids, metric,
    out_distances, out_ids,
):
    """Exact top-k of each query over its candidate storage rows.

    The precise store is either ``precise`` (float32, one row per storage
    row) or, when that has no rows, ``precise_half_bits``: a float16 store
    given as its uint16 bit patterns, read through ``half_table[b]`` (the
    float32 value of the float16 with bits ``b``; numba has no float16
    arithmetic on the CPU). Rows < 0 are padding. Output ascending by
    (distance, id).
    """
    n_queries, n_candidates = candidate_rows.shape
    use_half = precise.shape[0] == 0
    dim = queries.shape[1]
    k = out_distances.shape[1]
    vector = np.empty(dim, dtype=np.float32)
    for i in range(n_queries):
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        _heap_init(heap_d, heap_i)
        for c in range(n_candidates):
            row = candidate_rows[i, c]
            if row < 0:
                continue
            if use_half:
                for j in range(dim):
                    vector[j] = half_table[precise_half_bits[row, j]]
                dist = _exact_distance(queries[i], vector, metric)
            else:
                dist = _exact_distance(queries[i], precise[row], metric)
            dist32 = np.float32(dist)
            vid = ids[row]
            if _greater(heap_d[0], heap_i[0], dist32, vid):
                _heap_push_replace(heap_d, heap_i, k, dist32, vid)
        _heap_sort(heap_d, heap_i, k)


@njit(fastmath=_FAST, **_JIT)
def range_exact(probes, precise_queries, ids, list_offsets, list_sizes, metric, keep_words,
                use_filter, radius, precise, precise_half_bits, half_table):
    """Range search of an index with a precise store: every vector of the
    probed lists whose exact distance (as :func:`rerank_rows` computes it,
    from ``precise`` or the float16 bits) is ``<= radius``.

    Like the re-rank, this scores precise rows rather than codes (no code
    distance bounds the exact one, so the code scan cannot pre-select).
    Returns per-query counts and the ids and distances, query by query.
    """
    n_queries, n_probes = probes.shape
    use_half = precise.shape[0] == 0
    dim = precise_queries.shape[1]
    vector = np.empty(dim, dtype=np.float32)
    counts = np.zeros(n_queries, dtype=np.int64)
    found_d = np.empty(4096, dtype=np.float32)
    found_i = np.empty(4096, dtype=np.int64)
    used = 0
    for i in range(n_queries):
        for p in range(n_probes):
            lst = probes[i, p]
            start = list_offsets[lst]
            for row in range(start, start + list_sizes[lst]):
                vid = ids[row]
                if use_filter and not _is_kept(keep_words, vid):
                    continue
                if use_half:
                    for j in range(dim):
                        vector[j] = half_table[precise_half_bits[row, j]]
                    dist = np.float32(_exact_distance(precise_queries[i], vector, metric))
                else:
                    dist = np.float32(_exact_distance(precise_queries[i], precise[row], metric))
                if dist > radius:
                    continue
                if used == found_d.shape[0]:
                    grown_d = np.empty(2 * used, dtype=np.float32)
                    grown_i = np.empty(2 * used, dtype=np.int64)
                    grown_d[:used] = found_d
                    grown_i[:used] = found_i
                    found_d = grown_d
                    found_i = grown_i
                found_d[used] = dist
                found_i[used] = vid
                used += 1
                counts[i] += 1
    return counts, found_i[:used].copy(), found_d[:used].copy()


@njit(**_JIT)
def merge_topk(candidate_distances, candidate_ids, first_is_heap, out_distances, out_ids):
    """Per row, the ascending top-k (by (distance, id)) of the candidates.

    Candidates with id -1 are padding and skipped. With ``first_is_heap``,
    each row's first k candidates already form a max-heap (a list-major
    part's unsorted heap), which becomes the starting heap: only the other
    candidates are pushed (half the work when merging two parts).
    """
    n_rows, n_candidates = candidate_ids.shape
    k = out_distances.shape[1]
    for i in range(n_rows):
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        first = 0
        if first_is_heap:
            for j in range(k):
                heap_d[j] = candidate_distances[i, j]
                heap_i[j] = candidate_ids[i, j]
            first = k
        else:
            _heap_init(heap_d, heap_i)
        for j in range(first, n_candidates):
            vid = candidate_ids[i, j]
            if vid < 0:
                continue
            dist = candidate_distances[i, j]
            if _greater(heap_d[0], heap_i[0], dist, vid):
                _heap_push_replace(heap_d, heap_i, k, dist, vid)
        _heap_sort(heap_d, heap_i, k)


@njit(inline="always")
def _n_select_groups(n_values, n_select, ratio):
    """Groups of the selection's first cut (:func:`_group_minima`) when
    ``n_select`` of ``n_values`` are wanted: ``SELECT_GROUP`` values each
    where that leaves ``ratio`` groups per selected value, else one value
    each."""
    n_groups = -(-n_values // SELECT_GROUP)
    return n_groups if n_groups >= ratio * n_select else n_values


@njit(inline="always")
def _selection_workspace(n_values, n_select):
    """Buffers of a selection: the values (room for whole groups, the
    padding +inf), their group minima, a heap of ``n_select``, and sort keys
    (:func:`_select_by_keys`)."""
    values = np.full(SELECT_GROUP * -(-n_values // SELECT_GROUP), np.inf, dtype=np.float32)
    minima = np.empty(n_values, dtype=np.float32)
    seed_d = np.empty(n_select, dtype=np.float32)
    return values, minima, seed_d, np.empty(n_select, np.int64), np.empty(n_values, np.int64)


@njit(inline="always")
def _ordered_bits(bits):
    """int32 ordered as the float32 whose bits these are: +0.0 and -0.0
    both 0, NaN above +inf."""
    if (bits & np.int32(0x7FFFFFFF)) > np.int32(0x7F800000):
        return np.int32(0x7F800001)
    ordered = bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF))
    return np.int32(0) if ordered == np.int32(-1) else ordered


@njit(inline="always")
def _partition_smallest(keys, n, p):
    """Reorder ``keys[:n]`` (distinct) so that ``keys[:p]`` are the ``p``
    smallest: quickselect with a median-of-three pivot. False when it gives
    up after 64 rounds (no quadratic worst case: the caller sorts)."""
    low = 0
    high = n - 1
    rounds = 0
    while high > low:
        rounds += 1
        if rounds > 64:
            return False
        a, b, c = keys[low], keys[(low + high) >> 1], keys[high]
        pivot = max(min(a, b), min(max(a, b), c))
        i = low
        j = high
        while i <= j:
            while keys[i] < pivot:
                i += 1
            while keys[j] > pivot:
                j -= 1
            if i <= j:
                keys[i], keys[j] = keys[j], keys[i]
                i += 1
                j -= 1
        # keys[low..j] <= pivot <= keys[i..high], and any between equal it.
        if p - 1 <= j:
            high = j
        elif p - 1 >= i:
            low = i
        else:
            break
    return True


@njit(inline="always")
def _select_by_keys(scores, n_values, heap_d, heap_i, keys):
    """The ``p`` smallest ``(score, index)`` of ``scores[:n_values]``, in
    order, into ``heap_*`` (``p`` their length): one int64 key per value
    (ordered score bits, then the index), a quickselect (a sort where it
    gives up) and a sort of the first ``p``. Where ``p`` is more than a
    thirty-second of the values this beats a heap over every value:
    pypi-minilm's 512 lists, 64-128 probes, 7-11 us per query instead of
    13-25; fashion-mnist's 1,024 lists, 128 probes, 12 us instead of 26."""
    p = heap_d.shape[0]
    bits = scores.view(np.int32)
    for t in range(n_values):
        keys[t] = (np.int64(_ordered_bits(bits[t])) << 32) | t
    if not _partition_smallest(keys, n_values, p):
        keys[:n_values].sort()
    keys[:p].sort()
    for t in range(p):
        lst = keys[t] & 0xFFFFFFFF
        heap_i[t] = lst
        heap_d[t] = scores[lst]


@njit(inline="always")
def _group_minima(values, n_groups, out):
    """Group ``g`` holds ``values[g::n_groups]``: with ``SELECT_GROUP`` (8)
    of them, rows of groups, so that the minima vectorize (a loop over the
    members, storing into ``out`` each time, did not: 1-2 us per 1,024
    values instead of 0.1). ``values`` is padded to whole groups with
    +inf (:func:`_selection_workspace`)."""
    for g in range(n_groups):
        a = min(values[g], values[g + n_groups])
        b = min(values[g + 2 * n_groups], values[g + 3 * n_groups])
        c = min(values[g + 4 * n_groups], values[g + 5 * n_groups])
        d = min(values[g + 6 * n_groups], values[g + 7 * n_groups])
        out[g] = min(min(a, b), min(c, d))


@njit(inline="always")
def _groups_cover(group_minima, n_groups, seed_d, seed_i):
    """The ``p``-th smallest of the group minima (``p = seed_d.shape[0]``):
    at least ``p`` values lie at or below it, so it is at or above their
    ``p``-th smallest. A heap over the minima only: 8 times fewer pushes
    and compares than one over every value."""
    n_select = seed_d.shape[0]
    _heap_init(seed_d, seed_i)
    cover = seed_d[0]
    for g in range(n_groups):
        if group_minima[g] < cover:
            _heap_push_replace(seed_d, seed_i, n_select, group_minima[g], g)
            cover = seed_d[0]
    return cover


@njit(fastmath=_FAST, **_JIT)
def _select_row(dots, center_sq_norms, use_l2, heap_d, heap_i, workspace):
    # Only the lists at or below the groups' cover can be among the best,
    # and only those are offered to the heap (1-2 x n_probes of them
    # instead of every list). ``workspace``: _selection_workspace's. A
    # function of its own, not inlined: inlined into the three kernels that
    # select probes, it added about 10 s to their first compile. (fastmath
    # leaves the scores as they were: 2 * dot is exact, so the fused
    # multiply-add rounds once, as the subtraction did.)
    scores, group_minima, seed_d, seed_i, keys = workspace
    n_lists = dots.shape[0]
    n_probes = heap_d.shape[0]
    for lst in range(n_lists):
        if use_l2:
            scores[lst] = center_sq_norms[lst] - np.float32(2.0) * dots[lst]
        else:
            scores[lst] = -dots[lst]
    n_groups = _n_select_groups(n_lists, n_probes, SELECT_RATIO_EXACT)
    if n_groups == n_lists:
        # Too few lists for groups.
        _select_by_keys(scores, n_lists, heap_d, heap_i, keys)
        return
    _heap_init(heap_d, heap_i)
    _group_minima(scores, n_groups, group_minima)
    cover = _groups_cover(group_minima, n_groups, seed_d, seed_i)
    for g in range(n_groups):
        if group_minima[g] <= cover:
            for lst in range(g, n_lists, n_groups):
                score = scores[lst]
                if score <= cover and _greater(heap_d[0], heap_i[0], score, lst):
                    _heap_push_replace(heap_d, heap_i, n_probes, score, lst)
    _heap_sort(heap_d, heap_i, n_probes)


@njit(**_JIT)
def select_probes(dots, center_sq_norms, use_l2, out_scores, out_lists):
    """Per query, the lists with the best coarse scores, best first.

    The score of list ``l`` is ``|c_l|^2 - 2 q.c_l`` (L2) or ``-q.c_l``;
    ties go to the lower list number.
    """
    workspace = _selection_workspace(dots.shape[1], out_scores.shape[1])
    for i in range(dots.shape[0]):
        _select_row(dots[i], center_sq_norms, use_l2, out_scores[i], out_lists[i], workspace)


@njit(**_JIT)
def normalize_rows(vectors, nonzero):
    """Scale rows to unit L2 norm in place (norms summed in float64).

    Zero rows stay zero; ``nonzero[i]`` says whether row ``i`` was nonzero.
    """
    n_rows, dim = vectors.shape
    for i in range(n_rows):
        total = 0.0
        for j in range(dim):
            total += np.float64(vectors[i, j]) * np.float64(vectors[i, j])
        nonzero[i] = total > 0.0
        if total > 0.0:
            norm = np.float32(np.sqrt(total))
            for j in range(dim):
                vectors[i, j] = vectors[i, j] / norm


@njit(fastmath=_FAST, **_JIT)
def select_probes_small(queries, centers, center_sq_norms, use_l2, out_scores, out_lists):
    """:func:`select_probes` computing the dots itself, for a few queries.

    For one query a BLAS call and its dispatch cost more than the dot
    products themselves.
    """
    dots = np.empty(centers.shape[0], dtype=np.float32)
    workspace = _selection_workspace(centers.shape[0], out_scores.shape[1])
    for i in range(queries.shape[0]):
        _center_dots(queries[i], centers, dots)
        _select_row(dots, center_sq_norms, use_l2, out_scores[i], out_lists[i], workspace)


@njit(inline="always")
def _center_score(query, centers, center_sq_norms, lst, use_l2):
    dot = np.float32(0.0)
    for j in range(query.shape[0]):
        dot += query[j] * centers[lst, j]
    if use_l2:
        return center_sq_norms[lst] - np.float32(2.0) * dot
    return -dot


@njit(inline="always")
def _select_row_bounded(query, centers, center_sq_norms, use_l2, heap_d, heap_i, workspace):
    # ``workspace``'s values hold the lower bounds. The lists whose bounds
    # are at or below the groups' cover (at least n_probes of them, see
    # _groups_cover) are scored exactly first, which puts the n_probes-th
    # exact score near its final value; then every other list whose bound
    # could still beat it. Measured on fashion-mnist: scoring 2 x n_probes
    # first was 1.1-1.4x slower; a heap over every bound (for the first
    # ones) took 2.4-8.3 us per query at 4-32 probes.
    lower, group_minima, seed_d, seed_i, _ = workspace
    n_lists = centers.shape[0]
    n_probes = heap_d.shape[0]
    n_groups = _n_select_groups(n_lists, n_probes, SELECT_RATIO_BOUNDED)
    if n_groups == n_lists:
        group_minima = lower  # one list per group: the bounds themselves
    else:
        _group_minima(lower, n_groups, group_minima)
    cover = _groups_cover(group_minima, n_groups, seed_d, seed_i)
    _heap_init(heap_d, heap_i)
    for g in range(n_groups):
        if group_minima[g] <= cover:
            for lst in range(g, n_lists, n_groups):
                if lower[lst] <= cover:
                    score = _center_score(query, centers, center_sq_norms, lst, use_l2)
                    if _greater(heap_d[0], heap_i[0], score, lst):
                        _heap_push_replace(heap_d, heap_i, n_probes, score, lst)
    # The root, in a register while no push changes it.
    worst = heap_d[0]
    for g in range(n_groups):
        if group_minima[g] <= worst:
            for lst in range(g, n_lists, n_groups):
                if lower[lst] > cover and lower[lst] <= worst:
                    score = _center_score(query, centers, center_sq_norms, lst, use_l2)
                    if _greater(heap_d[0], heap_i[0], score, lst):
                        _heap_push_replace(heap_d, heap_i, n_probes, score, lst)
                        worst = heap_d[0]
    _heap_sort(heap_d, heap_i, n_probes)


@njit(fastmath=_FAST, **_JIT)
def bound_query_parts(queries, mean, projected_mean, inner_product, slack, slack_center,
                      slack_term, query_aug, out_terms):
    """Finish ``q_aug`` and the per-query bound terms (:mod:`ivfsq.ivf.coarse`).

    On entry ``query_aug[:, :r]`` holds ``q @ basis.T``; ``projected_mean``
    is ``mean @ basis.T``. Sums are in float64; the term has its slack
    ``slack * ((|q'| + slack_center)^2 + |term| + slack_term)`` taken off.
    fastmath lets the float64 sums vectorize; reordering them changes them
    by far less than the slack.
    """
    n_queries, dim = queries.shape
    rank = projected_mean.shape[0]
    for i in range(n_queries):
        centered_sq = 0.0
        query_sq = 0.0
        query_mean = 0.0
        for j in range(dim):
            x = np.float64(queries[i, j])
            m = np.float64(mean[j])
            centered_sq += (x - m) * (x - m)
            query_sq += x * x
            query_mean += x * m
        projected_sq = 0.0
        for j in range(rank):
            value = query_aug[i, j] - projected_mean[j]
            query_aug[i, j] = value
            projected_sq += np.float64(value) * np.float64(value)
        query_aug[i, rank] = np.sqrt(max(centered_sq - projected_sq, 0.0))
        term = -query_mean if inner_product else centered_sq - query_sq
        margin = np.sqrt(centered_sq) + slack_center
        out_terms[i] = term - slack * (margin * margin + abs(term) + slack_term)


@njit(fastmath=_FAST, **_JIT)
def select_probes_bounded(
    queries, centers, center_sq_norms, use_l2, bound_dots, query_terms, center_terms, scale,
    out_scores, out_lists,
):
    """:func:`select_probes` from lower bounds on the coarse scores.

    The bound of list ``l`` for query ``i`` is ``query_terms[i] +
    center_terms[l] + scale * bound_dots[i, l]`` (see :mod:`ivfsq.ivf.coarse`);
    lists are scored exactly (as :func:`select_probes_small` does) only
    while their bound could beat the ``n_probes``-th exact score, so the
    selection equals the exact one.
    """
    n_lists = centers.shape[0]
    workspace = _selection_workspace(n_lists, out_scores.shape[1])
    lower = workspace[0]
    for i in range(queries.shape[0]):
        term = query_terms[i]
        for lst in range(n_lists):
            lower[lst] = term + center_terms[lst] + scale * bound_dots[i, lst]
        _select_row_bounded(
            queries[i], centers, center_sq_norms, use_l2, out_scores[i], out_lists[i], workspace
        )


@njit(fastmath=_FAST, **_JIT)
def select_probes_bounded_few(
    queries, basis, mean, projected_mean, inner_product, slack, slack_center, slack_term,
    center_aug, center_terms, scale, centers, center_sq_norms, use_l2, out_scores, out_lists,
):
    """:func:`select_probes_bounded` for a few queries, bound included.

    The projection (``basis @ q``) and the bound's dots (``center_aug @
    q_aug``) that a batch gets from BLAS are loops here, so that a single
    query pays one dispatch; :func:`bound_query_parts` finishes ``q_aug``.
    """
    n_queries = queries.shape[0]
    rank = basis.shape[0]
    n_lists = center_aug.shape[0]
    query_aug = np.empty((n_queries, rank + 1), dtype=np.float32)
    for i in range(n_queries):
        for r in range(rank):
            total = np.float32(0.0)
            for j in range(queries.shape[1]):
                total += basis[r, j] * queries[i, j]
            query_aug[i, r] = total
    terms = np.empty(n_queries, dtype=np.float32)
    bound_query_parts(queries, mean, projected_mean, inner_product, slack, slack_center,
                      slack_term, query_aug, terms)
    bound_dots = np.empty((n_queries, n_lists), dtype=np.float32)
    for i in range(n_queries):
        for lst in range(n_lists):
            total = np.float32(0.0)
            for r in range(rank + 1):
                total += query_aug[i, r] * center_aug[lst, r]
            bound_dots[i, lst] = total
    select_probes_bounded(queries, centers, center_sq_norms, use_l2, bound_dots, terms,
                          center_terms, scale, out_scores, out_lists)


@njit(inline="always")
def _center_dots(query, centers, out):
    # Four centers per pass over the query: four independent sums in flight
    # (one at a time was 1.3x slower).
    n_centers, dim = centers.shape
    n_blocked = n_centers - n_centers % 4
    for lst in range(0, n_blocked, 4):
        c0 = centers[lst]
        c1 = centers[lst + 1]
        c2 = centers[lst + 2]
        c3 = centers[lst + 3]
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for j in range(dim):
            x = query[j]
            a0 += x * c0[j]
            a1 += x * c1[j]
            a2 += x * c2[j]
            a3 += x * c3[j]
        out[lst] = a0
        out[lst + 1] = a1
        out[lst + 2] = a2
        out[lst + 3] = a3
    for lst in range(n_blocked, n_centers):
        total = np.float32(0.0)
        for j in range(dim):
            total += query[j] * centers[lst, j]
        out[lst] = total


@njit(fastmath=_FAST, **_JIT)
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
    keep_words,
    use_filter,
    emit_rows,
    int_weights,
    given_probes,
    out_distances,
    out_ids,
):
    """The whole search of a few queries in one call, on one thread.

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
    workspace = _selection_workspace(centers.shape[0], n_probes)
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
        if given_probes.shape[0] > 0:
            for p in range(n_probes):
                probe_lists[p] = given_probes[i, p]
        else:
            _center_dots(query, centers, dots)
            _select_row(dots, center_sq_norms, use_l2, probe_scores, probe_lists, workspace)
        _weights_row(query, delta, bits, code_size, weights)
        if int_weights.shape[1] > 0:
            _int_weights_row(weights, bits, code_size, int_weights[0], levels, int_params[0])
        q_sq = np.float32(_dot64(query, query)) if use_l2 else np.float32(0.0)
        offset = _dot64(query, vmin)
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        _heap_init(heap_d, heap_i)
        for p in range(n_probes):
            lst = probe_lists[p]
            base = _list_constant(query, centers, lst, offset, by_residual)
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
            _scan_list(
                weights, base, q_sq, lst, codes, ids, aux, list_offsets, list_sizes, metric,
                bits, keep_words, use_filter, emit_rows, heap_d, heap_i, int_weights,
                int_params, 0, HANDLE_TOPK, np.float32(0.0), 0,
            )
        _heap_sort(heap_d, heap_i, heap_d.shape[0])


@njit(fastmath=_FAST, **_JIT)
def list_constants(queries, centers, probes, vmin, by_residual, use_l2, out, out_sq_norms):
    """``out[i, p] = q . c + q . vmin`` for each probed list (float64 sums),
    and ``out_sq_norms[i] = |q|^2`` for L2 (else 0), as :func:`search_few`
    computes them.

    ``q . c`` is recomputed for the probed lists only, so a query's
    constants do not depend on which other queries share its batch (BLAS
    blocking would); without residuals it is left out.
    """
    n_queries, n_probes = probes.shape
    for i in range(n_queries):
        query = queries[i]
        out_sq_norms[i] = np.float32(_dot64(query, query)) if use_l2 else np.float32(0.0)
        offset = _dot64(query, vmin)
        for p in range(n_probes):
            out[i, p] = _list_constant(query, centers, probes[i, p], offset, by_residual)


@njit(inline="always")
def _dot64(x, y):
    total = 0.0
    for j in range(x.shape[0]):
        total += np.float64(x[j]) * np.float64(y[j])
    return total


@njit(inline="always")
def _list_constant(query, centers, lst, offset, by_residual):
    # q . c + q . vmin (offset), summed in float64.
    if not by_residual:
        return np.float32(offset)
    return np.float32(offset + _dot64(query, centers[lst]))


@njit(inline="always")
def _weights_row(query, delta, bits, code_size, out):
    # 8 bits: q * delta. 4 bits: even dimensions' weights, then odd ones'
    # (``out`` zeroed by the caller: the padding dimension of an odd dim).
    dim = query.shape[0]
    if bits == 8:
        for j in range(dim):
            out[j] = query[j] * delta[j]
        return
    # Two stride-2 loops, which vectorize (a scatter by j's parity did not).
    for t in range(code_size):
        out[t] = query[2 * t] * delta[2 * t]
    for t in range(dim // 2):
        out[code_size + t] = query[2 * t + 1] * delta[2 * t + 1]


@njit(inline="always")
def _int_weights_row(weights, bits, code_size, out, levels, params):
    """One query's integer weights for :mod:`ivfsq.backends.cpu.simd` (its layout,
    in ``out``'s dtype: int8 or int16 for 4-bit codes, int16 for 8-bit) from
    its float weights (the :func:`query_weights` layout, ``code_size >=
    simd.CHUNK_BYTES[bits]``), and its ``params`` (``INT_PARAMS`` values).

    ``weights ~ scale * W1`` with ``|W1| <= simd.weight_limit(bits,
    code_size, out.dtype)``. ``params`` = (``scale``, a bound on how much
    the exact score can exceed ``scale * (W1 . u)`` for any codes ``u``,
    the same bound the other way, ``scale2``, ``scale3``).

    - int16 weights: the exact score is ``weights . u`` (float32); the
      bounds are the largest code times the summed positive (negative)
      rounding errors. ``scale2 = scale3 = 0``.
    - 4-bit codes, int8 weights: ``out`` holds ``simd.SQ4_PLANES`` planes
      one after the other, ``W2`` and ``W3`` the rounded residuals of the
      planes before them (scales ``scale2``, ``scale3``), and the exact
      score is ``scale W1.u + scale2 W2.u + scale3 W3.u``
      (:func:`_plane_score`); the bounds are 15 times the summed
      positive (negative) parts of ``scale2 W2 + scale3 W3``.

    Both bounds have a little more for float32 rounding in the scores.
    ``levels`` (float32, one per weight) is a workspace of the int16 case.
    """
    n_weights = weights.shape[0]
    planes = bits == 4 and out.itemsize == 1
    if bits == 4:
        if out.itemsize == 1:
            limit = np.float32(simd.SQ4_WEIGHT_LIMIT)
        else:
            limit = np.float32(simd.sq4_wide_weight_limit(code_size))
        max_code = np.float32(15.0)
    else:
        limit = np.float32(simd.sq8_weight_limit(code_size))
        max_code = np.float32(255.0)
    largest = np.float32(0.0)
    for j in range(n_weights):
        largest = max(largest, abs(weights[j]))
    scale = largest / limit if largest > 0 else np.float32(1.0)
    inverse = np.float32(1.0) / scale
    scale2 = np.float32(0.0)
    scale3 = np.float32(0.0)
    if planes:
        # The residuals in two more int8 planes. Rounding leaves at most
        # half a step, so each plane's scale is half the one before over the
        # limit.
        scale2 = np.float32(scale * np.float32(0.5) / limit)
        scale3 = np.float32(scale2 * np.float32(0.5) / limit)
        magnitude, above_sum, below_sum = _sq4_planes(weights, code_size, out, scale, scale2,
                                                      scale3, inverse, limit)
    else:
        # Levels in the weights' order first (a loop LLVM vectorizes, with
        # float32 sums: their rounding is far inside the allowance below),
        # then copied into the chunk layout, where each weight appears once.
        magnitude = np.float32(0.0)
        above_sum = np.float32(0.0)
        below_sum = np.float32(0.0)
        for j in range(n_weights):
            weight = weights[j]
            level = min(max(np.floor(weight * inverse + np.float32(0.5)), -limit), limit)
            levels[j] = level
            # Codes lie in [0, max_code]: the exact dot exceeds the integer
            # one by at most max_code times the positive rounding errors.
            above_sum += max(weight - level * scale, np.float32(0.0))
            below_sum += max(level * scale - weight, np.float32(0.0))
            magnitude += abs(weight)
        out[:] = 0
        _layout_levels(levels, bits, code_size, out)
    # float32 sums of up to a few thousand terms (these and the scan's dot
    # products): 1e-5 of the absolute sum is many times their worst
    # rounding error.
    allowance = 1e-5 * np.float64(magnitude)
    params[0] = scale
    params[1] = np.float32(np.float64(max_code) * (np.float64(above_sum) + allowance) * 1.001)
    params[2] = np.float32(np.float64(max_code) * (np.float64(below_sum) + allowance) * 1.001)
    params[3] = scale2
    params[4] = scale3


@njit(inline="always")
def _layout_levels(levels, bits, code_size, out):
    """Integer levels in the weights' order into ``out`` (zeroed), in the
    chunk layout of :mod:`ivfsq.backends.cpu.simd`."""
    if bits == 8:
        # 8-bit codes: the weights' order up to the last chunk (one flat,
        # vectorized loop: per-chunk copies were 3x slower), then the last.
        chunk_bytes = simd.SQ8_CHUNK_BYTES
        body = out.shape[0] - chunk_bytes
        for j in range(body):
            out[j] = levels[j]
        start = code_size - chunk_bytes
        for t in range(body - start, chunk_bytes):
            out[body + t] = levels[start + t]
        return
    # 4-bit codes (int16 weights): each chunk's weights in four groups of
    # 16, even bytes' low and high nibbles, then odd bytes' (the module
    # docstring of simd). The last chunk skips the bytes it shares with the
    # one before (their weights stay 0).
    half = simd.SQ4_CHUNK_BYTES
    n_chunks = out.shape[0] // (2 * half)
    for chunk in range(n_chunks - 1):
        _layout_wide_chunk(levels, code_size, out, 2 * half * chunk, half * chunk, 0)
    _layout_wide_chunk(levels, code_size, out, 2 * half * (n_chunks - 1), code_size - half,
                       half * n_chunks - code_size)


@njit(inline="always")
def _layout_wide_chunk(levels, code_size, out, first, start, skip):
    # One chunk of :func:`_layout_levels` for int16 weights of 4-bit codes:
    # bytes start + t, t >= skip, to out[first:first + 64].
    for pair in range(simd.SQ4_CHUNK_BYTES // 2):
        for parity in range(2):
            t = 2 * pair + parity
            if t >= skip:
                column = first + 32 * parity + pair
                out[column] = levels[start + t]
                out[column + 16] = levels[code_size + start + t]


@njit(inline="always")
def _sq4_planes(weights, code_size, out, scale, scale2, scale3, inverse, limit):
    """The three int8 planes of 4-bit codes' weights (see
    :func:`_int_weights_row`), written straight into their chunk layout:
    ``out`` holds ``simd.SQ4_PLANES`` rows of it one after the other.
    Returns float32 ``sum |w|`` and the sums of the positive and of the
    negative parts of ``scale2 W2 + scale3 W3`` (what the last two planes
    add per unit of code).

    A level clamped by float rounding only leaves a little more to the next
    plane, and the bounds come from the levels themselves, so the residuals
    need not be exact; the sums, of terms of one sign, are within 1e-4 of
    exact (the 1.001 of the caller). Each chunk's 32 low- then 32
    high-nibble weights are one loop of constant length, but for the last
    chunk, which skips the bytes it shares with the one before (their
    weights stay 0). Indexes are unsigned, so that numba adds no wraparound
    of negative ones (which kept these loops from vectorizing: 3x slower).
    """
    half = np.uint64(simd.SQ4_CHUNK_BYTES)
    width = np.uint64(out.shape[0] // simd.SQ4_PLANES)
    n_chunks = width // (np.uint64(2) * half)
    size = np.uint64(code_size)
    # (Scales that underflow to 0 leave their planes at 0.)
    inverse2 = np.float32(1.0) / scale2 if scale2 > 0 else np.float32(0.0)
    inverse3 = np.float32(1.0) / scale3 if scale3 > 0 else np.float32(0.0)
    steps = (scale, scale2, scale3, inverse, inverse2, inverse3)
    sums = (np.float32(0.0), np.float32(0.0), np.float32(0.0))
    for chunk in range(n_chunks - np.uint64(1)):
        for side in range(np.uint64(2)):
            sums = _plane_levels(weights, side * size + half * chunk, out,
                                 np.uint64(2) * half * chunk + side * half, width, half, steps,
                                 limit, sums)
    start = size - half
    seen = half * (n_chunks - np.uint64(1)) - start
    last = np.uint64(2) * half * (n_chunks - np.uint64(1))
    for side in range(np.uint64(2)):
        for plane in range(np.uint64(simd.SQ4_PLANES)):
            for t in range(seen):
                out[plane * width + last + side * half + t] = 0
        sums = _plane_levels(weights, side * size + start + seen, out, last + side * half + seen,
                             width, half - seen, steps, limit, sums)
    return sums


@njit(inline="always")
def _plane_levels(weights, source, out, target, width, count, steps, limit, sums):
    """``count`` weights from ``weights[source]`` into the three planes at
    ``out[target]`` (planes ``width`` apart); adds to ``sums`` (see
    :func:`_sq4_planes`). ``steps``: the planes' scales, then their inverses."""
    scale, scale2, scale3, inverse, inverse2, inverse3 = steps
    magnitude, above, below = sums
    for t in range(count):
        weight = weights[source + t]
        level = min(max(np.floor(weight * inverse + np.float32(0.5)), -limit), limit)
        rest = weight - level * scale
        level2 = min(max(np.floor(rest * inverse2 + np.float32(0.5)), -limit), limit)
        second = level2 * scale2
        level3 = min(max(np.floor((rest - second) * inverse3 + np.float32(0.5)), -limit),
                     limit)
        out[target + t] = np.int8(level)
        out[width + target + t] = np.int8(level2)
        out[np.uint64(2) * width + target + t] = np.int8(level3)
        added = second + level3 * scale3
        above += max(added, np.float32(0.0))
        below += max(-added, np.float32(0.0))
        magnitude += abs(weight)
    return magnitude, above, below


@njit(fastmath=_FAST, **_JIT)
def int_filter_excess(lists, list_consts, weights, query_sq_norms, codes, aux, list_offsets,
                      list_sizes, metric, bits, int_weights, int_params, k, out):
    """Per query ``i`` and its list ``lists[i]``: the share of the list's
    rows past the first ``k`` whose integer-filter bound (the scan's, with
    these integer weights) does not rule them out at the list's k-th exact
    distance; -1 for an empty list. Arguments as in :func:`scan_lists`."""
    n_chunks = _n_int_chunks(int_weights, bits)
    plane = _plane_width(int_weights, bits)
    for i in range(lists.shape[0]):
        lst = lists[i]
        start = list_offsets[lst]
        n_rows = list_sizes[lst]
        if n_rows == 0:
            out[i] = -1.0
            continue
        base = list_consts[i]
        q_sq = query_sq_norms[i]
        scale = int_params[i, 0]
        margin = _int_margin(int_params, i, base)
        distances = np.empty(n_rows, dtype=np.float32)
        bounds = np.empty(n_rows, dtype=np.float32)
        for r in range(n_rows):
            row = start + r
            dot = _int_dot(codes, row, int_weights, i, n_chunks, bits)
            approx = base + scale * np.float32(dot)
            bounds[r] = _distance_lower_bound(metric, approx, margin, q_sq, aux[row])
            if plane > 0:
                score = _plane_score(
                    base, scale, int_params[i, 3], int_params[i, 4], dot,
                    simd.dot_nibbles_at(codes, row, int_weights, i, n_chunks, plane),
                    simd.dot_nibbles_at(codes, row, int_weights, i, n_chunks, 2 * plane),
                )
            else:
                score = _exact_score(weights[i], base, codes, row, bits, codes.shape[1])
            distances[r] = _score_to_distance(metric, score, q_sq, aux[row])
        kth = min(k, n_rows) - 1
        cutoff = np.partition(distances, kth)[kth]
        passed = 0
        for r in range(n_rows):
            if bounds[r] <= cutoff:
                passed += 1
        out[i] = max(passed - k, 0) / n_rows


@njit(fastmath=_FAST, **_JIT)
def query_int_weights(weights, bits, code_size, out, out_params):
    """:func:`_int_weights_row` for each row: ``out_params[i] = (scale, bound
    above, bound below)``."""
    levels = np.empty(weights.shape[1], dtype=np.float32)
    for i in range(weights.shape[0]):
        _int_weights_row(weights[i], bits, code_size, out[i], levels, out_params[i])


@njit(**_JIT)
def query_weights(queries, delta, bits, code_size, out):
    """Per-query weights of the scan's dot product (see ``ScalarQuantizer.weights``)."""
    for i in range(queries.shape[0]):
        _weights_row(queries[i], delta, bits, code_size, out[i])


# -------------------------------------------------------------------- refine
@njit(**_JIT)
def refine_exact(dataset, queries, candidates, metric, out_distances, out_ids):
    """Exact distances from each query to its candidate rows of ``dataset``; top-k.

    ``metric``: METRIC_L2 (squared L2), METRIC_IP (negated inner product) or
    METRIC_COSINE (1 - cos; a zero vector has distance 1). Candidates < 0 or
    past the dataset are skipped (the caller validates the range).
    """
    n_queries, n_candidates = candidates.shape
    dim = queries.shape[1]
    k = out_distances.shape[1]
    for i in range(n_queries):
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        _heap_init(heap_d, heap_i)
        q_norm = 0.0
        if metric == METRIC_COSINE:
            for j in range(dim):
                q_norm += np.float64(queries[i, j]) * queries[i, j]
            q_norm = np.sqrt(q_norm)
        for c in range(n_candidates):
            vid = candidates[i, c]
            if vid < 0:
                continue
            acc = 0.0
            if metric == METRIC_L2:
                for j in range(dim):
                    diff = np.float64(queries[i, j]) - np.float64(dataset[vid, j])
                    acc += diff * diff
                dist = acc
            elif metric == METRIC_IP:
                for j in range(dim):
                    acc += np.float64(queries[i, j]) * np.float64(dataset[vid, j])
                dist = -acc
            else:
                x_norm = 0.0
                for j in range(dim):
                    x = np.float64(dataset[vid, j])
                    acc += np.float64(queries[i, j]) * x
                    x_norm += x * x
                denominator = q_norm * np.sqrt(x_norm)
                dist = 1.0 if denominator == 0.0 else 1.0 - acc / denominator
            dist32 = np.float32(dist)
            if _greater(heap_d[0], heap_i[0], dist32, vid):
                _heap_push_replace(heap_d, heap_i, k, dist32, vid)
        _heap_sort(heap_d, heap_i, k)


# -------------------------------------------------------------------- kmeans
@njit(**_JIT)
def accumulate_clusters(vectors, labels, sums, counts):
    """Add each row to its cluster's sum (float64) and count."""
    n_rows, dim = vectors.shape
    for row in range(n_rows):
        label = labels[row]
        counts[label] += 1
        for j in range(dim):
            sums[label, j] += vectors[row, j]
