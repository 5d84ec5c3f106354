"""Filtered search keeps its promise: k results whenever k stored ids pass,
and recall against the exact filtered neighbours close to the unfiltered
recall at the same n_probes, at every selectivity."""

import numpy as np
import pytest
from conftest import exact_knn, recall

from ivfsq.datasets import make_blobs_lowrank
from ivfsq.ivf import filtering
from ivfsq.neighbors import filters, ivf_sq

K = 10


@pytest.fixture(scope="module")
def data():
    return make_blobs_lowrank(20000, 32, n_queries=150, seed=11)


@pytest.fixture(scope="module")
def indexes(data):
    base, _ = data
    return {
        metric: ivf_sq.build(ivf_sq.IndexParams(n_lists=128, metric=metric), base)
        for metric in ("sqeuclidean", "cosine")
    }


def filtered_truth(base, queries, keep, metric):
    """Exact k nearest kept ids (fewer where fewer are kept)."""
    kept = np.flatnonzero(keep)
    _, rows = exact_knn(base[kept], queries, min(K, kept.shape[0]), metric)
    return kept[rows]


def selectivity_cases(base, seed=3):
    rng = np.random.default_rng(seed)
    n = base.shape[0]
    cases = {f"share {share}": rng.random(n) < share for share in (1.0, 0.1, 0.01, 0.001)}
    cases["share 0.0002"] = np.zeros(n, dtype=bool)
    cases["share 0.0002"][rng.choice(n, size=4, replace=False)] = True
    # 300 ids together in one region (the nearest to one stored vector).
    center = base[rng.integers(n)]
    clustered = np.zeros(n, dtype=bool)
    clustered[np.argsort(((base - center) ** 2).sum(1))[:300]] = True
    cases["clustered"] = clustered
    return cases


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("first_pass", [None, 20])
def test_the_promise_at_every_selectivity(data, indexes, metric, first_pass):
    base, queries = data
    index = indexes[metric]
    params = ivf_sq.SearchParams(n_probes=6, first_pass_candidates=first_pass)
    _, unfiltered = ivf_sq.search(params, index, queries, K)
    truth_all = exact_knn(base, queries, K, metric)[1]
    unfiltered_recall = recall(np.asarray(unfiltered), truth_all)
    assert unfiltered_recall < 0.99  # n_probes that leaves room to lose
    for name, keep in selectivity_cases(base).items():
        _, found = ivf_sq.search(params, index, queries, K, filter=filters.from_bitset(keep))
        found = np.asarray(found)
        truth = filtered_truth(base, queries, keep, metric)
        assert np.isin(found[found >= 0], np.flatnonzero(keep)).all(), name
        if keep.sum() >= K:
            assert (found >= 0).all(), f"{name}: padded although {keep.sum()} ids pass"
            assert recall(found, truth) >= unfiltered_recall - 0.02, name
        else:
            # Fewer than k pass: exactly those, then padding.
            assert set(found[0][found[0] >= 0]) == set(np.flatnonzero(keep)), name
            assert (found[:, keep.sum():] == -1).all(), name


def test_fewer_kept_than_k_returns_them_then_padding(data, indexes):
    base, queries = data
    keep = np.zeros(base.shape[0], dtype=bool)
    keep[[5, 900, 19999]] = True
    distances, found = ivf_sq.search(ivf_sq.SearchParams(n_probes=1), indexes["sqeuclidean"],
                                      queries, K, filter=filters.from_bitset(keep))
    found, distances = np.asarray(found), np.asarray(distances)
    assert all(set(row[:3]) == {5, 900, 19999} for row in found)
    assert (found[:, 3:] == -1).all() and np.isinf(distances[:, 3:]).all()
    assert np.isfinite(distances[:, :3]).all()


@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product", "cosine"])
@pytest.mark.parametrize("quantizer", ["sq8", "sq4"])
def test_scoring_kept_rows_directly_equals_the_scan_of_every_list(data, metric, quantizer):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=64, metric=metric, quantizer=quantizer),
                         base[:5000])
    keep = np.zeros(5000, dtype=bool)
    keep[np.random.default_rng(1).choice(5000, size=40, replace=False)] = True
    words = filters.from_bitset(keep).rows(30, 5000)  # as search passes them
    engine = index._engine
    prepared = engine.prepare("queries", queries[:30])[0]
    # Few kept ids at 4 probes: scored directly (no list is scanned) ...
    direct_d, direct_i = engine.search(prepared, K, 4, words, 2)
    # ... and the same as scanning every list with the filter.
    scan_d, scan_i = engine._search_blocks(prepared, K, 64, words, 2, 1.0, "auto", "auto",
                                           "cpu", 0)
    np.testing.assert_allclose(direct_d, scan_d, rtol=1e-5, atol=1e-5)
    assert (direct_i == scan_i).mean() > 0.99


def test_few_kept_ids_with_a_precise_store_are_exact(data):
    base, queries = data
    index = ivf_sq.build(
        ivf_sq.IndexParams(n_lists=64, quantizer="sq4", reorder=True), base[:5000])
    keep = np.zeros(5000, dtype=bool)
    keep[np.random.default_rng(2).choice(5000, size=60, replace=False)] = True
    params = ivf_sq.SearchParams(n_probes=2, refine_ratio=2.0)
    distances, found = ivf_sq.search(params, index, queries, K, filter=filters.from_bitset(keep))
    kept = np.flatnonzero(keep)
    truth_d, rows = exact_knn(base[kept], queries, K, "sqeuclidean")
    # Re-ranked on the precise store: the exact neighbours among the
    # kept ids' refine_ratio * k best code scores.
    assert recall(np.asarray(found), kept[rows]) > 0.97
    np.testing.assert_allclose(np.sort(np.asarray(distances), axis=1)[:, 0], truth_d[:, 0],
                               rtol=1e-4, atol=1e-3)


def test_the_walk_after_extend_and_remove(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=64), base[:8000])
    index = ivf_sq.extend(index, base[8000:12000], np.arange(8000, 12000))
    ivf_sq.remove(index, np.arange(0, 12000, 3))
    stored = np.ones(12000, dtype=bool)
    stored[np.arange(0, 12000, 3)] = False
    rng = np.random.default_rng(4)
    for share in (0.3, 0.03, 0.003):
        keep = rng.random(12000) < share  # removed ids among them
        _, found = ivf_sq.search(ivf_sq.SearchParams(n_probes=4), index, queries, K,
                                 filter=filters.from_bitset(keep))
        found = np.asarray(found)
        passing = keep & stored
        assert np.isin(found[found >= 0], np.flatnonzero(passing)).all()
        assert (found >= 0).all()
        truth = filtered_truth(base[:12000], queries, passing, "sqeuclidean")
        assert recall(found, truth) > 0.9


def test_lists_to_walk_counts_kept_rows(data, indexes):
    base, queries = data
    index = indexes["sqeuclidean"]
    engine = index._engine
    lists = engine.lists
    keep = np.random.default_rng(5).random(base.shape[0]) < 0.05
    words = filters.from_bitset(keep).rows(30, 5000)  # as search passes them
    prepared = engine.prepare("queries", queries[:20])[0]
    ranked = engine.coarse_probes(prepared, 128, 1)
    targets = np.arange(20, dtype=np.int64) * 7 + 1
    from ivfsq.backends.cpu import search as cpu

    n_lists, seen = cpu.lists_to_walk(lists, ranked, words, targets, 2)
    ids_by_list = [lists.ids[lists.list_offsets[l]: lists.list_offsets[l] + lists.list_sizes[l]]
                   for l in range(128)]
    for i in range(20):
        counts = np.cumsum([keep[ids_by_list[l]].sum() for l in ranked[i]])
        assert n_lists[i] == int(np.argmax(counts >= targets[i])) + 1
        assert seen[i] == counts[n_lists[i] - 1]
    # One bitset for all queries: counted per list once, the same walks.
    np.testing.assert_array_equal(
        filtering._lists_to_walk(cpu, lists, ranked, words, np.arange(20), targets, 2), n_lists)
    assert cpu.count_kept(words, base.shape[0])[0] == keep.sum()
    # Bits past the ids counted are not counted.
    assert cpu.count_kept(words, 37)[0] == keep[:37].sum()


def test_ladder_rounds_up_and_stops_at_every_list():
    counts = np.array([4, 5, 6, 7, 30, 64, 64])
    rounded = filtering._ladder(counts, 4, 64)
    assert (rounded >= counts).all() and (rounded <= 64).all()
    assert rounded[0] == 4 and rounded[-1] == 64
    assert len(np.unique(filtering._ladder(np.arange(4, 65), 4, 64))) < 20


def per_query_masks(base, n_queries, seed=6):
    """One keep-mask per query, cycling through the selectivity cases."""
    cases = list(selectivity_cases(base, seed).values())
    return np.stack([cases[i % len(cases)] for i in range(n_queries)])


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_per_query_bitmaps_keep_the_promise_per_query(data, indexes, metric):
    base, queries = data
    index = indexes[metric]
    params = ivf_sq.SearchParams(n_probes=6)
    masks = per_query_masks(base, queries.shape[0])
    _, unfiltered = ivf_sq.search(params, index, queries, K)
    unfiltered_recall = recall(np.asarray(unfiltered), exact_knn(base, queries, K, metric)[1])
    _, found = ivf_sq.search(params, index, queries, K, filter=filters.from_bitmap(masks))
    found = np.asarray(found)
    n_cases = len(selectivity_cases(base))
    for case in range(n_cases):
        rows = np.arange(case, queries.shape[0], n_cases)
        keep = masks[rows[0]]
        got = found[rows]
        assert np.isin(got[got >= 0], np.flatnonzero(keep)).all()
        if keep.sum() >= K:
            assert (got >= 0).all()
            truth = filtered_truth(base, queries[rows], keep, metric)
            assert recall(got, truth) >= unfiltered_recall - 0.03
        else:
            assert (got[:, keep.sum():] == -1).all()


@pytest.mark.parametrize("search", [
    dict(), dict(scan="few"), dict(scan="per_query"), dict(scan="per_list"),
    dict(scan="list_major"), dict(first_pass_candidates=20),
])
def test_a_bitmap_equals_each_query_with_its_own_bitset(data, indexes, search):
    base, queries = data
    index = indexes["sqeuclidean"]
    params = ivf_sq.SearchParams(n_probes=6, **search)
    masks = per_query_masks(base, 24, seed=8)
    bitmap_d, bitmap_i = ivf_sq.search(params, index, queries[:24], K,
                                       filter=filters.from_bitmap(masks))
    for q in range(24):
        one_d, one_i = ivf_sq.search(params, index, queries[q : q + 1], K,
                                     filter=filters.from_bitset(masks[q]))
        np.testing.assert_array_equal(bitmap_i[q], one_i[0])
        np.testing.assert_allclose(bitmap_d[q], one_d[0], rtol=1e-6)
    # The same bitmap as uint32 rows and in cuVS's flat layout.
    words = filters.from_bitmap(masks).bitset
    assert words.shape == (24, -(-base.shape[0] // 32))
    _, rows_i = ivf_sq.search(params, index, queries[:24], K,
                              filter=filters.from_bitmap(np.array(words)))
    flat = np.packbits(masks.reshape(-1), bitorder="little")
    flat = np.pad(flat, (0, (-flat.size) % 4)).view(np.uint32)
    _, flat_i = ivf_sq.search(params, index, queries[:24], K, filter=filters.from_bitmap(flat))
    np.testing.assert_array_equal(rows_i, bitmap_i)
    np.testing.assert_array_equal(flat_i, bitmap_i)


def test_a_list_major_plan_refuses_per_query_bitsets(data, indexes):
    base, queries = data
    engine = indexes["sqeuclidean"]._engine
    lists = engine.lists
    plan = engine.plan(lists, 300, 6, 2, scan="list_major")
    assert plan.path == "list_major"
    from ivfsq.backends.cpu import search as cpu

    words = filters.from_bitmap(per_query_masks(base, 10)).bitset
    prepared = engine.prepare("queries", queries[:10])[0]
    with pytest.raises(ValueError, match="per-query bitsets"):
        cpu.search_block(engine, plan, prepared, lists, K, 6, words, 2, 1.0)


def test_range_search_with_a_bitmap(data, indexes):
    base, queries = data
    index = indexes["sqeuclidean"]
    params = ivf_sq.SearchParams(n_probes=8)
    masks = per_query_masks(base, 12, seed=9)
    radius = float(np.median(exact_knn(base, queries[:12], 50, "sqeuclidean")[0][:, -1]))
    offsets, ids, distances = ivf_sq.range_search(params, index, queries[:12], radius,
                                                  filter=filters.from_bitmap(masks))
    for q in range(12):
        one = ivf_sq.range_search(params, index, queries[q : q + 1], radius,
                                  filter=filters.from_bitset(masks[q]))
        got = ids[offsets[q] : offsets[q + 1]]
        np.testing.assert_array_equal(np.sort(got), np.sort(one[1]))
        assert np.isin(got, np.flatnonzero(masks[q])).all()


def test_tune_with_a_filter_reaches_the_target_on_filtered_truth(data, indexes):
    base, queries = data
    index = indexes["sqeuclidean"]
    keep = np.random.default_rng(10).random(base.shape[0]) < 0.05
    keep_filter = filters.from_bitset(keep)
    params, points = ivf_sq.tune(index, queries, target_recall=0.95, k=K, filter=keep_filter,
                                 first_pass=False)
    _, found = ivf_sq.search(params, index, queries, K, filter=keep_filter)
    # The tuned recall is that of the filtered search against the exact
    # neighbours among the kept (decoded) vectors.
    engine = index._engine
    truth = ivf_sq._tune.stored_ground_truth(engine, engine.prepare("q", queries)[0], K,
                                             keep_filter.bitset.reshape(1, -1))
    assert np.isin(truth, np.flatnonzero(keep)).all()
    assert recall(np.asarray(found), truth) >= 0.95
    assert points[-1]["recall"] >= 0.95
    # A bitmap where one query keeps 3 ids: its truth has 3, and recall
    # counts those (the target is reachable).
    masks = np.repeat(keep[None], 20, axis=0)
    masks[0] = False
    masks[0, [7, 70, 700]] = True
    params, points = ivf_sq.tune(index, queries[:20], target_recall=0.95, k=K,
                                 filter=filters.from_bitmap(masks), first_pass=False)
    assert points[-1]["recall"] >= 0.95
    with pytest.raises(ValueError, match="one row per query"):
        ivf_sq.tune(index, queries[:21], target_recall=0.9, k=K, filter=filters.from_bitmap(masks))


def test_a_filter_keeps_its_counts_per_snapshot_of_the_lists(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), base[:5000])
    keep = np.zeros(6000, dtype=bool)
    keep[::4] = True  # 25 %: its queries walk
    keep_filter = filters.from_bitset(keep)
    params = ivf_sq.SearchParams(n_probes=2)
    first = ivf_sq.search(params, index, queries, K, filter=keep_filter)[1]
    snapshot, counts = keep_filter._memo["kept per list"]
    assert snapshot() is index._engine.lists
    # The counts are the kept rows of each list.
    lists = index._engine.lists
    for lst in range(32):
        rows = slice(lists.list_offsets[lst], lists.list_offsets[lst] + lists.list_sizes[lst])
        assert counts[lst] == keep[lists.ids[rows]].sum()
    np.testing.assert_array_equal(ivf_sq.search(params, index, queries, K, filter=keep_filter)[1],
                                  first)
    # New rows make a new snapshot: counted again, and the kept new ids found.
    ivf_sq.extend(index, base[5000:6000], np.arange(5000, 6000))
    _, found = ivf_sq.search(params, index, queries, K, filter=keep_filter)
    assert keep_filter._memo["kept per list"][0]() is index._engine.lists
    assert (found >= 5000).any() and keep[found].all()
    truth = filtered_truth(base[:6000], queries, keep, "sqeuclidean")
    assert recall(found, truth) > 0.9
