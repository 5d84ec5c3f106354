"""Exact distances: re-ranking candidates from the precise store, range
search over it, and :func:`refine_exact` over a dataset.
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu.kernels.common import FAST, JIT, METRIC_COSINE, METRIC_IP, METRIC_L2
from ivfsq.backends.cpu.kernels.heaps import greater, heap_init, heap_push_replace, heap_sort
from ivfsq.backends.cpu.kernels.score import is_kept


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


@njit(**JIT)
def rerank_rows(
    queries,
    store,
    candidate_rows,
    ids,
    metric,
    out_distances,
    out_ids,
):
    """Exact top-k of each query over its candidate storage rows.

    The precise store is either ``precise`` (float32, one row per storage
    row) or, when that has no rows, ``precise_half_bits``: a float16 store
    given as its uint16 bit patterns, read through ``half_table[b]`` (the
    float32 value of the float16 with bits ``b``; numba has no float16
    arithmetic on the CPU). Rows < 0 are padding. Output ascending by
    (distance, id).
    """
    precise, precise_half_bits, half_table = store
    n_queries, n_candidates = candidate_rows.shape
    use_half = precise.shape[0] == 0
    dim = queries.shape[1]
    k = out_distances.shape[1]
    vector = np.empty(dim, dtype=np.float32)
    for i in range(n_queries):
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        heap_init(heap_d, heap_i)
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
            if greater(heap_d[0], heap_i[0], dist32, vid):
                heap_push_replace(heap_d, heap_i, k, dist32, vid)
        heap_sort(heap_d, heap_i, k)


@njit(fastmath=FAST, **JIT)
def range_exact(
    probes,
    precise_queries,
    store,
    lists,
    keep,
    metric,
    radius,
):
    """Range search of an index with a precise store: every vector of the
    probed lists whose exact distance (as :func:`rerank_rows` computes it,
    from ``precise`` or the float16 bits) is ``<= radius``.

    Like the re-rank, this scores precise rows rather than codes (no code
    distance bounds the exact one, so the code scan cannot pre-select).
    Returns per-query counts and the ids and distances, query by query.
    """
    codes, ids, aux, list_offsets, list_sizes = lists
    all_words, use_filter = keep
    precise, precise_half_bits, half_table = store
    n_queries, n_probes = probes.shape
    use_half = precise.shape[0] == 0
    dim = precise_queries.shape[1]
    vector = np.empty(dim, dtype=np.float32)
    counts = np.zeros(n_queries, dtype=np.int64)
    found_d = np.empty(4096, dtype=np.float32)
    found_i = np.empty(4096, dtype=np.int64)
    used = 0
    for i in range(n_queries):
        keep_words = all_words[i if all_words.shape[0] > 1 else 0]  # one bitset, or its own
        for p in range(n_probes):
            lst = probes[i, p]
            start = list_offsets[lst]
            for row in range(start, start + list_sizes[lst]):
                vid = ids[row]
                if use_filter and not is_kept(keep_words, vid):
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


# -------------------------------------------------------------------- refine
@njit(**JIT)
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
        heap_init(heap_d, heap_i)
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
            if greater(heap_d[0], heap_i[0], dist32, vid):
                heap_push_replace(heap_d, heap_i, k, dist32, vid)
        heap_sort(heap_d, heap_i, k)
