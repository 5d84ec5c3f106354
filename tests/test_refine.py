"""ivfsq.neighbors.refine against exact brute force."""

import numpy as np
import pytest
from conftest import METRICS, exact_knn

from ivfsq.neighbors import ivf_sq, refine


@pytest.mark.parametrize("metric", METRICS)
def test_refine_reranks_candidates_exactly(blobs, metric):
    base, queries = blobs
    rng = np.random.default_rng(0)
    _, truth = exact_knn(base, queries, 5, metric)
    # Candidates: the true top-5 hidden among random ids.
    others = [
        rng.choice(np.setdiff1d(np.arange(len(base)), row), 25, replace=False) for row in truth
    ]
    candidates = rng.permuted(np.concatenate([np.array(others), truth], axis=1), axis=1)
    distances, indices = refine(base, queries, candidates, k=5, metric=metric)
    np.testing.assert_array_equal(np.sort(indices, 1), np.sort(truth, 1))
    true_d, _ = exact_knn(base, queries, 5, metric)
    np.testing.assert_allclose(distances, true_d, rtol=1e-5, atol=1e-5)


def test_refine_improves_ivf_sq_results(blobs):
    base, queries = blobs
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=32), base)
    _, candidates = ivf_sq.search(ivf_sq.SearchParams(n_probes=8), index, queries, 40)
    distances, indices = refine(base, queries, candidates, k=10)
    true_d, truth = exact_knn(base, queries, 10, "sqeuclidean")
    hits = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, truth)])
    assert hits >= 0.97
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_refine_padding_and_in_place_outputs():
    dataset = np.eye(4, dtype=np.float32)
    queries = np.array([[1.0, 0, 0, 0]], np.float32)
    candidates = np.array([[2, -1, 0]])
    indices = np.zeros((1, 3), np.int64)
    distances = np.zeros((1, 3), np.float32)
    out_d, out_i = refine(dataset, queries, candidates, k=3, metric="inner_product",
                          indices=indices, distances=distances)
    assert out_i is indices and out_d is distances
    assert indices.tolist() == [[0, 2, -1]]
    assert distances[0, 2] == -np.inf


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"k": 10}, ValueError, "k must be <= 3"),
        ({"metric": "l1"}, ValueError, "metric must be one of"),
        ({"candidates": np.array([[0.5, 1, 2]])}, TypeError, "candidates must have an integer"),
        ({"candidates": np.array([[0, 1, 9]])}, ValueError, "candidates must be ids < 4"),
        ({"candidates": np.array([[0, 1]] * 2)}, ValueError, r"candidates must have shape \(1,"),
        ({"queries": np.zeros((1, 3), np.float32)}, ValueError, "queries must have dim=4"),
    ],
)
def test_refine_errors(kwargs, error, match):
    arguments = {
        "dataset": np.eye(4, dtype=np.float32),
        "queries": np.ones((1, 4), np.float32),
        "candidates": np.array([[0, 1, 2]]),
    }
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        refine(**arguments)
