"""Filtered search: how many ids a filter keeps, how many lists a query
walks before it has seen enough kept rows, and kept rows scored directly.

A filter is one bitset of kept ids (bit ``i % 32`` of word ``i // 32``)
for every query, or one per query: ``words`` is 2-D, with one row, or one
row per query.
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu.kernels.common import FAST, JIT, METRIC_L2
from ivfsq.backends.cpu.kernels.encode import dot64, list_constant
from ivfsq.backends.cpu.kernels.heaps import greater, heap_init, heap_push_replace, heap_sort
from ivfsq.backends.cpu.kernels.score import exact_score, is_kept, score_to_distance


@njit(inline="always")
def _popcount(word):
    # Set bits of a 32-bit word (SWAR, in int64: no step overflows).
    x = np.int64(word)
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


@njit(**JIT)
def count_kept(words, n_ids, out):
    """``out[r]``: how many of the ids ``[0, n_ids)`` row ``r`` of ``words`` keeps."""
    n_full = n_ids >> 5
    rest = n_ids & 31
    for r in range(words.shape[0]):
        total = 0
        for w in range(min(n_full, words.shape[1])):
            total += _popcount(words[r, w])
        if rest and n_full < words.shape[1]:
            total += _popcount(np.int64(words[r, n_full]) & ((np.int64(1) << rest) - 1))
        out[r] = total


@njit(**JIT)
def kept_per_list(words, ids, list_offsets, list_sizes, out):
    """``out[l]``: the rows of list ``l`` whose ids the bitset ``words`` keeps."""
    for lst in range(list_offsets.shape[0]):
        start = list_offsets[lst]
        count = 0
        for row in range(start, start + list_sizes[lst]):
            if is_kept(words, ids[row]):
                count += 1
        out[lst] = count


@njit(**JIT)
def lists_to_walk(ranked, words, ids, list_offsets, list_sizes, targets, out_lists, out_seen):
    """Per query ``i``, the fewest of its ranked lists (``ranked[i]``,
    nearest first; -1 ends them) whose rows include ``targets[i]`` kept
    ones: ``out_lists[i]``, or -1 where all its ranked lists hold fewer;
    ``out_seen[i]``: the kept rows in the lists counted."""
    per_query = words.shape[0] > 1
    for i in range(ranked.shape[0]):
        keep_words = words[i if per_query else 0]
        seen = 0
        out_lists[i] = -1
        for p in range(ranked.shape[1]):
            lst = ranked[i, p]
            if lst < 0:
                break
            start = list_offsets[lst]
            for row in range(start, start + list_sizes[lst]):
                if is_kept(keep_words, ids[row]):
                    seen += 1
            if seen >= targets[i]:
                out_lists[i] = p + 1
                break
        out_seen[i] = seen


@njit(fastmath=FAST, **JIT)
def score_rows(queries, weights, centers, vmin, by_residual, codes, ids, aux, row_starts, rows,
               row_lists, metric, bits, emit_rows, out_distances, out_keys):
    """Per query ``i``, the top ``out_distances.shape[1]`` (ascending by
    (distance, key)) of the storage rows ``rows[row_starts[i]:row_starts[i
    + 1]]`` (with two ``row_starts``, the same rows for every query), each
    in list ``row_lists`` beside it, scored on its code as the list scan
    scores it. Keys are ids, or storage rows with ``emit_rows``; padding
    is (+inf, -1). ``weights``: the queries' weights (the codec's
    ``weights``). Rows of one list are best kept together: the list's constant
    is computed once per run of its rows."""
    code_size = codes.shape[1]
    k = out_distances.shape[1]
    shared = row_starts.shape[0] == 2
    for i in range(queries.shape[0]):
        query = queries[i]
        w = weights[i]
        q_sq = np.float32(dot64(query, query)) if metric == METRIC_L2 else np.float32(0.0)
        offset = dot64(query, vmin)
        heap_d = out_distances[i]
        heap_i = out_keys[i]
        heap_init(heap_d, heap_i)
        first = row_starts[0] if shared else row_starts[i]
        stop = row_starts[1] if shared else row_starts[i + 1]
        current = -1
        base = np.float32(0.0)
        for j in range(first, stop):
            row = rows[j]
            lst = row_lists[j]
            if lst != current:
                base = list_constant(query, centers, lst, offset, by_residual)
                current = lst
            score = exact_score(w, base, codes, row, bits, code_size)
            dist = score_to_distance(metric, score, q_sq, aux[row])
            key = row if emit_rows else ids[row]
            if greater(heap_d[0], heap_i[0], dist, key):
                heap_push_replace(heap_d, heap_i, k, dist, key)
        heap_sort(heap_d, heap_i, k)
