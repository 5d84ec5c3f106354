"""Filtered search: a strategy per query, chosen from what its filter keeps.

An unfiltered search of ``n_probes`` lists scores the ``T`` rows of the
query's nearest ``n_probes`` lists. When a filter keeps a share ``s`` of
the stored ids, the query's k nearest kept vectors sit farther out (about
the ``k / s``-th nearest of all), so the same lists hold fewer of them.
Each query takes one of two strategies:

- **direct**: when its filter keeps at most ``DIRECT_RATIO * T`` ids, its
  kept rows are scored directly, on their codes (no list is scanned): no
  more work than the unfiltered search, and every kept vector is a
  candidate.
- **walk**: otherwise it scans its nearest lists, in order, until they hold
  ``max(k, T * s ** KEPT_EXPONENT)`` kept rows. For a filter independent
  of the data that is ``n_probes * s ** (KEPT_EXPONENT - 1)`` lists: the
  rule measured to keep recall@10 within 0.02 of the unfiltered recall at
  the same ``n_probes`` from ``s = 0.5`` down to the direct strategy's
  share (siftsmall, fashion-mnist and pypi-minilm; see the filtered-search
  benchmark page). Where the kept ids gather in one region, the walk goes
  on until it reaches them. The lists walked are counted, not estimated.

Queries that walk are searched in groups of equal list counts (rounded up
along ``LADDER_GROWTH``) by the engine's usual block search, so every
search path (first pass, list-major batches, re-ranking) serves filtered
queries too; queries with their own bitsets take the per-query scan there
instead of the list-major one.

When at least ``k`` stored ids pass, every query gets ``k`` results: the
walk goes on until ``k`` kept rows were seen (or every list was), and the
direct strategy scores them all.
"""

import functools
import math
import weakref

import numpy as np

from ivfsq import backends

# Kept rows a walk sees: T * s ** KEPT_EXPONENT (T: the rows of the
# query's n_probes nearest lists; s: the share of stored ids kept).
KEPT_EXPONENT = 0.65
# A query whose filter keeps at most this many times T ids is answered by
# scoring its kept rows directly.
DIRECT_RATIO = 1.0
# Lists ranked for the walk at first: this many times the count a filter
# independent of the data needs (queries that need more are ranked again
# over all lists).
RANK_MARGIN = 3.0
# Walking queries are grouped by list counts rounded up to
# ceil(n_probes * LADDER_GROWTH ** j): each group is one search.
LADDER_GROWTH = 1.5
# A filter keeping at least this share scans the n_probes lists (the walk
# would add at most s ** (KEPT_EXPONENT - 1) - 1 = 4 % of them).
FULL_SHARE = 0.9


def _ladder(counts, n_probes, n_lists):
    """``counts`` rounded up to the ladder ``ceil(n_probes * LADDER_GROWTH ** j)``
    (at most ``n_lists``)."""
    steps = _ladder_steps(n_probes, n_lists, LADDER_GROWTH)
    return steps[np.minimum(np.searchsorted(steps, counts), steps.shape[0] - 1)]


@functools.lru_cache(maxsize=64)
def _ladder_steps(n_probes, n_lists, growth):
    steps = [n_probes]
    while steps[-1] < n_lists:
        steps.append(min(n_lists, max(steps[-1] + 1, math.ceil(steps[-1] * growth))))
    steps = np.asarray(steps, dtype=np.int64)
    steps.flags.writeable = False  # shared between calls
    return steps


def kept_rows(engine, lists, words):
    """Storage rows of the stored ids a bitset (1-D words) keeps, in row
    order, and the list of each."""
    row_of_id = engine.snapshot_value(lists, "row of id", lambda: _row_of_id(lists))
    n_ids = row_of_id.shape[0]
    bits = np.unpackbits(words.view(np.uint8), bitorder="little", count=min(n_ids,
                                                                            words.size * 32))
    rows = row_of_id[np.flatnonzero(bits)]
    rows = np.sort(rows[rows >= 0])
    return rows, lists.list_of_rows(rows)


def _row_of_id(lists):
    """The storage row of every id up to the largest stored one (-1: not stored)."""
    valid = lists.valid_rows()
    ids = lists.ids[valid]
    row_of_id = np.full(int(ids.max()) + 1 if ids.shape[0] else 0, -1, dtype=np.int64)
    row_of_id[ids] = valid
    return row_of_id


def _kept_per_list(backend, lists, words, memo):
    """The kept rows of each list for one bitset (1-D), counted once per
    snapshot of the lists and kept in ``memo`` (the filter's) when given."""
    if memo is not None:
        cached = memo.get("kept per list")
        if cached is not None and cached[0]() is lists:
            return cached[1]
    counts = backend.kept_per_list(lists, words)
    if memo is not None:
        # A weak reference: the filter does not keep an old snapshot alive.
        memo["kept per list"] = (weakref.ref(lists), counts)
    return counts


def _lists_to_walk(backend, lists, ranked, words, queries, targets, n_threads, memo=None):
    """Per query (``queries``: their rows), the fewest of its ``ranked``
    lists holding ``targets`` kept rows, -1 where they all hold fewer. One
    bitset for all: its kept rows per list, counted once; else counted
    list by list as each query walks."""
    if words.shape[0] == 1:
        kept = _kept_per_list(backend, lists, words[0], memo)[ranked].cumsum(axis=1)
        reached = kept >= targets[:, None]
        return np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, -1)
    return backend.lists_to_walk(lists, ranked, words[queries], targets, n_threads)[0]


def search(engine, lists, prepared, k, n_probes, words, n_threads, refine_ratio, search_blocks,
           device="cpu", memo=None):
    """Internal distances and ids (n_queries, k) of a filtered search of
    the snapshot ``lists``.

    ``words``: uint32 bitsets, one row for all queries or one per query.
    ``search_blocks(rows, n_probes, keep_words)`` runs the engine's block
    search of the queries ``rows`` (an index array) over ``n_probes`` lists
    with their bitsets (one row, or one per query of ``rows``). ``memo``:
    the filter's dict for what is derived from its words (see
    :func:`_kept_per_list`).
    """
    backend = backends.get(device)
    n_queries = prepared.shape[0]
    n_lists = engine.centers.shape[0]
    n_probes = min(n_probes, n_lists)
    per_query = words.shape[0] > 1
    distances = np.full((n_queries, k), np.inf, dtype=np.float32)
    neighbors = np.full((n_queries, k), -1, dtype=np.int64)
    n_stored = lists.size
    if n_queries == 0 or n_stored == 0:
        return distances, neighbors
    # Ids the filter keeps below next_id: the stored ones among them, and
    # any removed ones (an upper bound of the kept stored rows).
    kept = backend.count_kept(words, engine.next_id)
    kept = kept if per_query else np.broadcast_to(kept, (n_queries,))
    share = np.clip(kept / n_stored, 1e-12, 1.0)

    if not per_query and share[0] >= FULL_SHARE:
        return search_blocks(np.arange(n_queries), n_probes, words)

    queries = engine.internal(prepared, n_threads)
    # Lists to rank: RANK_MARGIN times the walk of the smallest share.
    widest = n_probes * float(share.min()) ** (KEPT_EXPONENT - 1.0) * RANK_MARGIN
    n_ranked = int(min(n_lists, max(n_probes, math.ceil(widest))))
    ranked = engine.coarse_probes(queries, n_ranked, n_threads)
    rows_probed = lists.list_sizes[ranked[:, :n_probes]].sum(axis=1)
    direct = kept <= DIRECT_RATIO * rows_probed
    targets = np.maximum(k, np.ceil(rows_probed * share ** KEPT_EXPONENT)).astype(np.int64)

    walk = np.flatnonzero(~direct)
    if walk.shape[0]:
        n_walk = _lists_to_walk(backend, lists, ranked[walk], words, walk, targets[walk],
                                n_threads, memo)
        n_walk[share[walk] >= FULL_SHARE] = n_probes
        short = np.flatnonzero(n_walk < 0)
        if short.shape[0] and n_ranked < n_lists:
            # The kept rows are farther than a filter independent of the
            # data would put them: walk all lists.
            again = walk[short]
            ranked_all = engine.coarse_probes(queries[again], n_lists, n_threads)
            n_walk[short] = _lists_to_walk(backend, lists, ranked_all, words, again,
                                           targets[again], n_threads, memo)
        # Fewer kept rows than the target in all lists: scan them all.
        n_walk[n_walk < 0] = n_lists
        n_walk = _ladder(np.maximum(n_walk, n_probes), n_probes, n_lists)
        for count in np.unique(n_walk):
            group = walk[n_walk == count]
            distances[group], neighbors[group] = search_blocks(
                group, int(count), words[group] if per_query else words)

    direct_rows = np.flatnonzero(direct)
    if direct_rows.shape[0]:
        if per_query:
            found = [kept_rows(engine, lists, words[query]) for query in direct_rows]
            counts = [rows.shape[0] for rows, _ in found]
            row_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            rows = np.concatenate([rows for rows, _ in found])
            row_lists = np.concatenate([lists_of for _, lists_of in found])
        else:
            rows, row_lists = kept_rows(engine, lists, words[0])
            row_starts = np.asarray([0, rows.shape[0]], dtype=np.int64)
        distances[direct_rows], neighbors[direct_rows] = backend.search_rows(
            engine, prepared[direct_rows], lists, k, row_starts, rows,
            row_lists.astype(np.int64), n_threads, refine_ratio)
    return distances, neighbors
