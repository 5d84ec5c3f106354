"""The search paths (list-major batches, per-query scans, split single queries,
the one-call search of a few queries) give the same results, tie-tolerant, for
every code width and metric."""

import numpy as np
import pytest
from conftest import METRICS, assert_same_results

from ivfsq.common import Resources
from ivfsq.neighbors import filters, ivf_sq

N_LISTS = 24


@pytest.fixture(scope="module")
def data(blobs):
    base, queries = blobs
    return base[:3000], queries[:80]


def search_with(path, index, queries, k, params, **kwargs):
    """Search on the planner's ``path`` ("list_major", "per_query", "per_list"
    or "few") instead of the one it would choose."""
    forced = ivf_sq.SearchParams(n_probes=params.n_probes, refine_ratio=params.refine_ratio,
                                 scan=path)
    return ivf_sq.search(forced, index, queries, k, **kwargs)


@pytest.mark.parametrize("quantizer", ["sq8", "sq4"])
@pytest.mark.parametrize("metric", METRICS)
def test_list_major_batches_equal_per_query_scans(data, quantizer, metric):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, metric=metric,
                                            quantizer=quantizer), base)
    params = ivf_sq.SearchParams(n_probes=7)
    grouped = search_with("list_major", index, queries, 10, params)
    per_query = search_with("per_query", index, queries, 10, params)
    assert_same_results(grouped, per_query, queries)
    # One thread, and more threads than lists of work, give the same.
    for n_threads in (1, 3):
        again = search_with("list_major", index, queries, 10, params,
                            resources=Resources(n_threads=n_threads))
        assert_same_results(again, per_query, queries)


# (path, quantizer, transform, n_probes, refine_ratio, filter seed); the
# one-call path probes more lists than there are (capped at n_lists).
FILTER_REORDER_CASES = [
    ("list_major", "sq8_uniform", None, 9, 3, 0),
    ("list_major", "sq4", None, 9, 3, 0),
    ("per_list", "sq8", None, 9, 3, 0),
    ("few", "sq8", "rom", N_LISTS + 5, 2, 1),
    ("few", "sq4_uniform", "rom", N_LISTS + 5, 2, 1),
]


@pytest.mark.parametrize(("path", "quantizer", "transform", "n_probes", "refine_ratio", "seed"),
                         FILTER_REORDER_CASES)
def test_paths_with_filter_and_reorder(data, path, quantizer, transform, n_probes,
                                       refine_ratio, seed):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, quantizer=quantizer,
                                            reorder=True, transform=transform), base)
    keep = np.random.default_rng(seed).random(len(base)) < 0.3
    params = ivf_sq.SearchParams(n_probes=n_probes, refine_ratio=refine_ratio)
    kwargs = dict(filter=filters.from_bitset(keep))
    found = search_with(path, index, queries, 10, params, **kwargs)
    per_query = search_with("per_query", index, queries, 10, params, **kwargs)
    assert keep[found[1][found[1] >= 0]].all()
    # Re-ranked distances are exact, so both paths agree to float32 rounding.
    assert_same_results(found, per_query, queries)


def test_list_major_pads_when_few_candidates(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    keep = np.zeros(len(base), bool)
    keep[:4] = True  # fewer kept ids than k
    distances, neighbors = search_with("list_major", index, queries, 6,
                                       ivf_sq.SearchParams(n_probes=N_LISTS),
                                       filter=filters.from_bitset(keep))
    assert np.all(np.sort(neighbors[:, :4], axis=1) == np.arange(4))
    assert np.all(neighbors[:, 4:] == -1) and np.all(np.isinf(distances[:, 4:]))


def test_large_batches_are_searched_in_blocks(data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    params = ivf_sq.SearchParams(n_probes=5)
    plan = ivf_sq.search_plan(params, index, len(queries))
    # One full block and a last one of 7 queries, planned for its own size.
    tiled = np.tile(queries, (plan.block_queries // len(queries) + 1, 1))
    tiled = tiled[:plan.block_queries + 7]
    assert ivf_sq.search_plan(params, index, 7, Resources(n_threads=1)).path == "few"
    blocked = ivf_sq.search(params, index, tiled, 5)
    whole = ivf_sq.search(params, index, queries, 5)
    rows = np.arange(len(tiled)) % len(queries)
    assert_same_results(blocked, (whole[0][rows], whole[1][rows]), tiled)


@pytest.mark.parametrize("by_residual", [True, False])
@pytest.mark.parametrize("quantizer", ["sq8", "sq4"])
@pytest.mark.parametrize("metric", METRICS)
def test_few_queries_in_one_call_equal_per_query_scans(data, quantizer, metric,
                                                      by_residual):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, metric=metric, quantizer=quantizer,
                                            by_residual=by_residual), base)
    params = ivf_sq.SearchParams(n_probes=6)
    few = search_with("few", index, queries, 10, params)
    per_query = search_with("per_query", index, queries, 10, params)
    assert_same_results(few, per_query, queries)


def test_single_query_paths_by_thread_count(data):
    # One query on one thread runs the one-call kernel; on two threads the
    # probes may be split over the threads; both agree.
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    params = ivf_sq.SearchParams(n_probes=N_LISTS)
    one_thread, two_threads = Resources(n_threads=1), Resources(n_threads=2)
    assert ivf_sq.search_plan(params, index, 1, one_thread).path == "few"
    for query in queries[:5]:
        one = ivf_sq.search(params, index, query[None], 10, resources=one_thread)
        two = search_with("per_list", index, query[None], 10, params, resources=two_threads)
        assert_same_results(one, two, query[None])
