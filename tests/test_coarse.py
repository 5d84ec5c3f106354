"""The coarse lower bound (ivfsq.ivf.coarse): it never exceeds the exact score,
the bounded selection picks the exact best lists, and search results do not
change when it is used."""

import numpy as np
import pytest
from conftest import METRICS

from ivfsq.backends.cpu.kernels import coarse
from ivfsq.common import Resources
from ivfsq.datasets import make_blobs_lowrank
from ivfsq.ivf import coarse as _coarse
from ivfsq.ivf.coarse import CoarseBound
from ivfsq.neighbors import ivf_sq


def low_rank_centers(n_lists=300, dim=192, seed=0):
    return make_blobs_lowrank(n_lists, dim, intrinsic_dim=6, seed=seed)


def mixed_queries(centers, seed=1):
    """Queries near the centers, far off their subspace, zero and large."""
    rng = np.random.default_rng(seed)
    n_lists, dim = centers.shape
    near = centers[rng.integers(0, n_lists, 40)] + 0.05 * rng.standard_normal((40, dim))
    scale = float(np.abs(centers).max())
    off = scale * rng.standard_normal((20, dim))
    return np.ascontiguousarray(
        np.vstack([near, off, np.zeros((1, dim)), 1e3 * near[:3]]), dtype=np.float32
    )


def exact_scores(queries, centers, inner_product):
    q = queries.astype(np.float64)
    c = centers.astype(np.float64)
    if inner_product:
        return -(q @ c.T)
    return (c * c).sum(axis=1)[None, :] - 2.0 * (q @ c.T)


def bound_scores(bound, queries):
    query_aug, query_terms = bound.query_parts(queries)
    dots = query_aug.astype(np.float64) @ bound.center_aug.T.astype(np.float64)
    return query_terms[:, None] + bound.center_terms[None, :] + float(bound.scale) * dots


def bounded_selection(bound, queries, centers, inner_product, n_probes):
    n_queries = queries.shape[0]
    scores = np.empty((n_queries, n_probes), dtype=np.float32)
    probes = np.empty((n_queries, n_probes), dtype=np.int64)
    query_aug, query_terms = bound.query_parts(queries)
    coarse.select_probes_bounded(
        queries, centers, np.einsum("ij,ij->i", centers, centers), not inner_product,
        query_aug @ bound.center_aug.T, query_terms, bound.center_terms, bound.scale,
        scores, probes,
    )
    return scores, probes


@pytest.mark.parametrize("n_lists", [300, 100])  # more and fewer lists than dimensions
@pytest.mark.parametrize("inner_product", [False, True])
def test_bound_never_exceeds_the_exact_score(inner_product, n_lists):
    centers = low_rank_centers(n_lists=n_lists)
    bound = CoarseBound.build(centers, inner_product)
    assert bound is not None and bound.rank < centers.shape[1] // 4
    queries = mixed_queries(centers)
    exact = exact_scores(queries, centers, inner_product)
    lower = bound_scores(bound, queries)
    magnitude = np.abs(exact).max(axis=1, keepdims=True) + 1.0
    assert np.all(lower <= exact + 1e-6 * magnitude)
    # Not vacuous: near the centers the bound is close to the exact score.
    gap = (exact - lower)[:40] / magnitude[:40]
    assert np.median(gap) < 0.05


@pytest.mark.parametrize("n_lists", [300, 100])
@pytest.mark.parametrize("inner_product", [False, True])
@pytest.mark.parametrize("n_probes", [1, 5, 17])
def test_bounded_selection_is_the_exact_selection(inner_product, n_probes, n_lists):
    centers = low_rank_centers(n_lists=n_lists, seed=3)
    bound = CoarseBound.build(centers, inner_product)
    queries = mixed_queries(centers, seed=4)
    scores, probes = bounded_selection(bound, queries, centers, inner_product, n_probes)
    exact = exact_scores(queries, centers, inner_product)
    oracle = np.sort(exact, axis=1)[:, :n_probes]
    picked = np.take_along_axis(exact, probes, axis=1)
    magnitude = np.abs(exact).max(axis=1, keepdims=True) + 1.0
    # The picked lists' exact scores are the n_probes best, best first
    # (lists may differ only where scores tie within rounding).
    np.testing.assert_allclose(picked, oracle, rtol=0, atol=1e-5 * magnitude.max())
    assert np.all(np.diff(picked, axis=1) >= -1e-5 * magnitude)
    assert all(len(set(row)) == n_probes for row in probes.tolist())


def lexicographic_best(scores, n_probes):
    """The n_probes lists of smallest (score, list number), best first."""
    numbers = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.lexsort((numbers, scores), axis=1)[:, :n_probes]


@pytest.mark.parametrize("n_probes", [2, 3, coarse.SELECT_INSERTION_MAX,
                                      coarse.SELECT_INSERTION_MAX + 1, 30])
def test_probe_selection_orders_infinities_and_nan_last(n_probes):
    # 40 lists give 5 groups, too few for 2 probes or more: insertion up
    # to SELECT_INSERTION_MAX probes, sort keys beyond. Both rank -0.0
    # with 0.0, then +inf, then NaN, each tie by list number.
    rng = np.random.default_rng(n_probes)
    scores = rng.integers(-3, 4, (20, 40)).astype(np.float32)
    scores[:, ::7] = np.inf
    scores[:, 3::9] = np.nan
    scores[:, 5::11] = -0.0
    out_scores = np.empty((20, n_probes), np.float32)
    out_lists = np.empty((20, n_probes), np.int64)
    coarse.select_probes(-scores, np.zeros(40, np.float32), False, out_scores, out_lists)
    ranks = np.where(np.isnan(scores), 2, np.where(np.isinf(scores), 1, 0))
    numbers = np.broadcast_to(np.arange(40), scores.shape)
    finite = np.where(ranks == 0, scores, 0) + 0.0  # -0.0 sorts as 0.0
    best = np.lexsort((numbers, finite, ranks), axis=1)[:, :n_probes]
    np.testing.assert_array_equal(out_lists, best)
    np.testing.assert_array_equal(out_scores, np.take_along_axis(scores, best, axis=1))


@pytest.mark.parametrize("inner_product", [False, True])
@pytest.mark.parametrize("n_probes", [1, 2, 5, 17, 19, 40, 300])
def test_bounded_selection_breaks_ties_by_list_number(inner_product, n_probes):
    # Integer centers and queries, so that every float32 score is exact,
    # and a third of the centers repeated, so that scores tie: the pick is
    # the n_probes smallest (score, list number) whichever way the kernel
    # groups the lists (groups of 8 up to 19 probes of 300 lists, one list
    # per group beyond).
    centers = np.round(30 * low_rank_centers(seed=3)).astype(np.float32)
    centers[200:] = centers[:100]
    bound = CoarseBound.build(centers, inner_product)
    assert bound is not None
    rng = np.random.default_rng(5)
    queries = centers[rng.integers(0, 300, 30)] + rng.integers(-3, 4, (30, centers.shape[1]))
    queries = np.vstack([queries, np.zeros((1, centers.shape[1]))]).astype(np.float32)
    scores, probes = bounded_selection(bound, queries, centers, inner_product, n_probes)
    exact = exact_scores(queries, centers, inner_product)
    np.testing.assert_array_equal(probes, lexicographic_best(exact, n_probes))
    np.testing.assert_array_equal(scores, np.take_along_axis(exact, probes, axis=1))


@pytest.mark.parametrize("use_l2", [True, False])
@pytest.mark.parametrize("n_lists", [3, 8, 100, 1001])
def test_probe_selection_breaks_ties_by_list_number(n_lists, use_l2):
    # Scores from a few integers, so that most of them tie; list counts
    # with and without whole groups of 8, and n_probes from 1 to all lists
    # (groups up to a thirty-second of the lists, sort keys beyond).
    rng = np.random.default_rng(n_lists)
    dots = rng.integers(-20, 21, (40, n_lists)).astype(np.float32)
    sq_norms = rng.integers(0, 41, n_lists).astype(np.float32)
    scores = sq_norms - np.float32(2.0) * dots if use_l2 else -dots
    for n_probes in sorted({1, 2, 5, max(1, n_lists // 16), max(1, n_lists // 2), n_lists}):
        if n_probes > n_lists:
            continue
        out_scores = np.empty((40, n_probes), np.float32)
        out_lists = np.empty((40, n_probes), np.int64)
        coarse.select_probes(dots, sq_norms, use_l2, out_scores, out_lists)
        best = lexicographic_best(scores, n_probes)
        np.testing.assert_array_equal(out_lists, best)
        np.testing.assert_array_equal(out_scores, np.take_along_axis(scores, best, axis=1))
        small_scores = np.empty_like(out_scores)
        small_lists = np.empty_like(out_lists)
        # The same dots, computed by the kernel: query i picks column i.
        queries = np.eye(40, dtype=np.float32)
        coarse.select_probes_small(queries, np.ascontiguousarray(dots.T), sq_norms, use_l2,
                                    small_scores, small_lists)
        np.testing.assert_array_equal(small_lists, best)


@pytest.mark.parametrize("inner_product", [False, True])
@pytest.mark.parametrize("n_probes", [1, 5, 17])
def test_few_query_kernel_selects_as_the_batch_kernel(inner_product, n_probes):
    # select_few computes the projection and the bound's dots in loops
    # instead of BLAS: the same lists, best first.
    centers = low_rank_centers(seed=3)
    bound = CoarseBound.build(centers, inner_product)
    queries = mixed_queries(centers, seed=4)
    batch_scores, batch_probes = bounded_selection(bound, queries, centers, inner_product,
                                                   n_probes)
    scores = np.empty_like(batch_scores)
    probes = np.empty_like(batch_probes)
    for row in range(queries.shape[0]):  # one query per call, as a single search
        bound.select_few(queries[row:row + 1], centers, np.einsum("ij,ij->i", centers, centers),
                         not inner_product, scores[row:row + 1], probes[row:row + 1])
    exact = exact_scores(queries, centers, inner_product)
    magnitude = np.abs(exact).max(axis=1, keepdims=True) + 1.0
    picked = np.take_along_axis(exact, probes, axis=1)
    oracle = np.take_along_axis(exact, batch_probes, axis=1)
    np.testing.assert_allclose(picked, oracle, rtol=0, atol=1e-5 * magnitude.max())
    assert (probes == batch_probes).mean() > 0.99  # differences only at rounding ties


def test_no_bound_without_a_small_subspace():
    rng = np.random.default_rng(0)
    isotropic = rng.standard_normal((256, 128)).astype(np.float32)
    assert CoarseBound.build(isotropic, inner_product=False) is None
    # Too few lists or dimensions to be worth it.
    assert CoarseBound.build(low_rank_centers(n_lists=8), inner_product=False) is None


@pytest.mark.parametrize("n_lists", [300, 100])
def test_basis_rows_are_orthonormal(n_lists):
    bound = CoarseBound.build(low_rank_centers(n_lists=n_lists), inner_product=False)
    gram = bound.basis.astype(np.float64) @ bound.basis.T.astype(np.float64)
    np.testing.assert_allclose(gram, np.eye(bound.rank), atol=1e-5)


def test_bound_is_skipped_where_it_does_not_pay():
    bound = CoarseBound.build(low_rank_centers(), inner_product=False)
    assert bound.pays_off(4)
    assert not bound.pays_off(300)


@pytest.mark.parametrize("metric", METRICS)
def test_search_results_do_not_change_with_the_bound(metric):
    # A batch takes the BLAS bound; one query per call the few-query kernel
    # (its own bound loops). Both must give what the full computation gives.
    base, queries = make_blobs_lowrank(6000, 160, n_queries=200, intrinsic_dim=8, seed=5)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=96, metric=metric), base)
    params = ivf_sq.SearchParams(n_probes=6)
    engine = index._engine
    assert engine.coarse_bound(6) is not None  # the bound is what is tested
    single = Resources(n_threads=1)

    def search_all():
        batch = ivf_sq.search(params, index, queries, 10)
        one_by_one = [ivf_sq.search(params, index, q[None], 10, resources=single)
                      for q in queries[:40]]
        return batch, one_by_one

    with_bound = search_all()
    engine._coarse_bound = False
    try:
        without = search_all()
    finally:
        engine._coarse_bound = None
    (d1, i1), singles_with = with_bound
    (d2, i2), singles_without = without
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-6)
    for (d1, i1), (d2, i2) in zip(singles_with, singles_without):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-6)
    # And single queries agree with the batch.
    np.testing.assert_array_equal(np.vstack([i for _, i in singles_with]), with_bound[0][1][:40])


def test_cost_model_prefers_full_search_for_many_probes():
    # 1,024 lists of 784-d with a 64-d subspace: bounded at 8 probes,
    # full at 256 (the exact scores would outweigh the saving).
    assert _coarse._cost(1024, 784, 64, 8) <= _coarse.MAX_COST_SHARE * 1024 * 784
    assert _coarse._cost(1024, 784, 64, 256) > _coarse.MAX_COST_SHARE * 1024 * 784


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_partial_selection_of_keys(n):
    # Quickselect on distinct keys in orders that trouble simple pivots.
    rng = np.random.default_rng(n)
    patterns = {
        "random": rng.permutation(n),
        "sorted": np.arange(n),
        "reversed": np.arange(n)[::-1],
        "organ pipe": np.concatenate([np.arange(0, n, 2), np.arange(n - 1 - n % 2, 0, -2)]),
    }
    for name, order in patterns.items():
        keys_in = (order.astype(np.int64) - n // 2) * 7
        for p in sorted({1, max(1, n // 3), n}):
            keys = keys_in.copy()
            coarse._partition_smallest(keys, n, p)
            assert sorted(keys[:p].tolist()) == sorted(keys_in.tolist())[:p], (name, p)
            assert sorted(keys.tolist()) == sorted(keys_in.tolist())  # a permutation


def test_ordered_bits_follow_float_order():
    values = np.array([-np.inf, -3.5, -1e-40, -0.0, 0.0, 1e-40, 2.0, np.inf, np.nan],
                      dtype=np.float32)
    ordered = [coarse._ordered_bits(b) for b in values.view(np.int32)]
    assert ordered == sorted(ordered)
    assert ordered[3] == ordered[4] == 0  # -0.0 and +0.0 tie, as floats do
    assert ordered[-1] > ordered[-2]  # NaN after +inf
    negative_nan = np.array([0xFFC00000], dtype=np.uint32).view(np.int32)[0]
    assert coarse._ordered_bits(negative_nan) > ordered[-2]
