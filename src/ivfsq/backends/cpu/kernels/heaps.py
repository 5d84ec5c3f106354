"""Bounded top-k heaps: push, sort and merge of per-query (distance, id) heaps.

A heap holds the k best candidates as a max-heap on (distance, id): ties
break by the smaller id, so results do not depend on scan order.
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu.kernels.common import JIT


# ---------------------------------------------------------------- top-k heap
@njit(inline="always")
def greater(d1, i1, d2, i2):
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
        if right < size and greater(heap_d[right], heap_i[right], heap_d[child], heap_i[child]):
            child = right
        if greater(heap_d[child], heap_i[child], dist, idx):
            heap_d[pos] = heap_d[child]
            heap_i[pos] = heap_i[child]
            pos = child
        else:
            break
    heap_d[pos] = dist
    heap_i[pos] = idx


@njit(inline="always")
def heap_push_replace(heap_d, heap_i, k, dist, idx):
    """Replace the root (the worst kept candidate) of a max-heap of size k."""
    _sift_down(heap_d, heap_i, k, dist, idx)


@njit(inline="always")
def heap_sort(heap_d, heap_i, k):
    """Sort a max-heap in place into ascending (distance, id) order."""
    for end in range(k - 1, 0, -1):
        last_d = heap_d[end]
        last_i = heap_i[end]
        heap_d[end] = heap_d[0]
        heap_i[end] = heap_i[0]
        _sift_down(heap_d, heap_i, end, last_d, last_i)


@njit(inline="always")
def heap_init(heap_d, heap_i):
    for j in range(heap_d.shape[0]):
        heap_d[j] = np.inf
        heap_i[j] = -1


# ------------------------------------------------------- list-major batches
@njit(inline="always")
def push(heap_d, heap_i, query, k, dist, key):
    """Push (dist, key) into query's max-heap if it beats the root; the new root."""
    if greater(heap_d[query, 0], heap_i[query, 0], dist, key):
        _sift_down(heap_d[query], heap_i[query], k, dist, key)
    return heap_d[query, 0]


@njit(**JIT)
def init_heaps(heap_distances, heap_ids):
    """Every row an empty max-heap: (+inf, -1)."""
    for i in range(heap_distances.shape[0]):
        heap_init(heap_distances[i], heap_ids[i])


@njit(**JIT)
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
            heap_init(heap_d, heap_i)
        for j in range(first, n_candidates):
            vid = candidate_ids[i, j]
            if vid < 0:
                continue
            dist = candidate_distances[i, j]
            if greater(heap_d[0], heap_i[0], dist, vid):
                heap_push_replace(heap_d, heap_i, k, dist, vid)
        heap_sort(heap_d, heap_i, k)
