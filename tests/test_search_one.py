"""The single-query shortcut of ``ivf_sq.search``: one float32 query with no
filter and no output arrays runs through a runner made once per arguments
and snapshot of the lists. It must give the general path's results, follow
``extend`` and ``remove``, and leave every error to the general path."""

import threading

import numpy as np
import pytest
from conftest import METRICS

from ivfsq.common import Resources
from ivfsq.ivf.engine import IvfSqEngine
from ivfsq.neighbors import ivf_sq

ONE = Resources(n_threads=1)


def general_path(params, index, query, k, resources=ONE):
    """The general path's results: given output arrays bypass the shortcut."""
    distances = np.empty((query.shape[0], k), dtype=np.float32)
    neighbors = np.empty((query.shape[0], k), dtype=np.int64)
    return ivf_sq.search(params, index, query, k, neighbors=neighbors, distances=distances,
                         resources=resources)


@pytest.fixture(scope="module")
def base_and_queries(blobs):
    base, queries = blobs
    return base[:3000], queries[:12]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("quantizer, transform, first_pass, precise", [
    ("sq8", None, None, None), ("sq8", None, 20, None), ("sq4", None, None, None),
    ("sq8_uniform", "rom", 20, None), ("sq8", None, 20, "float32"), ("sq4", "rom", None, "float16"),
])
def test_shortcut_equals_general_path(base_and_queries, metric, quantizer, transform,
                                      first_pass, precise):
    base, queries = base_and_queries
    index = ivf_sq.build(ivf_sq.IndexParams(
        n_lists=32, metric=metric, quantizer=quantizer, transform=transform,
        reorder=precise is not None, precise_dtype=precise or "float32"), base)
    params = ivf_sq.SearchParams(n_probes=6, first_pass_candidates=first_pass,
                                 refine_ratio=3.0 if precise else None)
    for row in range(queries.shape[0]):
        query = queries[row:row + 1]
        fast = ivf_sq.search(params, index, query, 7, resources=ONE)
        slow = general_path(params, index, query, 7)
        np.testing.assert_array_equal(fast[1], slow[1])
        np.testing.assert_array_equal(fast[0], slow[0])


@pytest.mark.parametrize("reorder", [False, True])
def test_shortcut_is_taken_and_skips_the_engine_search(base_and_queries, monkeypatch, reorder):
    base, queries = base_and_queries
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32, reorder=reorder), base)
    params = ivf_sq.SearchParams(n_probes=4)
    expected = general_path(params, index, queries[:1], 5)

    def refuse(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(IvfSqEngine, "search", refuse)
    found = ivf_sq.search(params, index, queries[:1], 5, resources=ONE)
    np.testing.assert_array_equal(found[1], expected[1])
    with pytest.raises(AssertionError, match="general path"):
        ivf_sq.search(params, index, queries[:2], 5, resources=ONE)  # two queries: general


def test_equal_arguments_are_a_repeat(base_and_queries, monkeypatch):
    # New but equal SearchParams and Resources objects find the runner the
    # first call made (applications often make them per call).
    assert ivf_sq.SearchParams(n_probes=4) == ivf_sq.SearchParams(n_probes=4)
    assert hash(ivf_sq.SearchParams(n_probes=4, first_pass_candidates=9)) == hash(
        ivf_sq.SearchParams(n_probes=4, first_pass_candidates=9))
    assert ivf_sq.SearchParams(n_probes=4) != ivf_sq.SearchParams(n_probes=5)
    assert ivf_sq.SearchParams(scan="few") != ivf_sq.SearchParams(scan="per_query")
    assert Resources(n_threads=2) == Resources(n_threads=2) != Resources(n_threads=1)
    assert len({Resources(n_threads=2), Resources(n_threads=2)}) == 1
    assert ivf_sq.SearchParams() != Resources() and Resources() != "cpu"
    base, queries = base_and_queries
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), base)
    ivf_sq.search(ivf_sq.SearchParams(n_probes=4), index, queries[:1], 5,
                  resources=Resources(n_threads=1))
    monkeypatch.setattr(IvfSqEngine, "one_query_runner",
                        lambda *args, **kwargs: pytest.fail("the runner was made again"))
    found = ivf_sq.search(ivf_sq.SearchParams(n_probes=4), index, queries[:1], 5,
                          resources=Resources(n_threads=1))
    np.testing.assert_array_equal(
        found[1], general_path(ivf_sq.SearchParams(n_probes=4), index, queries[:1], 5)[1])


def test_shortcut_follows_extend_and_remove(base_and_queries):
    base, queries = base_and_queries
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), base)
    params = ivf_sq.SearchParams(n_probes=32)
    query = queries[:1].copy()
    before = ivf_sq.search(params, index, query, 3, resources=ONE)
    ivf_sq.extend(index, query, np.array([10**6], dtype=np.int64))
    after = ivf_sq.search(params, index, query, 3, resources=ONE)
    assert after[1][0, 0] == 10**6
    np.testing.assert_array_equal(after[1], general_path(params, index, query, 3)[1])
    ivf_sq.remove(index, np.array([10**6], dtype=np.int64))
    again = ivf_sq.search(params, index, query, 3, resources=ONE)
    np.testing.assert_array_equal(again[1], before[1])


def test_shortcut_leaves_errors_to_the_general_path(base_and_queries):
    base, queries = base_and_queries
    small = ivf_sq.build(ivf_sq.IndexParams(n_lists=4), base[:40])
    params = ivf_sq.SearchParams(n_probes=2)
    query = queries[:1].copy()
    ivf_sq.search(params, small, query, 5, resources=ONE)  # fills the slot
    with pytest.raises(ValueError, match=r"k must be <= the number of vectors .*\(40\), got 41"):
        ivf_sq.search(params, small, query, 41, resources=ONE)
    ivf_sq.remove(small, np.arange(36, dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(4\), got 5"):  # the same arguments, fewer vectors
        ivf_sq.search(params, small, query, 5, resources=ONE)
    with pytest.raises(ValueError, match="refine_ratio needs an index built with reorder=True"):
        ivf_sq.search(ivf_sq.SearchParams(refine_ratio=2.0), small, query, 2, resources=ONE)
    with pytest.raises(TypeError, match="k must be an int"):
        ivf_sq.search(params, small, query, 2.0, resources=ONE)
    with pytest.raises(TypeError, match="search_params must be an ivf_sq.SearchParams"):
        ivf_sq.search({"n_probes": 2}, small, query, 2, resources=ONE)
    with pytest.raises(TypeError, match="search_params must be an ivf_sq.SearchParams"):
        ivf_sq.search(np.arange(3), small, query, 2, resources=ONE)  # == gives no bool
    with pytest.raises(TypeError, match="resources must be"):
        ivf_sq.search(params, small, query, 2, resources=np.arange(3))
    bad = query.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="queries must contain only finite values.* row 0"):
        ivf_sq.search(params, small, bad, 2, resources=ONE)
    with pytest.raises(ValueError, match="dim=40 columns"):
        ivf_sq.search(params, small, query[:, :39].copy(), 2, resources=ONE)
    with pytest.raises(ValueError, match="int_filter must be one of"):
        ivf_sq.search(ivf_sq.SearchParams(int_filter="int8"), small, query, 2, resources=ONE)


def test_shortcut_from_many_threads(base_and_queries):
    # Threads alternate between two argument sets, so the one slot keeps
    # changing hands: every result must still be its own arguments'.
    base, queries = base_and_queries
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), base)
    settings = [(ivf_sq.SearchParams(n_probes=2), 3), (ivf_sq.SearchParams(n_probes=8), 6)]
    expected = {(s, row): general_path(s[0], index, queries[row:row + 1], s[1])[1]
                for s in settings for row in range(queries.shape[0])}
    failures = []

    def worker(offset):
        for step in range(200):
            setting = settings[(step + offset) % 2]
            row = (step * 7 + offset) % queries.shape[0]
            found = ivf_sq.search(setting[0], index, queries[row:row + 1], setting[1],
                                  resources=ONE)[1]
            if not np.array_equal(found, expected[(setting, row)]):
                failures.append((offset, step))

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
