"""The coarse step: selecting each query's ``n_probes`` nearest lists from its
dot products with the centers (or from a lower bound of them).
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu.kernels.common import FAST, JIT
from ivfsq.backends.cpu.kernels.heaps import greater, heap_init, heap_push_replace, heap_sort

# The coarse selection's first cut (_n_select_groups): lists per group
# (_group_minima is written for 8), and the fewest groups per probe for
# exact scores (below it, _select_by_keys) and for lower bounds.
SELECT_GROUP = 8
SELECT_RATIO_EXACT = 4
SELECT_RATIO_BOUNDED = 2
# Up to this many values are selected by insertion into a sorted run
# (_select_by_insertion) rather than by sort keys: a few dozen short
# insertions cost less than building a key per value and sorting.
SELECT_INSERTION_MAX = 16


@njit(inline="always")
def _n_select_groups(n_values, n_select, ratio):
    """Groups of the selection's first cut (:func:`_group_minima`) when
    ``n_select`` of ``n_values`` are wanted: ``SELECT_GROUP`` values each
    where that leaves ``ratio`` groups per selected value, else one value
    each."""
    n_groups = -(-n_values // SELECT_GROUP)
    return n_groups if n_groups >= ratio * n_select else n_values


@njit(inline="always")
def selection_workspace(n_values, n_select):
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
    thirty-second of the values this beats a heap over every value."""
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
def _select_by_insertion(scores, n_values, heap_d, heap_i, keys):
    """:func:`_select_by_keys` for a few values (``p <= SELECT_INSERTION_MAX``),
    in the same order (the ordered score bits, then the index): each value
    that beats the ``p``-th best so far is inserted into the sorted run of
    the best (their keys in ``keys[:p]``), and an equal one never displaces
    an earlier, lower index."""
    p = heap_d.shape[0]
    bits = scores.view(np.int32)
    n = 0
    for t in range(n_values):
        key = np.int64(_ordered_bits(bits[t]))
        if n < p:
            position = n
            n += 1
        elif key < keys[p - 1]:
            position = p - 1
        else:
            continue
        while position > 0 and key < keys[position - 1]:
            keys[position] = keys[position - 1]
            heap_i[position] = heap_i[position - 1]
            position -= 1
        keys[position] = key
        heap_i[position] = t
    for t in range(p):
        heap_d[t] = scores[heap_i[t]]


@njit(inline="always")
def _group_minima(values, n_groups, out):
    """Group ``g`` holds ``values[g::n_groups]``: with ``SELECT_GROUP`` (8)
    of them, rows of groups, so that the minima vectorize (a loop over the
    members, storing into ``out`` each time, did not, and was many times
    slower). ``values`` is padded to whole groups with
    +inf (:func:`selection_workspace`)."""
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
    heap_init(seed_d, seed_i)
    cover = seed_d[0]
    for g in range(n_groups):
        if group_minima[g] < cover:
            heap_push_replace(seed_d, seed_i, n_select, group_minima[g], g)
            cover = seed_d[0]
    return cover


@njit(fastmath=FAST, **JIT)
def select_row(dots, center_sq_norms, use_l2, heap_d, heap_i, workspace):
    # Only the lists at or below the groups' cover can be among the best,
    # and only those are offered to the heap (1-2 x n_probes of them
    # instead of every list). ``workspace``: selection_workspace's. A
    # function of its own, not inlined: inlined into the three kernels that
    # select probes, it lengthened their first compile. (fastmath
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
        if n_probes <= SELECT_INSERTION_MAX:
            _select_by_insertion(scores, n_lists, heap_d, heap_i, keys)
        else:
            _select_by_keys(scores, n_lists, heap_d, heap_i, keys)
        return
    heap_init(heap_d, heap_i)
    _group_minima(scores, n_groups, group_minima)
    cover = _groups_cover(group_minima, n_groups, seed_d, seed_i)
    for g in range(n_groups):
        if group_minima[g] <= cover:
            for lst in range(g, n_lists, n_groups):
                score = scores[lst]
                if score <= cover and greater(heap_d[0], heap_i[0], score, lst):
                    heap_push_replace(heap_d, heap_i, n_probes, score, lst)
    heap_sort(heap_d, heap_i, n_probes)


@njit(**JIT)
def select_probes(dots, center_sq_norms, use_l2, out_scores, out_lists):
    """Per query, the lists with the best coarse scores, best first.

    The score of list ``l`` is ``|c_l|^2 - 2 q.c_l`` (L2) or ``-q.c_l``;
    ties go to the lower list number.
    """
    workspace = selection_workspace(dots.shape[1], out_scores.shape[1])
    for i in range(dots.shape[0]):
        select_row(dots[i], center_sq_norms, use_l2, out_scores[i], out_lists[i], workspace)


@njit(fastmath=FAST, **JIT)
def select_probes_small(queries, centers, center_sq_norms, use_l2, out_scores, out_lists):
    """:func:`select_probes` computing the dots itself, for a few queries.

    For one query a BLAS call and its dispatch cost more than the dot
    products themselves.
    """
    dots = np.empty(centers.shape[0], dtype=np.float32)
    workspace = selection_workspace(centers.shape[0], out_scores.shape[1])
    for i in range(queries.shape[0]):
        center_dots(queries[i], centers, dots)
        select_row(dots, center_sq_norms, use_l2, out_scores[i], out_lists[i], workspace)


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
    # could still beat it. Scoring a fixed 2 x n_probes lists first was
    # slower, and so was a heap over every bound (for the first ones).
    lower, group_minima, seed_d, seed_i, _ = workspace
    n_lists = centers.shape[0]
    n_probes = heap_d.shape[0]
    n_groups = _n_select_groups(n_lists, n_probes, SELECT_RATIO_BOUNDED)
    if n_groups == n_lists:
        group_minima = lower  # one list per group: the bounds themselves
    else:
        _group_minima(lower, n_groups, group_minima)
    cover = _groups_cover(group_minima, n_groups, seed_d, seed_i)
    heap_init(heap_d, heap_i)
    for g in range(n_groups):
        if group_minima[g] <= cover:
            for lst in range(g, n_lists, n_groups):
                if lower[lst] <= cover:
                    score = _center_score(query, centers, center_sq_norms, lst, use_l2)
                    if greater(heap_d[0], heap_i[0], score, lst):
                        heap_push_replace(heap_d, heap_i, n_probes, score, lst)
    # The root, in a register while no push changes it.
    worst = heap_d[0]
    for g in range(n_groups):
        if group_minima[g] <= worst:
            for lst in range(g, n_lists, n_groups):
                if lower[lst] > cover and lower[lst] <= worst:
                    score = _center_score(query, centers, center_sq_norms, lst, use_l2)
                    if greater(heap_d[0], heap_i[0], score, lst):
                        heap_push_replace(heap_d, heap_i, n_probes, score, lst)
                        worst = heap_d[0]
    heap_sort(heap_d, heap_i, n_probes)


@njit(fastmath=FAST, **JIT)
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


@njit(fastmath=FAST, **JIT)
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
    workspace = selection_workspace(n_lists, out_scores.shape[1])
    lower = workspace[0]
    for i in range(queries.shape[0]):
        term = query_terms[i]
        for lst in range(n_lists):
            lower[lst] = term + center_terms[lst] + scale * bound_dots[i, lst]
        _select_row_bounded(
            queries[i], centers, center_sq_norms, use_l2, out_scores[i], out_lists[i], workspace
        )


@njit(fastmath=FAST, **JIT)
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
def query_probes(query, i, given_probes, centers, center_sq_norms, use_l2, dots, probe_scores,
                 probe_lists, workspace):
    """Query ``i``'s probed lists into ``probe_lists``: row ``i`` of
    ``given_probes`` where it has rows, else the coarse step of the one-call
    searches (:func:`center_dots`, then :func:`select_row` with ``dots``,
    ``probe_scores`` and ``workspace`` as its buffers)."""
    if given_probes.shape[0] > 0:
        for p in range(probe_lists.shape[0]):
            probe_lists[p] = given_probes[i, p]
    else:
        center_dots(query, centers, dots)
        select_row(dots, center_sq_norms, use_l2, probe_scores, probe_lists, workspace)


@njit(inline="always")
def center_dots(query, centers, out):
    # Four centers per pass over the query: four independent sums in flight
    # (one at a time is slower).
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
