"""The list-major scan of big batches: the (query, probe) pairs are grouped by
list and each list is read once for all the queries that probe it.

Its block loop stays whole in this file, written out for four queries at a
time: numba counts references to arrays passed to helpers, which costs
more than the dots in this loop.
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu.kernels import simd
from ivfsq.backends.cpu.kernels.common import FAST, HANDLE_TOPK, JIT
from ivfsq.backends.cpu.kernels.heaps import push
from ivfsq.backends.cpu.kernels.scan import HISTOGRAM_BUCKETS, scan_list, score_bounded
from ivfsq.backends.cpu.kernels.score import (
    distance_lower_bound,
    distance_upper_bound,
    high_nibble,
    int_margin,
    int_margin_below,
    is_kept,
    n_int_chunks,
    offer_exact,
    offer_score,
    plane_scales,
    plane_score,
    plane_width,
    score_to_distance,
)


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


@njit(fastmath=FAST, **JIT)
def scan_lists_grouped(
    lists_to_scan,
    pairs,
    tables,
    lists,
    keep,
    metric,
    bits,
    emit_rows,
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
    weights, query_sq_norms, int_weights, int_params = tables
    codes, ids, aux, list_offsets, list_sizes = lists
    # One bitset for the whole batch (a batch with one per query takes a
    # per-query path instead).
    keep_words, use_filter = keep[0][0], keep[1]
    pair_offsets, pair_queries, pair_consts = pairs
    k = heap_distances.shape[1]
    code_size = codes.shape[1]
    n_chunks = n_int_chunks(int_weights, bits)
    plane = plane_width(int_weights, bits)
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
                    scan_list(
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
                scale0, margin0 = int_params[q0, 0], int_margin(int_params, q0, c0)
                scale1, margin1 = int_params[q1, 0], int_margin(int_params, q1, c1)
                scale2, margin2 = int_params[q2, 0], int_margin(int_params, q2, c2)
                scale3, margin3 = int_params[q3, 0], int_margin(int_params, q3, c3)
            # The other planes' scales (4-bit codes with int8 weights).
            planes0 = plane_scales(int_params, q0, plane)
            planes1 = plane_scales(int_params, q1, plane)
            planes2 = plane_scales(int_params, q2, plane)
            planes3 = plane_scales(int_params, q3, plane)
            for row in range(start, stop):
                if use_filter and not is_kept(keep_words, ids[row]):
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
                    pass0 = distance_lower_bound(
                        metric, c0 + scale0 * np.float32(d0), margin0, sq0, aux_value
                    ) <= worst0
                    pass1 = distance_lower_bound(
                        metric, c1 + scale1 * np.float32(d1), margin1, sq1, aux_value
                    ) <= worst1
                    pass2 = distance_lower_bound(
                        metric, c2 + scale2 * np.float32(d2), margin2, sq2, aux_value
                    ) <= worst2
                    pass3 = distance_lower_bound(
                        metric, c3 + scale3 * np.float32(d3), margin3, sq3, aux_value
                    ) <= worst3
                    # (Bitwise: one branch, where ``or`` took four.)
                    if not (pass0 | pass1 | pass2 | pass3):
                        continue
                    key = row if emit_rows else ids[row]
                    # Written out per member: a helper that took the arrays
                    # would count references to them on every call (see
                    # plane_score).
                    if pass0 and plane > 0:
                        score = plane_score(
                            c0, scale0, planes0[0], planes0[1], d0,
                            simd.dot_nibbles_at(codes, row, int_weights, q0, n_chunks, plane),
                            simd.dot_nibbles_at(codes, row, int_weights, q0, n_chunks,
                                                2 * plane),
                        )
                        worst0 = offer_score(heap_distances, heap_ids, q0, k, metric, score,
                                              sq0, aux_value, key, worst0)
                    elif pass0:
                        worst0 = offer_exact(heap_distances, heap_ids, q0, k, metric, c0,
                                              weights, codes, row, bits, sq0, aux_value, key,
                                              worst0)
                    if pass1 and plane > 0:
                        score = plane_score(
                            c1, scale1, planes1[0], planes1[1], d1,
                            simd.dot_nibbles_at(codes, row, int_weights, q1, n_chunks, plane),
                            simd.dot_nibbles_at(codes, row, int_weights, q1, n_chunks,
                                                2 * plane),
                        )
                        worst1 = offer_score(heap_distances, heap_ids, q1, k, metric, score,
                                              sq1, aux_value, key, worst1)
                    elif pass1:
                        worst1 = offer_exact(heap_distances, heap_ids, q1, k, metric, c1,
                                              weights, codes, row, bits, sq1, aux_value, key,
                                              worst1)
                    if pass2 and plane > 0:
                        score = plane_score(
                            c2, scale2, planes2[0], planes2[1], d2,
                            simd.dot_nibbles_at(codes, row, int_weights, q2, n_chunks, plane),
                            simd.dot_nibbles_at(codes, row, int_weights, q2, n_chunks,
                                                2 * plane),
                        )
                        worst2 = offer_score(heap_distances, heap_ids, q2, k, metric, score,
                                              sq2, aux_value, key, worst2)
                    elif pass2:
                        worst2 = offer_exact(heap_distances, heap_ids, q2, k, metric, c2,
                                              weights, codes, row, bits, sq2, aux_value, key,
                                              worst2)
                    if pass3 and plane > 0:
                        score = plane_score(
                            c3, scale3, planes3[0], planes3[1], d3,
                            simd.dot_nibbles_at(codes, row, int_weights, q3, n_chunks, plane),
                            simd.dot_nibbles_at(codes, row, int_weights, q3, n_chunks,
                                                2 * plane),
                        )
                        worst3 = offer_score(heap_distances, heap_ids, q3, k, metric, score,
                                              sq3, aux_value, key, worst3)
                    elif pass3:
                        worst3 = offer_exact(heap_distances, heap_ids, q3, k, metric, c3,
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
                        high = high_nibble(byte)
                        s0 += low0[j] * low + high0[j] * high
                        s1 += low1[j] * low + high1[j] * high
                        s2 += low2[j] * low + high2[j] * high
                        s3 += low3[j] * low + high3[j] * high
                dist0 = score_to_distance(metric, c0 + s0, sq0, aux_value)
                dist1 = score_to_distance(metric, c1 + s1, sq1, aux_value)
                dist2 = score_to_distance(metric, c2 + s2, sq2, aux_value)
                dist3 = score_to_distance(metric, c3 + s3, sq3, aux_value)
                if dist0 > worst0 and dist1 > worst1 and dist2 > worst2 and dist3 > worst3:
                    continue
                key = row if emit_rows else ids[row]
                if dist0 <= worst0:
                    worst0 = push(heap_distances, heap_ids, q0, k, dist0, key)
                if dist1 <= worst1:
                    worst1 = push(heap_distances, heap_ids, q1, k, dist1, key)
                if dist2 <= worst2:
                    worst2 = push(heap_distances, heap_ids, q2, k, dist2, key)
                if dist3 <= worst3:
                    worst3 = push(heap_distances, heap_ids, q3, k, dist3, key)


@njit(fastmath=FAST, **JIT)
def scan_first_lists_grouped(
    lists_to_scan,
    pairs,
    tables,
    lists,
    keep,
    metric,
    bits,
    emit_rows,
    heap_distances,
    heap_ids,
):
    """:func:`scan_lists_grouped` (same arguments) for lists that are their
    queries' first, the heaps still empty, with the integer filter on.

    Each block of four queries takes every row's bounds first, then each
    query scores exactly only the rows they leave in
    (:func:`score_bounded`). A separate kernel: inside
    :func:`scan_lists_grouped` this code made the scan of the other lists
    slower.
    """
    weights, query_sq_norms, int_weights, int_params = tables
    codes, ids, aux, list_offsets, list_sizes = lists
    # One bitset for the whole batch (a batch with one per query takes a
    # per-query path instead).
    keep_words, use_filter = keep[0][0], keep[1]
    pair_offsets, pair_queries, pair_consts = pairs
    k = heap_distances.shape[1]
    n_chunks = n_int_chunks(int_weights, bits)
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
            above0, below0 = int_margin(int_params, q0, c0), int_margin_below(int_params, q0, c0)
            above1, below1 = int_margin(int_params, q1, c1), int_margin_below(int_params, q1, c1)
            above2, below2 = int_margin(int_params, q2, c2), int_margin_below(int_params, q2, c2)
            above3, below3 = int_margin(int_params, q3, c3), int_margin_below(int_params, q3, c3)
            for r in range(n_rows):
                row = start + r
                if use_filter and not is_kept(keep_words, ids[row]):
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
                lowers[0, r] = distance_lower_bound(metric, a0, above0, sq0, aux_value)
                lowers[1, r] = distance_lower_bound(metric, a1, above1, sq1, aux_value)
                lowers[2, r] = distance_lower_bound(metric, a2, above2, sq2, aux_value)
                lowers[3, r] = distance_lower_bound(metric, a3, above3, sq3, aux_value)
                uppers[0, r] = distance_upper_bound(metric, a0, below0, sq0, aux_value)
                uppers[1, r] = distance_upper_bound(metric, a1, below1, sq1, aux_value)
                uppers[2, r] = distance_upper_bound(metric, a2, below2, sq2, aux_value)
                uppers[3, r] = distance_upper_bound(metric, a3, below3, sq3, aux_value)
            for m in range(n_block):
                q = pair_queries[block + m]
                score_bounded(
                    weights[q], heap_distances[q], heap_ids[q], k, metric, pair_consts[block + m],
                    codes, bits, start, n_rows, query_sq_norms[q], aux, ids, emit_rows,
                    lowers[m], uppers[m], counts, int_weights, int_params, q, row_dots[m],
                )
