"""End-to-end behaviour of ivfsq.neighbors.ivf_sq against exact truth."""

import threading

import numpy as np
import pytest
from conftest import METRICS, assert_all_probes_match_decoded, exact_knn, recall

from ivfsq.common import Resources
from ivfsq.datasets import find_shared_dataset, make_blobs_lowrank
from ivfsq.neighbors import filters, ivf_sq

N_LISTS = 48


@pytest.fixture(scope="module")
def indexes(blobs):
    base, _ = blobs
    return {
        metric: ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, metric=metric), base)
        for metric in METRICS
    }


# ------------------------------------------------------------------- params
def test_params_defaults_match_cuvs():
    params = ivf_sq.IndexParams()
    assert params.n_lists == 1024
    assert params.metric == "sqeuclidean"
    assert params.metric_arg == 2.0
    assert params.kmeans_n_iters == 20
    assert params.max_train_points_per_cluster == 256
    assert params.add_data_on_build is True
    assert params.conservative_memory_allocation is False
    assert params.quantizer == "sq8"
    assert ivf_sq.SearchParams().n_probes == 20
    assert "n_lists=1024" in repr(params)


def test_params_are_keyword_only_and_read_only():
    with pytest.raises(TypeError):
        ivf_sq.IndexParams(16)
    with pytest.raises(TypeError):
        ivf_sq.SearchParams(4)
    params = ivf_sq.IndexParams()
    with pytest.raises(AttributeError):
        params.n_lists = 3
    with pytest.raises(AttributeError):
        ivf_sq.SearchParams().n_probes = 3


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_lists": 0}, ValueError, "n_lists must be >= 1, got 0"),
        ({"n_lists": 2.5}, TypeError, "n_lists must be an int"),
        ({"n_lists": True}, TypeError, "n_lists must be an int"),
        ({"metric": "hamming"}, ValueError, r"metric must be one of \['sqeuclidean'"),
        ({"metric": 3}, TypeError, "metric must be a str"),
        ({"kmeans_n_iters": 0}, ValueError, "kmeans_n_iters must be >= 1"),
        ({"max_train_points_per_cluster": -1}, ValueError, "max_train_points_per_cluster"),
        ({"add_data_on_build": 1}, TypeError, "add_data_on_build must be a bool"),
        ({"conservative_memory_allocation": "no"}, TypeError, "conservative_memory_allocation"),
        ({"quantizer": "pq"}, ValueError, "quantizer must be one of"),
        ({"metric_arg": float("nan")}, ValueError, "metric_arg must be finite"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_index_params_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ivf_sq.IndexParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_probes": 0}, ValueError, "n_probes must be >= 1, got 0"),
        ({"n_probes": "8"}, TypeError, "n_probes must be an int"),
    ],
)
def test_search_params_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ivf_sq.SearchParams(**kwargs)


# ------------------------------------------------------------------- recall
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("metric", METRICS)
def test_recall_against_brute_force(blobs, metric, dtype):
    base, queries = blobs
    base = base.astype(dtype)
    queries = queries.astype(dtype)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, metric=metric), base)
    distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=12), index, queries, 10)
    assert distances.dtype == np.float32 and neighbors.dtype == np.int64
    assert distances.shape == neighbors.shape == (queries.shape[0], 10)
    _, truth = exact_knn(base.astype(np.float32), queries.astype(np.float32), 10, metric)
    # A correct IVF-SQ8 reaches ~0.97 here; a broken codec or scan is far lower.
    assert recall(neighbors, truth) >= 0.93
    # Best first, in the metric's own order.
    if metric == "inner_product":
        assert np.all(np.diff(distances, axis=1) <= 0)
    else:
        assert np.all(np.diff(distances, axis=1) >= 0)


@pytest.mark.parametrize("metric", METRICS)
def test_all_probes_equal_brute_force_over_decoded_vectors(blobs, indexes, metric):
    _, queries = blobs
    assert_all_probes_match_decoded(indexes[metric], queries, 10, 2e-5, 0.01)


@pytest.mark.parametrize("metric", METRICS)
def test_returned_distances_are_true_distances_of_decoded_vectors(blobs, indexes, metric):
    _, queries = blobs
    index = indexes[metric]
    distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=6), index, queries, 7)
    ids, decoded = index._engine.decoded_vectors()
    by_id = decoded[np.argsort(ids)]
    for row in range(0, queries.shape[0], 10):
        q = queries[row : row + 1]
        expected, _ = exact_knn(by_id[neighbors[row]], q, 7, metric)
        # exact_knn sorts again; compare as sorted sets of distances.
        got = np.sort(distances[row])
        np.testing.assert_allclose(got, np.sort(expected[0]), rtol=1e-4, atol=1e-4)


def test_single_query_equals_batch(blobs, indexes):
    _, queries = blobs
    index = indexes["sqeuclidean"]
    params = ivf_sq.SearchParams(n_probes=9)
    batch_d, batch_i = ivf_sq.search(params, index, queries[:20], 5)
    for row in range(20):
        d, i = ivf_sq.search(params, index, queries[row : row + 1], 5)
        # The batch may take the list-major path, whose sums round differently
        # in the last bit: ids agree except between candidates that tie.
        # |q|^2 + |x|^2 - 2 q.x cancels: the rounding scales with |q|^2.
        tolerance = 1e-5 * (1.0 + float(queries[row] @ queries[row]))
        np.testing.assert_allclose(d[0], batch_d[row], rtol=0, atol=tolerance)
        differ = i[0] != batch_i[row]
        assert np.all(np.abs(d[0] - batch_d[row])[differ] <= tolerance)


def test_thread_counts_give_same_results(blobs, indexes):
    _, queries = blobs
    index = indexes["inner_product"]
    params = ivf_sq.SearchParams(n_probes=9)
    one = ivf_sq.search(params, index, queries, 5, resources=Resources(n_threads=1))
    many = ivf_sq.search(params, index, queries, 5, resources=Resources(n_threads=3))
    np.testing.assert_array_equal(one[1], many[1])
    np.testing.assert_array_equal(one[0], many[0])


def test_inputs_of_other_dtypes_and_layouts(blobs, indexes):
    base, queries = blobs
    index = indexes["sqeuclidean"]
    params = ivf_sq.SearchParams(n_probes=8)
    reference = ivf_sq.search(params, index, queries, 5)
    as_f64 = ivf_sq.search(params, index, queries.astype(np.float64), 5)
    np.testing.assert_array_equal(reference[1], as_f64[1])
    fortran = np.asfortranarray(queries)
    np.testing.assert_array_equal(reference[1], ivf_sq.search(params, index, fortran, 5)[1])
    strided = np.repeat(queries, 2, axis=1)[:, ::2]
    np.testing.assert_array_equal(reference[1], ivf_sq.search(params, index, strided, 5)[1])


def test_uint8_dataset_like_sift():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(3000, 24), dtype=np.uint8)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), base)
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=16), index, base[:50], 1)
    np.testing.assert_array_equal(neighbors[:, 0], np.arange(50))


def test_outputs_written_in_place(blobs, indexes):
    _, queries = blobs
    index = indexes["sqeuclidean"]
    params = ivf_sq.SearchParams(n_probes=8)
    expected_d, expected_i = ivf_sq.search(params, index, queries, 4)
    neighbors = np.zeros((queries.shape[0], 4), dtype=np.int64)
    distances = np.zeros((queries.shape[0], 4), dtype=np.float32)
    out_d, out_i = ivf_sq.search(
        params, index, queries, 4, neighbors=neighbors, distances=distances
    )
    assert out_d is distances and out_i is neighbors
    np.testing.assert_array_equal(neighbors, expected_i)
    np.testing.assert_array_equal(distances, expected_d)


def test_cosine_zero_vectors_have_distance_one():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((500, 8)).astype(np.float32)
    base[:5] = 0.0
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=4, metric="cosine"), base)
    distances, neighbors = ivf_sq.search(
        ivf_sq.SearchParams(n_probes=4), index, np.zeros((1, 8), np.float32), 10
    )
    np.testing.assert_allclose(distances, 1.0, atol=1e-6)
    query = rng.standard_normal((1, 8)).astype(np.float32)
    distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=4), index, query, 500)
    zero_positions = np.isin(neighbors[0], np.arange(5))
    np.testing.assert_allclose(distances[0][zero_positions], 1.0, atol=1e-6)


def test_cosine_does_not_modify_caller_arrays(blobs):
    base, queries = blobs
    base = base.copy()
    queries = queries.copy()
    base_before, queries_before = base.copy(), queries.copy()
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, metric="cosine"), base)
    ivf_sq.search(ivf_sq.SearchParams(), index, queries, 3)
    np.testing.assert_array_equal(base, base_before)
    np.testing.assert_array_equal(queries, queries_before)


def test_siftsmall_recall():
    folder = find_shared_dataset("siftsmall")
    if folder is None:
        pytest.skip("shared siftsmall data not present")
    base = np.load(folder / "base.npy")
    queries = np.load(folder / "query.npy")
    truth = np.load(folder / "gt_l2.npy")[:, :10]
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=64), base)
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=16), index, queries, 10)
    assert recall(neighbors, truth) >= 0.95
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=64), index, queries, 10)
    assert recall(neighbors, truth) >= 0.97


# ------------------------------------------------------------------ filters
@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product"])
def test_filter_never_returns_removed_ids(blobs, indexes, metric):
    base, queries = blobs
    index = indexes[metric]
    rng = np.random.default_rng(5)
    keep = rng.random(base.shape[0]) < 0.3
    distances, neighbors = ivf_sq.search(
        ivf_sq.SearchParams(n_probes=N_LISTS),
        index,
        queries,
        10,
        filter=filters.from_bitset(keep),
    )
    assert keep[neighbors].all()
    # Filtering happens inside the scan: k kept neighbours, matching brute
    # force over the kept subset.
    kept_ids = np.flatnonzero(keep)
    _, truth = exact_knn(base[kept_ids], queries, 10, metric)
    assert recall(neighbors, kept_ids[truth]) >= 0.95


def test_bitset_words_match_boolean_mask(blobs, indexes):
    base, queries = blobs
    index = indexes["sqeuclidean"]
    keep = np.random.default_rng(6).random(base.shape[0]) < 0.5
    packed = np.packbits(keep, bitorder="little")
    words = np.pad(packed, (0, (-packed.size) % 4)).view(np.uint32)
    # Hand-check the cuVS bit layout: id i is bit i % 32 of word i // 32.
    for vid in (0, 31, 32, 77, base.shape[0] - 1):
        assert bool((words[vid // 32] >> (vid % 32)) & 1) == keep[vid]
    params = ivf_sq.SearchParams(n_probes=10)
    by_mask = ivf_sq.search(params, index, queries, 5, filter=filters.from_bitset(keep))
    by_words = ivf_sq.search(params, index, queries, 5, filter=filters.from_bitset(words))
    np.testing.assert_array_equal(by_mask[1], by_words[1])


@pytest.mark.parametrize("n_queries", [4, 64])  # a few queries, and a list-major batch
@pytest.mark.parametrize("metric, pad", [("sqeuclidean", np.inf), ("inner_product", -np.inf)])
def test_fewer_than_k_results_are_padded(blobs, indexes, metric, pad, n_queries):
    base, queries = blobs
    index = indexes[metric]
    keep = np.zeros(base.shape[0], dtype=bool)
    keep[[10, 20, 30]] = True
    distances, neighbors = ivf_sq.search(
        ivf_sq.SearchParams(n_probes=N_LISTS),
        index,
        queries[:n_queries],
        6,
        filter=filters.from_bitset(keep),
    )
    assert np.all(np.sort(neighbors[:, :3], axis=1) == [10, 20, 30])
    assert np.all(neighbors[:, 3:] == -1)
    assert np.all(distances[:, 3:] == pad)
    assert np.all(np.isfinite(distances[:, :3]))


def test_filter_errors(blobs, indexes):
    _, queries = blobs
    index = indexes["sqeuclidean"]
    params = ivf_sq.SearchParams()
    with pytest.raises(ValueError, match="filter must cover every id"):
        ivf_sq.search(params, index, queries, 3, filter=filters.from_bitset(np.ones(10, bool)))
    with pytest.raises(TypeError, match="filter must be created with"):
        ivf_sq.search(params, index, queries, 3, filter=np.ones(6000, bool))
    with pytest.raises(TypeError, match="bitset must have dtype uint32"):
        filters.from_bitset(np.ones(10, dtype=np.int64))
    with pytest.raises(ValueError, match="bitset must be a 1-D array"):
        filters.from_bitset(np.ones((2, 2), dtype=np.uint32))


# ------------------------------------------------------------------- extend
def test_extend_in_halves_matches_one_build(blobs):
    base, queries = blobs
    full = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), base)
    empty = ivf_sq.build(ivf_sq.IndexParams(n_lists=32, add_data_on_build=False), base)
    assert len(empty) == 0 and empty.trained
    half = base.shape[0] // 2
    ivf_sq.extend(empty, base[:half], np.arange(half, dtype=np.int64))
    ivf_sq.extend(empty, base[half:], np.arange(half, base.shape[0], dtype=np.int64))
    assert len(empty) == len(full) == base.shape[0]
    np.testing.assert_array_equal(empty.list_sizes, full.list_sizes)
    params = ivf_sq.SearchParams(n_probes=8)
    np.testing.assert_array_equal(
        ivf_sq.search(params, empty, queries, 10)[1], ivf_sq.search(params, full, queries, 10)[1]
    )


def test_extend_with_none_continues_after_largest_id(blobs):
    base, _ = blobs
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), base[:1000])
    ivf_sq.extend(index, base[1000:1010], np.arange(5000, 5010, dtype=np.int64))
    ivf_sq.extend(index, base[1010:1020], None)
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=16), index, base[1010:1020], 1)
    np.testing.assert_array_equal(neighbors[:, 0], np.arange(5010, 5020))
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=16), index, base[1000:1010], 1)
    np.testing.assert_array_equal(neighbors[:, 0], np.arange(5000, 5010))


def test_extend_rejects_bad_ids_and_leaves_index_unchanged(blobs):
    base, queries = blobs
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), base[:1000])
    params = ivf_sq.SearchParams(n_probes=4)
    before = ivf_sq.search(params, index, queries, 5)
    new = base[1000:1004]
    cases = [
        (np.array([1, 2, 2, 3]), ValueError, "duplicate ids, got id 2 twice"),
        (np.array([2000, 2001, 5, 2003]), ValueError, "id 5 which is already present"),
        (np.array([-1, 2001, 2002, 2003]), ValueError, "must be >= 0"),
        (np.array([1.0, 2.0, 3.0, 4.0]), TypeError, "integer dtype"),
        (np.arange(3), ValueError, r"expected shape \(4,\)"),
    ]
    for ids, error, match in cases:
        with pytest.raises(error, match=match):
            ivf_sq.extend(index, new, ids)
    bad_rows = new.copy()
    bad_rows[3, 2] = np.nan
    with pytest.raises(ValueError, match="new_vectors must contain only finite values"):
        ivf_sq.extend(index, bad_rows, np.arange(2000, 2004))
    with pytest.raises(ValueError, match="new_vectors must have dim=40"):
        ivf_sq.extend(index, new[:, :5], np.arange(2000, 2004))
    assert len(index) == 1000
    after = ivf_sq.search(params, index, queries, 5)
    np.testing.assert_array_equal(before[1], after[1])


@pytest.mark.parametrize("conservative", [False, True])
def test_extend_capacity_growth(blobs, conservative):
    base, _ = blobs
    params = ivf_sq.IndexParams(
        n_lists=8, add_data_on_build=False, conservative_memory_allocation=conservative
    )
    index = ivf_sq.build(params, base)
    for start in range(0, 3000, 300):
        ivf_sq.extend(index, base[start : start + 300], None)
        lists = index._engine.lists
        assert np.all(lists.list_capacities >= lists.list_sizes)
        if conservative:
            np.testing.assert_array_equal(lists.list_capacities, lists.list_sizes)
    assert len(index) == 3000
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=8), index, base[:3000:100], 1)
    np.testing.assert_array_equal(neighbors[:, 0], np.arange(0, 3000, 100))


# --------------------------------------------------------------- save/load
def test_save_load_round_trip(blobs, indexes, tmp_path):
    _, queries = blobs
    for metric, index in indexes.items():
        path = tmp_path / f"{metric}.ivfsq"
        ivf_sq.save(str(path), index)
        loaded = ivf_sq.load(str(path))
        assert (loaded.n_lists, loaded.dim, len(loaded), loaded.metric) == (
            index.n_lists,
            index.dim,
            len(index),
            metric,
        )
        np.testing.assert_array_equal(loaded.centers, index.centers)
        params = ivf_sq.SearchParams(n_probes=7)
        expected = ivf_sq.search(params, index, queries, 10)
        got = ivf_sq.search(params, loaded, queries, 10)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
        # A loaded index can be extended and saved again.
        ivf_sq.extend(loaded, queries[:3], None)
        assert len(loaded) == len(index) + 3


def test_memory_mapped_load_gives_same_results(blobs, indexes, tmp_path):
    _, queries = blobs
    path = tmp_path / "index.ivfsq"
    ivf_sq.save(path, indexes["sqeuclidean"])
    loaded = ivf_sq.load(path)
    mapped = ivf_sq.load(path, mmap=True)
    codes = mapped._engine.lists.codes
    assert not codes.flags.owndata and not codes.flags.writeable  # a read-only file map
    params = ivf_sq.SearchParams(n_probes=9)
    np.testing.assert_array_equal(
        ivf_sq.search(params, mapped, queries, 10)[1], ivf_sq.search(params, loaded, queries, 10)[1]
    )
    # Extending a mapped index copies its lists; the file is never written.
    before = path.read_bytes()
    ivf_sq.extend(mapped, queries[:5], None)
    assert len(mapped) == len(loaded) + 5
    assert path.read_bytes() == before


def test_load_rejects_corrupt_and_foreign_files(blobs, indexes, tmp_path):
    path = tmp_path / "index.ivfsq"
    ivf_sq.save(path, indexes["sqeuclidean"])
    data = path.read_bytes()
    truncated = tmp_path / "truncated.ivfsq"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        ivf_sq.load(truncated)
    flipped = bytearray(data)
    flipped[len(data) - 100] ^= 0x10
    corrupt = tmp_path / "corrupt.ivfsq"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        ivf_sq.load(corrupt)
    foreign = tmp_path / "foreign.npy"
    np.save(foreign, np.zeros(10))
    with pytest.raises(ValueError, match="not an ivfsq index"):
        ivf_sq.load(foreign)
    with pytest.raises(FileNotFoundError):
        ivf_sq.load(tmp_path / "missing.ivfsq")


def test_save_is_atomic_on_failure(blobs, indexes, tmp_path, monkeypatch):
    path = tmp_path / "index.ivfsq"
    ivf_sq.save(path, indexes["cosine"])
    before = path.read_bytes()
    from ivfsq.io import format as _format
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_format, "_write_section", explode)
    with pytest.raises(OSError, match="disk full"):
        ivf_sq.save(path, indexes["sqeuclidean"])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.ivfsq"]


# ------------------------------------------------------------------- errors
def test_untrained_index_accessors_raise():
    index = ivf_sq.Index()
    assert not index.trained and len(index) == 0
    for name in ("n_lists", "dim", "centers", "list_sizes", "memory_bytes"):
        with pytest.raises(ValueError, match="index is not trained"):
            getattr(index, name)
    with pytest.raises(ValueError, match="index is not trained"):
        ivf_sq.search(ivf_sq.SearchParams(), index, np.zeros((1, 4), np.float32), 1)
    with pytest.raises(ValueError, match="index is not trained"):
        ivf_sq.save("never-written.ivfsq", index)


@pytest.mark.parametrize(
    "queries, k, error, match",
    [
        (np.zeros((2, 39), np.float32), 5, ValueError, "queries must have dim=40 columns"),
        (np.zeros(40, np.float32), 5, ValueError, "queries must be a 2-D array"),
        (np.zeros((2, 40), bool), 5, TypeError, "queries must have a real numeric dtype"),
        (np.zeros((2, 40), np.complex64), 5, TypeError, "got dtype complex64"),
        (np.array([["a"] * 40]), 5, TypeError, "queries must have a real numeric dtype"),
        (np.full((2, 40), np.nan, np.float32), 5, ValueError, "NaN or inf in row 0"),
        (np.zeros((2, 40), np.float32), 0, ValueError, "k must be >= 1, got 0"),
        (np.zeros((2, 40), np.float32), 6001, ValueError, r"k must be <= the number .* \(6000\)"),
        (np.zeros((2, 40), np.float32), 2.0, TypeError, "k must be an int"),
        ("queries", 5, TypeError, "queries must be a 2-D array"),
    ],
)
def test_search_input_errors(indexes, queries, k, error, match):
    with pytest.raises(error, match=match):
        ivf_sq.search(ivf_sq.SearchParams(), indexes["sqeuclidean"], queries, k)


def test_search_argument_type_errors(blobs, indexes):
    _, queries = blobs
    index = indexes["sqeuclidean"]
    with pytest.raises(TypeError, match="search_params must be an ivf_sq.SearchParams"):
        ivf_sq.search(ivf_sq.IndexParams(), index, queries, 3)
    with pytest.raises(TypeError, match="index must be an ivf_sq.Index"):
        ivf_sq.search(ivf_sq.SearchParams(), "index", queries, 3)
    with pytest.raises(TypeError, match="neighbors must have dtype int64"):
        ivf_sq.search(
            ivf_sq.SearchParams(),
            index,
            queries,
            3,
            neighbors=np.zeros((queries.shape[0], 3), np.int32),
        )
    with pytest.raises(ValueError, match=r"distances must have shape \(120, 3\)"):
        ivf_sq.search(
            ivf_sq.SearchParams(), index, queries, 3, distances=np.zeros((3, 3), np.float32)
        )
    with pytest.raises(TypeError, match="resources must be an ivfsq.common.Resources"):
        ivf_sq.search(ivf_sq.SearchParams(), index, queries, 3, resources=4)


def test_build_input_errors():
    params = ivf_sq.IndexParams(n_lists=16)
    with pytest.raises(ValueError, match="dataset must have at least n_lists=16 rows, got 10"):
        ivf_sq.build(params, np.zeros((10, 4), np.float32))
    with pytest.raises(TypeError, match="index_params must be an ivf_sq.IndexParams"):
        ivf_sq.build({"n_lists": 16}, np.zeros((100, 4), np.float32))
    with pytest.raises(TypeError, match="dataset must have a real numeric dtype"):
        ivf_sq.build(params, np.zeros((100, 4), dtype=object))
    with pytest.raises(ValueError, match="dataset must have at least one row"):
        ivf_sq.build(params, np.zeros((0, 4), np.float32))
    data = np.random.default_rng(0).random((100, 4), dtype=np.float32)
    data[57, 1] = np.inf
    with pytest.raises(ValueError, match="dataset must contain only finite values"):
        ivf_sq.build(params, data)


def test_empty_query_batch(indexes):
    distances, neighbors = ivf_sq.search(
        ivf_sq.SearchParams(), indexes["sqeuclidean"], np.zeros((0, 40), np.float32), 3
    )
    assert distances.shape == neighbors.shape == (0, 3)


# ------------------------------------------------- determinism, concurrency
def test_build_is_deterministic(blobs):
    base, _ = blobs
    params = ivf_sq.IndexParams(n_lists=24, seed=11)
    first = ivf_sq.build(params, base)
    second = ivf_sq.build(params, base)
    np.testing.assert_array_equal(first.centers, second.centers)
    lists_a, lists_b = first._engine.lists, second._engine.lists
    np.testing.assert_array_equal(lists_a.codes, lists_b.codes)
    np.testing.assert_array_equal(lists_a.ids, lists_b.ids)
    other = ivf_sq.build(ivf_sq.IndexParams(n_lists=24, seed=12), base)
    assert not np.array_equal(first.centers, other.centers)


def test_concurrent_searches_equal_serial(blobs, indexes):
    _, queries = blobs
    index = indexes["cosine"]
    params = ivf_sq.SearchParams(n_probes=10)
    expected = [ivf_sq.search(params, index, queries[i : i + 7], 5) for i in range(0, 105, 7)]
    results = {}
    errors = []

    def worker(slot):
        try:
            for repeat in range(3):
                i = (slot * 7 + repeat * 21) % 105
                results[(slot, repeat)] = (i, ivf_sq.search(params, index, queries[i : i + 7], 5))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i, (distances, neighbors) in results.values():
        np.testing.assert_array_equal(neighbors, expected[i // 7][1])
        np.testing.assert_array_equal(distances, expected[i // 7][0])


def test_balanced_lists_and_memory_report(blobs, indexes):
    index = indexes["sqeuclidean"]
    assert index.list_sizes.sum() == len(index) == 6000
    assert (index.list_sizes > 0).all()
    assert 1.0 <= index.imbalance_factor < 2.0
    parts = index.memory_breakdown
    assert parts["codes"] == 6000 * 40 and parts["ids"] == 6000 * 8
    assert index.memory_bytes == sum(parts.values())


@pytest.mark.parametrize("metric", ["inner_product", "cosine"])
def test_inner_product_lists_hold_vectors_of_largest_center_dot(blobs, indexes, metric):
    # Lists are probed by the largest q.c, so each vector must sit in the list
    # whose center has the largest dot with it (not the L2-nearest one).
    index = indexes[metric]
    engine = index._engine
    lists = engine.lists
    labels = np.repeat(np.arange(lists.n_lists), lists.list_sizes)
    ids = lists.ids[lists.valid_rows()]
    base = blobs[0][ids].astype(np.float64)
    if metric == "cosine":
        base /= np.linalg.norm(base, axis=1, keepdims=True)
    dots = base @ engine.centers.T.astype(np.float64)
    best = dots.max(1)
    chosen = dots[np.arange(len(ids)), labels]
    np.testing.assert_allclose(chosen, best, rtol=1e-5, atol=1e-5)


def test_kmeans_splits_empty_clusters():
    # Half the rows are one repeated point: naive k-means leaves lists empty.
    rng = np.random.default_rng(2)
    base = np.concatenate(
        [np.zeros((2000, 8), np.float32), rng.standard_normal((2000, 8)).astype(np.float32)]
    )
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), base)
    assert np.count_nonzero(index.list_sizes == 0) <= 2
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=32), index, base[2000:2050], 1)
    np.testing.assert_array_equal(neighbors[:, 0], np.arange(2000, 2050))


def test_small_synthetic_recall_threshold_fails_for_broken_scan(blobs, monkeypatch):
    """The recall threshold used above really detects a broken codec."""
    base, queries = blobs
    from ivfsq.codecs import scalar as _quantizer
    original = _quantizer.ScalarQuantizer.weights

    def wrong_weights(self, q, n_threads=1):  # drops the per-dimension step: a classic bug
        return np.ascontiguousarray(q, dtype=np.float32) * np.float32(self.delta.mean())

    monkeypatch.setattr(_quantizer.ScalarQuantizer, "weights", wrong_weights)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=12), index, queries, 10)
    _, truth = exact_knn(base, queries, 10, "sqeuclidean")
    assert recall(neighbors, truth) < 0.93
    monkeypatch.setattr(_quantizer.ScalarQuantizer, "weights", original)


def test_many_dims_and_large_dataset_generator():
    base, queries = make_blobs_lowrank(2000, 130, n_queries=20, seed=1)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=20), base)
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=20), index, queries, 10)
    _, truth = exact_knn(base, queries, 10, "sqeuclidean")
    assert recall(neighbors, truth) >= 0.95


def test_search_during_extend_sees_a_consistent_index(blobs):
    base, queries = blobs
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), base[:2000])
    params = ivf_sq.SearchParams(n_probes=16)
    errors, results = [], []
    done = threading.Event()

    def searcher():
        try:
            while not done.is_set():
                results.append(ivf_sq.search(params, index, queries[:5], 5))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for start in range(2000, 5000, 300):
            ivf_sq.extend(index, base[start : start + 300], None)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors and results
    for distances, neighbors in results:
        assert np.all((neighbors >= 0) & (neighbors < 5000))
        assert np.all(np.diff(distances, axis=1) >= 0)
    final = ivf_sq.search(params, index, queries[:5], 5)
    _, truth = exact_knn(base[:5000], queries[:5], 5, "sqeuclidean")
    assert recall(final[1], truth) >= 0.9


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_build_and_search_leave_the_callers_arrays_alone(blobs, dtype, metric):
    base, queries = blobs
    base = (base[:1500] * 3).astype(dtype)  # not unit norm: cosine must normalize a copy
    queries = (queries[:20] * 3).astype(dtype)
    base_before, queries_before = base.copy(), queries.copy()
    for transform in (None, "rom"):
        index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, metric=metric, transform=transform),
                             base)
        ivf_sq.search(ivf_sq.SearchParams(n_probes=8), index, queries, 5)
        ivf_sq.extend(index, base[:10], None)
    np.testing.assert_array_equal(base, base_before)
    np.testing.assert_array_equal(queries, queries_before)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_build_reuses_training_lists_as_extend_would_assign(blobs, metric, monkeypatch):
    # When the training sample is the whole dataset, build adds the rows to
    # the lists found while training; extend assigns them itself: same index
    # (in several encoding batches, each taking its share of the lists).
    from ivfsq.ivf import engine as _ivf
    monkeypatch.setattr(_ivf, "ENCODE_BATCH_ROWS", 700)
    base, queries = blobs
    base = base[:3000]
    params = dict(n_lists=24, metric=metric, transform="rom")
    built = ivf_sq.build(ivf_sq.IndexParams(**params), base)
    empty = ivf_sq.build(ivf_sq.IndexParams(add_data_on_build=False, **params), base)
    extended = ivf_sq.extend(empty, base, np.arange(base.shape[0], dtype=np.int64))
    np.testing.assert_array_equal(built.list_sizes, extended.list_sizes)
    search = ivf_sq.SearchParams(n_probes=5)
    d1, i1 = ivf_sq.search(search, built, queries, 10)
    d2, i2 = ivf_sq.search(search, extended, queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
