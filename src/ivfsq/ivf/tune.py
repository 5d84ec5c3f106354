"""Picking search parameters for a target recall (``ivf_sq.tune``)."""

import math
import time

import numpy as np

from ivfsq.datasets import brute_force_knn, recall_at_k
from ivfsq.ivf import filtering

# n_probes tried (each about 1.5x the last) below n_lists, then n_lists.
_PROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                1024, 1536, 2048, 3072, 4096, 6144, 8192)
# refine_ratio values tried for an index with a precise store.
REFINE_RATIOS = (1.0, 2.0, 4.0)
# first_pass_candidates tried for 8-bit codes, as multiples of k (None: the
# exact scan).
FIRST_PASS_FACTORS = (None, 2, 4)


def variants(has_precise, first_pass, k):
    """The (refine_ratio, first_pass_candidates) pairs swept besides n_probes."""
    refine_ratios = REFINE_RATIOS if has_precise else (None,)
    factors = FIRST_PASS_FACTORS if first_pass else (None,)
    return [(ratio, None if factor is None else factor * k)
            for ratio in refine_ratios for factor in factors]


def stored_ground_truth(engine, queries, k, keep_words=None):
    """Exact top-k ids of ``queries`` among the stored vectors: the precise
    store when there is one (what re-ranking uses), else the decoded codes.
    With ``keep_words`` (bitsets, one row or one per query) among the kept
    ones only; rows where fewer than ``k`` pass end in -1."""
    ids, decoded = engine.decoded_vectors()
    vectors = decoded
    if engine.has_precise:
        lists = engine.lists
        vectors = lists.precise[lists.valid_rows()].astype(np.float32)
    metric = engine.metric.name
    if keep_words is None:
        _, rows = brute_force_knn(vectors, queries, min(k, ids.shape[0]), metric)
        return ids[rows]
    truth = np.full((queries.shape[0], k), -1, dtype=np.int64)
    groups = ([np.arange(queries.shape[0])] if keep_words.shape[0] == 1
              else [np.asarray([q]) for q in range(queries.shape[0])])
    lists = engine.lists
    valid_rows = lists.valid_rows()  # the rows of ids and vectors, ascending
    for group in groups:
        kept_rows, _ = filtering.kept_rows(engine, lists, keep_words[group[0]])
        kept = np.isin(valid_rows, kept_rows, assume_unique=True)
        n_found = min(k, int(kept.sum()))
        if n_found:
            _, rows = brute_force_knn(vectors[kept], queries[group], n_found, metric)
            truth[group, :n_found] = ids[kept][rows]
    return truth


def filtered_recall(found, truth, k):
    """recall@k over the true ids there are (a row of ``truth`` may end in
    -1 where a filter passes fewer than ``k``)."""
    valid = np.count_nonzero(np.asarray(truth)[:, :k] >= 0)
    if valid == 0:
        return 1.0
    return float(recall_at_k(found, truth, k) * k * truth.shape[0] / valid)


def choose(points, target_recall, k, by_qps):
    """The point that :func:`ivfsq.neighbors.ivf_sq.tune` returns: among
    those reaching ``target_recall``, the fastest (``by_qps``, where more
    than n_probes is swept: the refine ratio or the first pass trade recall
    for time) or the fewest ``n_probes`` (work grows with them, whatever
    timing noise says). ValueError naming the best recall when none
    reaches it."""
    reached = [point for point in points if point["recall"] >= target_recall]
    if not reached:
        best = max(points, key=lambda point: point["recall"])
        raise ValueError(
            f"target_recall {target_recall} is not reached: the best measured recall@{k} was "
            f"{best['recall']:.4f} (n_probes={best['n_probes']}, "
            f"refine_ratio={best['refine_ratio']}, "
            f"first_pass_candidates={best['first_pass_candidates']})"
        )
    if by_qps:
        return max(reached, key=lambda point: point["qps"])
    return min(reached, key=lambda point: point["n_probes"])


def probe_counts(n_lists):
    counts = [step for step in _PROBE_STEPS if step < n_lists]
    return counts + [n_lists]


def sweep(search, n_queries, truth, k, n_lists, target_recall, variants):
    """Measure ``search(n_probes, refine_ratio, first_pass_candidates)`` over
    increasing n_probes until every variant (a pair of the last two, see
    :func:`variants`) meets the target (or n_probes reaches n_lists).

    Returns the measured points, dicts of n_probes, refine_ratio,
    first_pass_candidates, recall, qps and seconds (the fastest of several
    timed runs after a warm one).
    """
    points = []
    pending = list(variants)
    for n_probes in probe_counts(n_lists):
        for variant in list(pending):
            refine_ratio, candidates = variant
            neighbors = search(n_probes, refine_ratio, candidates, n_queries)  # warm
            seconds = _best_time(lambda: search(n_probes, refine_ratio, candidates, n_queries))
            recall = filtered_recall(neighbors, truth, k)
            points.append({"n_probes": n_probes, "refine_ratio": refine_ratio,
                           "first_pass_candidates": candidates, "recall": recall,
                           "qps": n_queries / seconds, "seconds": seconds})
            if recall >= target_recall or math.isclose(recall, 1.0):
                pending.remove(variant)
        if not pending:
            break
    return points


def _best_time(call, min_seconds=0.05, max_runs=20):
    """Fastest of at least 3 runs, repeated until ``min_seconds`` in all."""
    times = []
    while len(times) < 3 or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return max(min(times), 1e-9)


def pareto_front(points):
    """Points not beaten on both recall and QPS, by increasing recall."""
    front = []
    for point in sorted(points, key=lambda p: (-p["qps"], -p["recall"])):
        if not front or point["recall"] > front[-1]["recall"]:
            front.append(point)
    return sorted(front, key=lambda p: p["recall"])
