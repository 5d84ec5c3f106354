"""The search paths (list-major batches, per-query scans, split single queries,
the one-call search of a few queries) give the same results, tie-tolerant, for
every code width and metric."""

import numpy as np
import pytest
from conftest import METRICS

from ivfsq.common import Resources
from ivfsq.ivf import engine as _ivf
from ivfsq.neighbors import filters, ivf_sq

N_LISTS = 24


@pytest.fixture(scope="module")
def data(blobs):
    base, queries = blobs
    return base[:3000], queries[:80]


def search_with(monkeypatch, path, index, queries, k, params, **kwargs):
    """Search forcing the list-major path ("grouped"), the per-query scans
    ("per-query") or the one-call search of a few queries ("few")."""
    threshold = 0 if path == "grouped" else 10**12
    monkeypatch.setattr(_ivf, "GROUPED_MIN_PAIRS_PER_LIST", threshold)
    few = path == "few"
    monkeypatch.setattr(_ivf, "SMALL_BATCH_QUERIES", 10**12 if few else 0)
    monkeypatch.setattr(_ivf, "FEW_MAX_SCAN_BYTES", float("inf") if few else 0)
    return ivf_sq.search(params, index, queries, k, **kwargs)


def assert_same_results(first, second, queries):
    (d1, i1), (d2, i2) = first, second
    scale = 1.0 + float(np.einsum("ij,ij->i", queries, queries).max())
    np.testing.assert_allclose(d1, d2, rtol=0, atol=2e-5 * scale)
    differ = i1 != i2
    assert np.all(np.abs(d1 - d2)[differ] <= 2e-5 * scale)  # only ties may swap
    assert differ.mean() < 0.01


@pytest.mark.parametrize("quantizer", ["sq8", "sq4"])
@pytest.mark.parametrize("metric", METRICS)
def test_list_major_batches_equal_per_query_scans(data, monkeypatch, quantizer, metric):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, metric=metric,
                                            quantizer=quantizer), base)
    params = ivf_sq.SearchParams(n_probes=7)
    grouped = search_with(monkeypatch, "grouped", index, queries, 10, params)
    per_query = search_with(monkeypatch, "per-query", index, queries, 10, params)
    assert_same_results(grouped, per_query, queries)
    # One thread, and more threads than lists of work, give the same.
    for n_threads in (1, 3):
        again = search_with(monkeypatch, "grouped", index, queries, 10, params,
                            resources=Resources(n_threads=n_threads))
        assert_same_results(again, per_query, queries)


# (path, quantizer, transform, n_probes, refine_ratio, filter seed); the
# one-call path probes more lists than there are (capped at n_lists).
FILTER_REORDER_CASES = [
    ("grouped", "sq8_uniform", None, 9, 3, 0),
    ("grouped", "sq4", None, 9, 3, 0),
    ("few", "sq8", "rom", N_LISTS + 5, 2, 1),
    ("few", "sq4_uniform", "rom", N_LISTS + 5, 2, 1),
]


@pytest.mark.parametrize(("path", "quantizer", "transform", "n_probes", "refine_ratio", "seed"),
                         FILTER_REORDER_CASES)
def test_paths_with_filter_and_reorder(data, monkeypatch, path, quantizer, transform, n_probes,
                                       refine_ratio, seed):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, quantizer=quantizer,
                                            reorder=True, transform=transform), base)
    keep = np.random.default_rng(seed).random(len(base)) < 0.3
    params = ivf_sq.SearchParams(n_probes=n_probes, refine_ratio=refine_ratio)
    kwargs = dict(filter=filters.from_bitset(keep))
    found = search_with(monkeypatch, path, index, queries, 10, params, **kwargs)
    per_query = search_with(monkeypatch, "per-query", index, queries, 10, params, **kwargs)
    assert keep[found[1][found[1] >= 0]].all()
    # Re-ranked distances are exact, so both paths agree to float32 rounding.
    assert_same_results(found, per_query, queries)


def test_list_major_pads_when_few_candidates(data, monkeypatch):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    keep = np.zeros(len(base), bool)
    keep[:4] = True  # fewer kept ids than k
    distances, neighbors = search_with(monkeypatch, "grouped", index, queries, 6,
                                       ivf_sq.SearchParams(n_probes=N_LISTS),
                                       filter=filters.from_bitset(keep))
    assert np.all(np.sort(neighbors[:, :4], axis=1) == np.arange(4))
    assert np.all(neighbors[:, 4:] == -1) and np.all(np.isinf(distances[:, 4:]))


def test_large_batches_are_searched_in_blocks(data, monkeypatch):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    params = ivf_sq.SearchParams(n_probes=5)
    whole = ivf_sq.search(params, index, queries, 5)
    monkeypatch.setattr(_ivf, "SEARCH_BLOCK_QUERIES", 7)
    blocked = ivf_sq.search(params, index, queries, 5)
    # Small blocks may take the per-query path: equal up to rounding.
    assert_same_results(blocked, whole, queries)


@pytest.mark.parametrize("by_residual", [True, False])
@pytest.mark.parametrize("quantizer", ["sq8", "sq4"])
@pytest.mark.parametrize("metric", METRICS)
def test_few_queries_in_one_call_equal_per_query_scans(data, monkeypatch, quantizer, metric,
                                                      by_residual):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, metric=metric, quantizer=quantizer,
                                            by_residual=by_residual), base)
    params = ivf_sq.SearchParams(n_probes=6)
    few = search_with(monkeypatch, "few", index, queries, 10, params)
    per_query = search_with(monkeypatch, "per-query", index, queries, 10, params)
    assert_same_results(few, per_query, queries)


def test_single_query_paths_by_thread_count(data, monkeypatch):
    # One query on one thread runs the one-call kernel; on two threads with
    # much work the probes are split over the threads; both agree.
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS), base)
    params = ivf_sq.SearchParams(n_probes=N_LISTS)
    calls = []
    monkeypatch.setattr(_ivf, "_scan_in_parts", lambda *args: calls.append(args) or
                        _scan_in_parts(*args))
    monkeypatch.setattr(_ivf, "FEW_MAX_SCAN_BYTES", 0)
    for query in queries[:5]:
        one = ivf_sq.search(params, index, query[None], 10, resources=Resources(n_threads=1))
        assert not calls
        two = ivf_sq.search(params, index, query[None], 10, resources=Resources(n_threads=2))
        assert len(calls) == 1
        calls.clear()
        assert_same_results(one, two, query[None])


_scan_in_parts = _ivf._scan_in_parts
