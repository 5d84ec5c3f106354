"""The search paths (list-major batches, per-query scans, split single queries)
give the same results, tie-tolerant, for every code width and metric."""

import numpy as np
import pytest
from conftest import METRICS

from ivfsq import _ivf
from ivfsq.common import Resources
from ivfsq.neighbors import filters, ivf_sq

N_LISTS = 24


@pytest.fixture(scope="module")
def data(blobs):
    base, queries = blobs
    return base[:3000], queries[:80]


def search_with(monkeypatch, path, index, queries, k, params, **kwargs):
    """Search forcing the list-major path ("grouped") or the per-query scans."""
    threshold = 0 if path == "grouped" else 10**12
    monkeypatch.setattr(_ivf, "GROUPED_MIN_PAIRS_PER_LIST", threshold)
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


@pytest.mark.parametrize("quantizer", ["sq8_uniform", "sq4"])
def test_list_major_with_filter_and_reorder(data, monkeypatch, quantizer):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=N_LISTS, quantizer=quantizer,
                                            reorder=True), base)
    keep = np.random.default_rng(0).random(len(base)) < 0.3
    params = ivf_sq.SearchParams(n_probes=9, refine_ratio=3)
    kwargs = dict(filter=filters.from_bitset(keep))
    grouped = search_with(monkeypatch, "grouped", index, queries, 10, params, **kwargs)
    per_query = search_with(monkeypatch, "per-query", index, queries, 10, params, **kwargs)
    assert keep[grouped[1][grouped[1] >= 0]].all()
    # Re-ranked distances are exact, so both paths agree to float32 rounding.
    assert_same_results(grouped, per_query, queries)


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
