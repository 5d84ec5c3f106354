"""Index lifecycle beyond the cuVS API: reconstruct and remove.

Oracles: search distances recomputed from reconstructed vectors (the
distances are exact for the stored codes), the quantization step for
un-clamped values, and, for remove, searches of the original index through
a filter that drops the removed ids.
"""

import numpy as np
import pytest
from conftest import METRICS

from ivfsq.datasets import make_blobs_lowrank
from ivfsq.neighbors import filters, ivf_sq

N_ROWS = 3000


@pytest.fixture(scope="module")
def data():
    base, queries = make_blobs_lowrank(N_ROWS, 40, n_queries=25, seed=7)
    return base, queries


def distances_to(queries, vectors, metric):
    q = queries.astype(np.float64)
    x = vectors.astype(np.float64)
    if metric in ("sqeuclidean", "euclidean"):
        d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
        return np.sqrt(d) if metric == "euclidean" else d
    if metric == "inner_product":
        return q @ x.T
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1)
    return 1.0 - (q @ x.T) / np.where(norms > 0, norms, 1.0)


@pytest.mark.parametrize("quantizer, transform", [("sq8", None), ("sq4", "rom"),
                                                   ("sq8_uniform", "rom"), ("sq4_uniform", None)])
@pytest.mark.parametrize("metric", METRICS)
def test_reconstructed_vectors_give_the_search_distances(data, metric, quantizer, transform):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20, metric=metric, quantizer=quantizer,
                                            transform=transform), base)
    distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=6), index, queries, 10)
    for row in range(0, queries.shape[0], 5):
        vectors = ivf_sq.reconstruct(index, neighbors[row])
        assert vectors.dtype == np.float32 and vectors.shape == (10, 40)
        expected = distances_to(queries[row:row + 1], vectors, metric)[0]
        scale = 1.0 + np.abs(expected).max()
        np.testing.assert_allclose(distances[row], expected, rtol=0, atol=2e-4 * scale)


def test_reconstruction_error_is_within_half_a_step(data):
    base, _ = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20, range_stat="minmax"), base)
    ids = np.arange(0, N_ROWS, 7)
    vectors = ivf_sq.reconstruct(index, ids)
    step = index._engine.quantizer.delta
    assert np.all(np.abs(vectors - base[ids]) <= step / 2 + 1e-5)
    # Repeats and order are kept; no ids gives no rows.
    twice = ivf_sq.reconstruct(index, np.array([5, 2, 5]))
    np.testing.assert_array_equal(twice[0], twice[2])
    np.testing.assert_array_equal(twice[1], ivf_sq.reconstruct(index, [2])[0])
    assert ivf_sq.reconstruct(index, np.zeros(0, np.int64)).shape == (0, 40)


def test_reconstruct_refuses_unknown_ids(data):
    base, _ = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20), base)
    with pytest.raises(ValueError, match="got id 3000, which is not"):
        ivf_sq.reconstruct(index, np.array([1, 3000]))
    with pytest.raises(ValueError, match="ids must be >= 0"):
        ivf_sq.reconstruct(index, np.array([-1]))
    with pytest.raises(TypeError, match="ids must have an integer dtype"):
        ivf_sq.reconstruct(index, np.array([1.5]))
    with pytest.raises(ValueError, match="ids must be a 1-D array"):
        ivf_sq.reconstruct(index, np.array([[1]]))


@pytest.mark.parametrize("reorder", [False, True])
@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_removed_vectors_are_never_returned(data, tmp_path, metric, reorder):
    base, queries = data
    params = ivf_sq.IndexParams(n_lists=20, metric=metric, reorder=reorder)
    index = ivf_sq.build(params, base)
    original = ivf_sq.build(params, base)
    rng = np.random.default_rng(0)
    removed = rng.choice(N_ROWS, size=900, replace=False)
    # Repeats and ids never added count once or not at all.
    asked = np.concatenate([removed, removed[:10], [N_ROWS + 5]])
    assert ivf_sq.remove(index, asked) == 900
    assert len(index) == N_ROWS - 900
    assert ivf_sq.remove(index, removed) == 0
    # Oracle: the untouched index searched through a filter without them.
    keep = np.ones(N_ROWS, dtype=bool)
    keep[removed] = False
    search = ivf_sq.SearchParams(n_probes=20)
    expected = ivf_sq.search(search, original, queries, 15, filter=filters.from_bitset(keep))
    got = ivf_sq.search(search, index, queries, 15)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)
    assert not np.isin(got[1], removed).any()
    # Saved and loaded, the removal holds.
    ivf_sq.save(tmp_path / "removed.ivfsq", index)
    loaded = ivf_sq.load(tmp_path / "removed.ivfsq")
    assert len(loaded) == N_ROWS - 900
    np.testing.assert_array_equal(ivf_sq.search(search, loaded, queries, 15)[1], got[1])
    with pytest.raises(ValueError, match="not"):
        ivf_sq.reconstruct(loaded, removed[:1])


def test_removed_ids_can_be_reused(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20), base)
    assert ivf_sq.remove(index, np.array([10, 11])) == 2
    with pytest.raises(ValueError, match="already present"):
        ivf_sq.extend(index, base[:1], np.array([12]))
    ivf_sq.extend(index, queries[:2], np.array([10, 11]))
    assert len(index) == N_ROWS
    # The new vectors are found under the reused ids, and None continues
    # after the largest id ever added.
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=20), index, queries[:2], 1)
    assert neighbors[:, 0].tolist() == [10, 11]
    ivf_sq.extend(index, queries[2:3], None)
    assert ivf_sq.reconstruct(index, [N_ROWS]).shape == (1, 40)


def test_remove_everything_then_extend(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20), base[:500])
    assert ivf_sq.remove(index, np.arange(500)) == 500
    assert len(index) == 0 and index.list_sizes.sum() == 0
    with pytest.raises(ValueError, match="k must be <="):
        ivf_sq.search(ivf_sq.SearchParams(n_probes=5), index, queries, 1)
    ivf_sq.extend(index, base[:50], None)
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=20), index, base[:5], 1)
    assert neighbors[:, 0].tolist() == list(range(500, 505))


def test_remove_validates_ids(data):
    base, _ = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20), base[:500])
    with pytest.raises(TypeError, match="index"):
        ivf_sq.remove("index", [1])
    with pytest.raises(ValueError, match="ids must be >= 0"):
        ivf_sq.remove(index, [-3])
    with pytest.raises(TypeError, match="ids must have an integer dtype"):
        ivf_sq.remove(index, np.array(["a"]))
    assert len(index) == 500


def test_tune_picks_the_fewest_probes_that_reach_the_target(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=40), base)
    params, points = ivf_sq.tune(index, queries, target_recall=0.9, k=10, first_pass=False)
    assert params.first_pass_candidates is None
    # Independent check: exact neighbours among the decoded vectors.
    decoded = ivf_sq.reconstruct(index, np.arange(N_ROWS))
    truth = np.argsort(distances_to(queries, decoded, "sqeuclidean"), axis=1)[:, :10]

    def recall(n_probes):
        _, found = ivf_sq.search(ivf_sq.SearchParams(n_probes=n_probes), index, queries, 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])

    assert recall(params.n_probes) >= 0.9
    smaller = [n for n in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if n < params.n_probes]
    if smaller:
        assert recall(smaller[-1]) < 0.9
    recalls = [point["recall"] for point in points]
    assert recalls == sorted(recalls) and recalls[-1] >= 0.9
    assert all(point["qps"] > 0 and point["refine_ratio"] is None for point in points)


def test_tune_sweeps_the_first_pass_for_8_bit_codes_and_picks_the_fastest(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=40), base)
    truth = np.argsort(distances_to(queries, base, "sqeuclidean"), axis=1)[:, :10]
    params, front = ivf_sq.tune(index, queries, target_recall=0.9, k=10, ground_truth=truth)
    assert params.first_pass_candidates in (None, 20, 40)
    _, found = ivf_sq.search(params, index, queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]) >= 0.9
    # The chosen point is on the measured front, and the fastest there that
    # reaches the target.
    reached = [point for point in front if point["recall"] >= 0.9]
    fastest = max(reached, key=lambda point: point["qps"])
    assert (fastest["n_probes"], fastest["first_pass_candidates"]) == (
        params.n_probes, params.first_pass_candidates)
    assert {point["first_pass_candidates"] for point in front} <= {None, 20, 40}
    sq4 = ivf_sq.build(ivf_sq.IndexParams(n_lists=40, quantizer="sq4"), base)
    with pytest.raises(ValueError, match="first_pass=True needs 8-bit codes"):
        ivf_sq.tune(sq4, queries, target_recall=0.9, k=10, first_pass=True)
    with pytest.raises(TypeError, match="first_pass must be a bool or None, got str"):
        ivf_sq.tune(index, queries, target_recall=0.9, k=10, first_pass="yes")
    params, _ = ivf_sq.tune(sq4, queries, target_recall=0.5, k=10)
    assert params.first_pass_candidates is None


def test_tune_with_given_ground_truth_and_a_precise_store(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=40, reorder=True), base)
    truth = np.argsort(distances_to(queries, base, "sqeuclidean"), axis=1)[:, :10]
    params, points = ivf_sq.tune(index, queries, target_recall=0.95, k=10, ground_truth=truth)
    assert params.refine_ratio in (1.0, 2.0, 4.0)
    _, found = ivf_sq.search(params, index, queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]) >= 0.95
    assert {point["refine_ratio"] for point in points} <= {1.0, 2.0, 4.0}


def test_tune_says_when_the_target_is_out_of_reach(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=10, quantizer="sq4"), base)
    # Raw-data ground truth: 4-bit codes cannot reach recall 1.0 here.
    truth = np.argsort(distances_to(queries, base, "sqeuclidean"), axis=1)[:, :10]
    with pytest.raises(ValueError, match=r"target_recall 1.0 is not reached: the best"):
        ivf_sq.tune(index, queries, target_recall=1.0, k=10, ground_truth=truth)
    with pytest.raises(ValueError, match="target_recall must be in"):
        ivf_sq.tune(index, queries, target_recall=1.5, k=10)
    with pytest.raises(ValueError, match="ground_truth must have shape"):
        ivf_sq.tune(index, queries, target_recall=0.9, k=10, ground_truth=truth[:, :5])
    with pytest.raises(TypeError, match="ground_truth must have an integer dtype"):
        ivf_sq.tune(index, queries, target_recall=0.9, k=10, ground_truth=truth * 1.0)
    with pytest.raises(ValueError, match="k must be <="):
        ivf_sq.tune(index, queries, target_recall=0.9, k=N_ROWS + 1)


@pytest.mark.parametrize("params", [{}, {"reorder": True}, {"quantizer": "sq4"}])
def test_k_up_to_1024(params):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((4000, 24)).astype(np.float32)
    queries = rng.standard_normal((40, 24)).astype(np.float32)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16, **params), base)
    decoded = ivf_sq.reconstruct(index, np.arange(4000))
    reference = base if params.get("reorder") else decoded
    truth = np.argsort(distances_to(queries, reference, "sqeuclidean"), axis=1)[:, :1024]
    for batch in (queries[:1], queries):  # the one-call path and the batch paths
        distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=16), index, batch, 1024)
        assert neighbors.shape == (batch.shape[0], 1024)
        assert np.all(np.diff(distances, axis=1) >= 0)
        overlap = [len(set(a) & set(b)) / 1024 for a, b in zip(neighbors, truth)]
        assert min(overlap) > 0.99  # all lists probed: exact up to ties


def test_a_million_queries_in_bounded_memory():
    import tracemalloc

    rng = np.random.default_rng(2)
    base = rng.standard_normal((2000, 8)).astype(np.float32)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), base)
    queries = rng.standard_normal((1_000_000, 8)).astype(np.float32)
    params = ivf_sq.SearchParams(n_probes=1)
    ivf_sq.search(params, index, queries[:20000], 10)
    tracemalloc.start()
    distances, neighbors = ivf_sq.search(params, index, queries, 10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    outputs = distances.nbytes + neighbors.nbytes  # 120 MB
    assert peak < outputs + 64 * 2**20  # blocks of queries, not whole-batch temporaries
    _, check = ivf_sq.search(params, index, queries[-5:], 10)
    np.testing.assert_array_equal(neighbors[-5:], check)


@pytest.mark.parametrize("params", [{}, dict(quantizer="sq4", transform="rom", reorder=True,
                                            precise_dtype="float16", metric="cosine")])
def test_merged_shards_equal_one_index(data, tmp_path, params):
    base, queries = data
    trained = ivf_sq.build(ivf_sq.IndexParams(n_lists=20, add_data_on_build=False, **params),
                           base)
    ivf_sq.save(tmp_path / "trained.ivfsq", trained)
    shards = [ivf_sq.load(tmp_path / "trained.ivfsq") for _ in range(3)]
    bounds = [0, 1000, 1700, N_ROWS]
    for shard, start, stop in zip(shards, bounds[:-1], bounds[1:]):
        ivf_sq.extend(shard, base[start:stop], np.arange(start, stop))
    merged = ivf_sq.merge(shards)
    assert len(merged) == N_ROWS and [len(s) for s in shards] == [1000, 700, 1300]
    whole = ivf_sq.build(ivf_sq.IndexParams(n_lists=20, **params), base)
    search = ivf_sq.SearchParams(n_probes=7)
    got, expected = ivf_sq.search(search, merged, queries, 10), ivf_sq.search(search, whole,
                                                                              queries, 10)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)
    ivf_sq.save(tmp_path / "merged.ivfsq", merged)
    again = ivf_sq.search(search, ivf_sq.load(tmp_path / "merged.ivfsq"), queries, 10)
    np.testing.assert_array_equal(again[1], got[1])
    # None continues after the largest id of any shard.
    ivf_sq.extend(merged, queries[:1], None)
    assert ivf_sq.reconstruct(merged, [N_ROWS]).shape == (1, 40)


def test_merge_refuses_what_cannot_be_mixed(data):
    base, _ = data
    params = dict(n_lists=20, add_data_on_build=False)
    first = ivf_sq.build(ivf_sq.IndexParams(**params), base)
    ivf_sq.extend(first, base[:10], np.arange(10))
    cases = [
        (ivf_sq.IndexParams(seed=1, **params), "different centers"),
        (ivf_sq.IndexParams(quantizer="sq4", **params), "different quantizer"),
        (ivf_sq.IndexParams(metric="inner_product", **params), "different metric"),
        (ivf_sq.IndexParams(reorder=True, **params), "different precise store"),
        (ivf_sq.IndexParams(n_lists=21, add_data_on_build=False), "different number of lists"),
    ]
    for other_params, message in cases:
        other = ivf_sq.build(other_params, base)
        with pytest.raises(ValueError, match=r"indexes\[1\] cannot be merged.*" + message):
            ivf_sq.merge([first, other])
    twin = ivf_sq.build(ivf_sq.IndexParams(**params), base)
    ivf_sq.extend(twin, base[10:20], np.arange(5, 15))
    with pytest.raises(ValueError, match="must not share ids, got id 5"):
        ivf_sq.merge([first, twin])
    with pytest.raises(ValueError, match="at least one index"):
        ivf_sq.merge([])
    with pytest.raises(TypeError, match=r"indexes\[1\] must be an ivf_sq.Index"):
        ivf_sq.merge([first, "x"])
    with pytest.raises(TypeError, match="indexes must be a sequence"):
        ivf_sq.merge(first)
    assert len(first) == 10 and len(twin) == 10


RANGE_RADII = {"sqeuclidean": 0.4, "euclidean": 0.65, "inner_product": 1.2, "cosine": 0.08}


def _within(distances, metric, radius):
    return distances >= radius if metric == "inner_product" else distances <= radius


@pytest.mark.parametrize("quantizer", ["sq8", "sq4"])
@pytest.mark.parametrize("metric", METRICS)
def test_range_search_equals_brute_force_on_decoded_vectors(data, metric, quantizer):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20, metric=metric, quantizer=quantizer),
                         base)
    radius = RANGE_RADII[metric]
    offsets, neighbors, distances = ivf_sq.range_search(
        ivf_sq.SearchParams(n_probes=20), index, queries, radius)
    assert offsets.shape == (queries.shape[0] + 1,) and offsets[-1] == neighbors.shape[0]
    assert neighbors.dtype == np.int64 and distances.dtype == np.float32
    exact = distances_to(queries, ivf_sq.reconstruct(index, np.arange(N_ROWS)), metric)
    scale = 1.0 + np.abs(exact).max()
    assert offsets[-1] > queries.shape[0]  # not vacuous: several results per query
    for row in range(queries.shape[0]):
        ids = neighbors[offsets[row]:offsets[row + 1]]
        got = distances[offsets[row]:offsets[row + 1]]
        np.testing.assert_allclose(got, exact[row, ids], rtol=0, atol=2e-4 * scale)
        order = -got if metric == "inner_product" else got
        assert np.all(np.diff(order) >= 0)  # best first
        # Every vector clearly inside the radius is found, none clearly outside.
        margin = 2e-4 * scale
        inside = np.flatnonzero(_within(exact[row], metric,
                                        radius + (margin if metric == "inner_product"
                                                  else -margin)))
        assert set(inside) <= set(ids)
        assert np.all(_within(exact[row, ids], metric,
                              radius - (margin if metric == "inner_product" else -margin)))


def test_range_search_with_a_precise_store_filter_and_few_probes(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20, reorder=True), base)
    radius = RANGE_RADII["sqeuclidean"]
    keep = np.ones(N_ROWS, dtype=bool)
    keep[::3] = False
    offsets, neighbors, distances = ivf_sq.range_search(
        ivf_sq.SearchParams(n_probes=20), index, queries, radius,
        filter=filters.from_bitset(keep))
    exact = distances_to(queries, base, "sqeuclidean")  # the precise store: raw vectors
    for row in range(queries.shape[0]):
        ids = neighbors[offsets[row]:offsets[row + 1]]
        expected = np.flatnonzero((exact[row] <= radius) & keep)
        assert sorted(ids) == sorted(expected)
        np.testing.assert_allclose(distances[offsets[row]:offsets[row + 1]], exact[row, ids],
                                   rtol=1e-5, atol=1e-6)
    # Fewer probes: a subset, and the k-NN results within the radius are in it.
    few = ivf_sq.SearchParams(n_probes=3)
    sub_offsets, sub_ids, _ = ivf_sq.range_search(few, index, queries, radius)
    knn_d, knn_i = ivf_sq.search(few, index, queries, 5)
    for row in range(queries.shape[0]):
        part = set(sub_ids[sub_offsets[row]:sub_offsets[row + 1]])
        assert part <= set(np.flatnonzero(exact[row] <= radius))
        assert set(knn_i[row][knn_d[row] <= radius * (1 - 1e-5)]) <= part
    empty = ivf_sq.range_search(few, index, queries[:0], radius)
    assert empty[0].tolist() == [0] and empty[1].shape == (0,)
    with pytest.raises(ValueError, match="radius must be finite"):
        ivf_sq.range_search(few, index, queries, float("inf"))


@pytest.mark.parametrize("quantizer", ["sq4", "sq8"])
def test_range_search_integer_filter_changes_nothing(quantizer):
    # 96-d rows (48 bytes for SQ4, 96 for SQ8): the scan's integer filter is
    # on, with the radius as its threshold.
    from ivfsq.backends.cpu.kernels import simd

    base, queries = make_blobs_lowrank(4000, 96, n_queries=30, seed=11)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16, quantizer=quantizer), base)
    search = ivf_sq.SearchParams(n_probes=5)
    distances, _ = ivf_sq.search(search, index, queries, 20)
    radius = float(np.median(distances[:, -1]))
    if not simd.HAS_INT_DOTS:
        pytest.skip("no AVX2 integer dots on this CPU")
    filters_run = ["int8", "int16"] if quantizer == "sq4" else ["int16"]
    without = ivf_sq.range_search(ivf_sq.SearchParams(n_probes=5, int_filter="off"), index,
                                  queries, radius)
    for int_filter in ["auto", *filters_run]:
        with_filter = ivf_sq.range_search(
            ivf_sq.SearchParams(n_probes=5, int_filter=int_filter), index, queries, radius
        )
        np.testing.assert_array_equal(with_filter[0], without[0])
        np.testing.assert_array_equal(with_filter[1], without[1])
        np.testing.assert_allclose(with_filter[2], without[2], rtol=1e-5, atol=1e-5)
    assert with_filter[0][-1] > 5 * queries.shape[0]
