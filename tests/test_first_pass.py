"""The 4-bit first pass (SearchParams(first_pass_candidates=...)): its block
kernel against a plain oracle, its layout, and searches that equal the exact
scan when every probed row is a candidate."""

import numpy as np
import pytest
from conftest import METRICS, assert_same_results, exact_knn
from numba import njit

from ivfsq.backends.cpu import fastscan
from ivfsq.backends.cpu.kernels import fastscan as kernel
from ivfsq.backends.cpu.kernels import simd
from ivfsq.common import Resources
from ivfsq.ivf.lists import ListStorage
from ivfsq.neighbors import filters, ivf_sq

N_LISTS = 16


@pytest.fixture(scope="module")
def data(blobs):
    base, queries = blobs
    return base[:3000], queries[:40]


def storage(codes, sizes, gaps=3, seed=0):
    """A ListStorage of ``codes`` in lists of ``sizes``, with spare rows
    between lists (as after ``extend``) holding garbage."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes, dtype=np.int64)
    capacities = sizes + gaps
    offsets = np.concatenate([[0], np.cumsum(capacities)[:-1]]).astype(np.int64)
    n_rows = int(capacities.sum())
    all_codes = rng.integers(0, 256, size=(n_rows, codes.shape[1]), dtype=np.uint8)
    aux = rng.random(n_rows).astype(np.float32)
    ids = np.full(n_rows, -1, dtype=np.int64)
    rows = np.concatenate([offsets[i] + np.arange(s) for i, s in enumerate(sizes)])
    all_codes[rows] = codes
    ids[rows] = np.arange(rows.shape[0])
    return ListStorage(all_codes, ids, aux, offsets, sizes, capacities), rows


@njit
def _all_block_scores(blocks, weights, aux, terms, worst, portable):
    int_weights = np.zeros(blocks.shape[1] * 2, dtype=np.int8)
    scale = kernel.first_pass_weights(weights, int_weights)
    quads = np.int64(blocks.shape[1] // (kernel.QUAD_GROUPS * kernel.GROUP_BYTES))
    out = np.empty((blocks.shape[0], kernel.BLOCK_ROWS), dtype=np.float32)
    masks = np.empty(blocks.shape[0], dtype=np.int32)
    alpha, beta, gamma, epsilon = terms
    for b in range(blocks.shape[0]):
        if portable:
            masks[b] = kernel.block_scores_portable(blocks, b, int_weights, quads, alpha, beta,
                                                    gamma, epsilon, aux, worst, out[b])
        else:
            masks[b] = kernel.block_scores(blocks, b, int_weights, quads, alpha, beta, gamma,
                                           epsilon, aux, worst, out[b])
    return scale, out, masks


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("dim", [1, 15, 16, 48, 50, 100, 384])
def test_block_scores_match_a_plain_oracle(portable, dim):
    rng = np.random.default_rng(dim)
    sizes = [37, 0, 16, 5, 1]
    codes = rng.integers(0, 256, size=(sum(sizes), dim), dtype=np.uint8)
    lists, rows = storage(codes, sizes)
    layout = fastscan.first_pass_layout(lists, dim)
    weights = rng.standard_normal(dim).astype(np.float32)
    terms = tuple(np.float32(value) for value in (0.25, 1.5, -0.5, 2.0))
    scale, out, masks = _all_block_scores(layout.blocks, weights, layout.aux, terms,
                                          np.float32(0.0), portable)
    # The oracle: int8 weights of 17 w / scale, integer sums of the 4-bit levels.
    levels = np.clip(np.rint(weights * kernel.LEVEL_STEP / scale), -127, 127).astype(np.int64)
    sums = (fastscan.four_bit_levels(codes).astype(np.int64) @ levels).astype(np.float32)
    aux = lists.aux[rows]
    alpha, beta, gamma, epsilon = terms
    expected = alpha + aux * (beta + gamma * sums) + epsilon * sums
    got = np.concatenate([out[layout.offsets[i]:layout.offsets[i + 1]].ravel()[:size]
                          for i, size in enumerate(sizes)])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-3)
    bits = np.concatenate([
        ((masks[layout.offsets[i]:layout.offsets[i + 1], None] >> np.arange(16)) & 1).ravel()
        [:size] for i, size in enumerate(sizes)])
    clear = np.abs(expected) > 1e-3  # rounding may decide the rows at the threshold
    np.testing.assert_array_equal(bits[clear], (expected <= 0)[clear])
    # A block's padding rows (NaN side values) never pass.
    for i, size in enumerate(sizes):
        if size % 16:
            last = masks[layout.offsets[i + 1] - 1]
            assert last >> (size % 16) == 0


def test_the_vector_kernel_is_the_one_that_runs_where_the_cpu_has_it():
    assert (kernel.block_scores is kernel.block_scores_portable) == (not simd.HAS_AVX2_DOTS)


def test_layout_holds_each_rows_levels_in_its_block():
    rng = np.random.default_rng(1)
    dim, sizes = 21, [3, 17, 0, 32]
    codes = rng.integers(0, 256, size=(sum(sizes), dim), dtype=np.uint8)
    lists, rows = storage(codes, sizes)
    layout = fastscan.first_pass_layout(lists, dim)
    np.testing.assert_array_equal(layout.offsets, [0, 1, 3, 3, 5])
    groups = kernel.n_quads(dim) * kernel.QUAD_GROUPS
    blocks = layout.blocks.reshape(-1, groups, 16, 2)
    levels = fastscan.four_bit_levels(codes)
    row = 0
    for i, size in enumerate(sizes):
        for r in range(size):
            block, lane = layout.offsets[i] + r // 16, r % 16
            packed = blocks[block, :, lane, :].reshape(-1)
            unpacked = np.stack([packed & 15, packed >> 4], axis=1).reshape(-1)
            np.testing.assert_array_equal(unpacked[:dim], levels[row])
            assert not unpacked[dim:].any()
            assert layout.aux[block, lane] == lists.aux[rows[row]]
            row += 1
        if size % 16:
            assert np.isnan(layout.aux[layout.offsets[i + 1] - 1, size % 16:]).all()
    assert np.array_equal(fastscan.four_bit_levels(np.array([0, 8, 9, 247, 255], np.uint8)),
                          [0, 0, 1, 15, 15])


def exact_and_first_pass(index, queries, k, n_probes, candidates, **kwargs):
    exact = ivf_sq.search(ivf_sq.SearchParams(n_probes=n_probes), index, queries, k, **kwargs)
    first = ivf_sq.search(
        ivf_sq.SearchParams(n_probes=n_probes, first_pass_candidates=candidates), index,
        queries, k, **kwargs)
    return exact, first


@pytest.mark.parametrize("quantizer", ["sq8", "sq8_uniform"])
@pytest.mark.parametrize("metric", METRICS)
def test_every_probed_row_a_candidate_gives_the_exact_scan(data, quantizer, metric):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, metric=metric,
                                            quantizer=quantizer), base)
    for n_threads, n_queries in ((1, 1), (1, 40), (2, 3), (2, 40)):
        resources = Resources(n_threads=n_threads)
        exact, first = exact_and_first_pass(index, queries[:n_queries], 10, 5, len(base),
                                            resources=resources)
        assert_same_results(first, exact, queries[:n_queries])


@pytest.mark.parametrize("case", ["no_residual", "rotation", "filter", "reorder", "extend"])
def test_first_pass_keeps_the_index_semantics(data, case):
    base, queries = data
    params = dict(n_lists=N_LISTS, metric="sqeuclidean")
    kwargs = {}
    if case == "no_residual":
        params["by_residual"] = False
    if case == "rotation":
        params["transform"] = "rom"
    if case == "reorder":
        params["reorder"] = True
    index = ivf_sq.build(ivf_sq.IndexParams(**params), base[:2000])
    if case == "filter":
        keep = np.zeros(len(base), dtype=bool)
        keep[np.random.default_rng(0).choice(2000, 300, replace=False)] = True
        kwargs["filter"] = filters.from_bitset(keep)
    if case == "extend":
        before = ivf_sq.search(ivf_sq.SearchParams(n_probes=6, first_pass_candidates=50),
                               index, queries, 10)
        index = ivf_sq.extend(index, base[2000:], np.arange(2000, len(base)))
        after = ivf_sq.search(ivf_sq.SearchParams(n_probes=6, first_pass_candidates=50),
                              index, queries, 10)
        assert (after[1] >= 2000).any() and not (before[1] >= 2000).any()
    exact, first = exact_and_first_pass(index, queries, 10, 6, len(base), **kwargs)
    assert_same_results(first, exact, queries)
    if case == "filter":
        assert keep[first[1]].all()


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_a_few_candidates_find_nearly_all_of_the_exact_top_k(data, metric):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, metric=metric), base)
    exact, first = exact_and_first_pass(index, queries, 10, 4, 50)
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(first[1], exact[1])])
    assert agree >= 0.97
    _, truth = exact_knn(base, queries, 10, metric)
    found = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(first[1], truth)])
    assert found >= 0.8
    # The returned distances are the exact scan's for the ids returned.
    common = first[1] == exact[1]
    np.testing.assert_allclose(first[0][common], exact[0][common], rtol=1e-5, atol=1e-5)


def test_memory_counts_the_first_pass_copy_once_made(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    assert index.memory_breakdown["first_pass"] == 0
    before = index.memory_bytes
    ivf_sq.search(ivf_sq.SearchParams(n_probes=2, first_pass_candidates=20), index, queries, 10)
    blocks = sum(-(-size // 16) for size in index._engine.lists.list_sizes)
    per_block = kernel.block_bytes(base.shape[1]) + 16 * 4
    assert index.memory_breakdown["first_pass"] == blocks * per_block + 8 * (N_LISTS + 1)
    assert index.memory_bytes == before + index.memory_breakdown["first_pass"]
    # A new snapshot (extend) has no copy until a search asks for one.
    index = ivf_sq.extend(index, base[:10], np.arange(len(base), len(base) + 10))
    assert index.memory_breakdown["first_pass"] == 0


def test_fewer_candidates_than_results_count_as_the_results(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    few = ivf_sq.search(ivf_sq.SearchParams(n_probes=4, first_pass_candidates=1), index,
                        queries, 10)
    ten = ivf_sq.search(ivf_sq.SearchParams(n_probes=4, first_pass_candidates=10), index,
                        queries, 10)
    np.testing.assert_array_equal(few[1], ten[1])
    assert (few[1] >= 0).all()


def test_first_pass_plans_and_refusals(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    params = ivf_sq.SearchParams(n_probes=4, first_pass_candidates=40)
    one = ivf_sq.search_plan(params, index, 1, resources=Resources(n_threads=1))
    assert (one.path, one.first_pass, one.int_filter) == ("few", 40, "off")
    many = ivf_sq.search_plan(params, index, 1000, resources=Resources(n_threads=2))
    assert many.path == "per_query"
    with pytest.raises(ValueError, match="scan must be one of 'auto', 'few', 'per_query'"):
        ivf_sq.search(ivf_sq.SearchParams(n_probes=4, first_pass_candidates=40,
                                          scan="list_major"), index, queries, 10)
    with pytest.raises(ValueError, match="first_pass_candidates must be >= 1, got 0"):
        ivf_sq.SearchParams(first_pass_candidates=0)
    with pytest.raises(TypeError, match="first_pass_candidates"):
        ivf_sq.SearchParams(first_pass_candidates=2.5)
    sq4 = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, quantizer="sq4"), base)
    with pytest.raises(ValueError, match="needs 8-bit codes .* got an index with 4-bit codes"):
        ivf_sq.search(params, sq4, queries, 10)


@njit
def _cut_copy(distances, keys, n_keep):
    d, k = distances.copy(), keys.copy()
    scratch = np.empty_like(d)
    kept, cutoff = kernel._cut(d, k, d.shape[0], n_keep, scratch)
    return d[:kept], k[:kept], cutoff


@pytest.mark.parametrize("n, n_keep, levels", [(2, 1, 0), (20, 10, 0), (80, 40, 0),
                                               (80, 40, 5), (33, 1, 3), (64, 63, 0)])
def test_the_candidate_cut_keeps_the_smallest(n, n_keep, levels):
    rng = np.random.default_rng(n + levels)
    distances = rng.random(n).astype(np.float32)
    if levels:
        distances = np.floor(distances * levels).astype(np.float32)  # many ties
    keys = np.arange(n, dtype=np.int64) * 7
    kept_d, kept_k, cutoff = _cut_copy(distances, keys, n_keep)
    assert kept_d.shape[0] == n_keep
    assert cutoff == np.sort(distances)[n_keep - 1]
    np.testing.assert_array_equal(np.sort(kept_d), np.sort(distances)[:n_keep])
    # Keys travel with their distances, in scan order; ties at the cut by order.
    np.testing.assert_array_equal(distances[kept_k // 7], kept_d)
    assert (np.diff(kept_k) > 0).all()
    tied = np.flatnonzero(distances == cutoff)
    assert set(kept_k[kept_d == cutoff] // 7) == set(tied[:np.sum(kept_d == cutoff)])
