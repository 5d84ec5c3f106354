import os

# The GPU backend's tests run on numba's CUDA simulator (every GPU thread a
# Python thread) unless IVFSQ_TEST_GPU=1 asks for the GPU; numba reads this
# when it is first imported, so it is set before anything imports it.
if os.environ.get("IVFSQ_TEST_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest

from ivfsq.datasets import make_blobs_lowrank

METRICS = ["sqeuclidean", "euclidean", "inner_product", "cosine"]


@pytest.fixture(scope="session")
def blobs():
    """Structured data with low intrinsic dimension: (base, queries)."""
    return make_blobs_lowrank(6000, 40, n_queries=120, seed=7)


def exact_knn(base, queries, k, metric):
    """Plain float64 NumPy oracle: (distances, ids), ties by smaller id."""
    base = np.asarray(base, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    if metric in ("sqeuclidean", "euclidean"):
        dist = (
            (queries**2).sum(1)[:, None] + (base**2).sum(1)[None, :] - 2.0 * queries @ base.T
        )
        dist = np.maximum(dist, 0.0)
        key = dist
        if metric == "euclidean":
            dist = np.sqrt(dist)
    elif metric == "inner_product":
        dist = queries @ base.T
        key = -dist
    else:
        qn = np.linalg.norm(queries, axis=1, keepdims=True)
        bn = np.linalg.norm(base, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = (queries @ base.T) / (qn * bn.T)
        dist = np.where(np.isfinite(cos), 1.0 - cos, 1.0)
        key = dist
    ids = np.broadcast_to(np.arange(base.shape[0]), key.shape)
    order = np.lexsort((ids, key), axis=1)[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def decoded_knn(index, queries, k):
    """Brute force over the index's own decoded vectors (oracle for the scan)."""
    ids, decoded = index._engine.decoded_vectors()
    order = np.argsort(ids)
    distances, rows = exact_knn(decoded[order], queries, k, index.metric)
    return distances, ids[order][rows]


def assert_all_probes_match_decoded(index, queries, k, tolerance, max_mismatch):
    """Searching every list equals brute force over the decoded vectors.

    Distances agree within ``tolerance`` (relative to the largest distance);
    ids agree except between candidates that tie within it, on at most a
    ``max_mismatch`` fraction of the results.
    """
    from ivfsq.neighbors import ivf_sq

    distances, neighbors = ivf_sq.search(
        ivf_sq.SearchParams(n_probes=index.n_lists), index, queries, k
    )
    true_distances, true_ids = decoded_knn(index, queries, k)
    scale = np.abs(true_distances).max()
    # The returned distances are the decoded vectors' true distances ...
    np.testing.assert_allclose(distances, true_distances, rtol=1e-4, atol=tolerance * scale)
    # ... and the ids agree except where two candidates tie within rounding.
    mismatch = neighbors != true_ids
    assert np.all(np.abs(distances - true_distances)[mismatch] <= tolerance * scale)
    assert mismatch.mean() < max_mismatch


def assert_same_results(first, second, queries):
    """Two searches agree: distances within float32 rounding, ids except
    where two candidates tie (on under 1 % of the results)."""
    (d1, i1), (d2, i2) = first, second
    scale = 1.0 + float(np.einsum("ij,ij->i", queries, queries).max())
    np.testing.assert_allclose(d1, d2, rtol=0, atol=2e-5 * scale)
    differ = i1 != i2
    assert np.all(np.abs(d1 - d2)[differ] <= 2e-5 * scale)  # only ties may swap
    assert differ.mean() < 0.01
