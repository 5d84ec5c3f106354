"""k-means: the hierarchical training against the flat one, and its parts."""

import numpy as np
from conftest import exact_knn, recall
from hypothesis import given, settings
from hypothesis import strategies as st

from ivfsq.ivf import kmeans as _kmeans
from ivfsq.ivf.kmeans import assign_nearest, imbalance_factor, train_kmeans
from ivfsq.neighbors import ivf_sq


def objective(vectors, centers, inner_product):
    """Mean squared distance to the nearest center (L2), or mean best dot."""
    labels, distances = assign_nearest(vectors, centers, inner_product=inner_product,
                                       return_distances=True)
    if inner_product:
        return float(np.einsum("ij,ij->i", vectors, centers[labels]).mean()), labels
    return float(distances.mean()), labels


def test_hierarchical_matches_flat_quality(blobs, monkeypatch):
    base, _ = blobs
    base = base[:4000]
    flat = train_kmeans(base, 64, 10, seed=3)
    monkeypatch.setattr(_kmeans, "HIERARCHICAL_MIN_CLUSTERS", 16)
    calls = []
    share = _kmeans._share_clusters
    monkeypatch.setattr(_kmeans, "_share_clusters", lambda *a: calls.append(a) or share(*a))
    hierarchical = train_kmeans(base, 64, 10, seed=3)
    assert calls, "the hierarchical training did not run"
    assert hierarchical.shape == (64, base.shape[1]) and hierarchical.dtype == np.float32
    flat_score, _ = objective(base, flat, False)
    hier_score, labels = objective(base, hierarchical, False)
    assert hier_score <= 1.05 * flat_score
    sizes = np.bincount(labels, minlength=64)
    assert sizes.min() > 0
    assert imbalance_factor(sizes) < 1.5
    # Deterministic for a seed.
    np.testing.assert_array_equal(train_kmeans(base, 64, 10, seed=3), hierarchical)


def test_largest_dot_kmeans_stays_flat(blobs, monkeypatch):
    base, _ = blobs
    base = base[:4000] / np.linalg.norm(base[:4000], axis=1, keepdims=True)
    monkeypatch.setattr(_kmeans, "HIERARCHICAL_MIN_CLUSTERS", 16)
    monkeypatch.setattr(_kmeans, "_share_clusters", None)  # would fail if called
    centers = train_kmeans(base, 64, 10, seed=3, inner_product=True)
    _, labels = objective(base, centers, True)
    assert np.bincount(labels, minlength=64).min() > 0


def test_hierarchical_index_recall(blobs, monkeypatch):
    base, queries = blobs
    monkeypatch.setattr(_kmeans, "HIERARCHICAL_MIN_CLUSTERS", 16)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=64), base)
    assert index.imbalance_factor < 1.5
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=16), index, queries, 10)
    _, truth = exact_knn(base, queries, 10, "sqeuclidean")
    assert recall(neighbors, truth) > 0.93


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 500), min_size=1, max_size=40).filter(lambda s: sum(s) > 0),
    data=st.data(),
)
def test_share_clusters(sizes, data):
    sizes = np.array(sizes)
    n_clusters = data.draw(st.integers(1, int(sizes.sum())))
    n_clusters = max(n_clusters, int(np.count_nonzero(sizes)))  # still <= sizes.sum()
    counts = _kmeans._share_clusters(sizes, n_clusters)
    assert counts.sum() == n_clusters
    assert np.all(counts <= sizes)
    assert np.all(counts[sizes > 0] >= 1)
    assert np.all(counts[sizes == 0] == 0)
    # Close to proportional: the clusters that the at-least-one and
    # at-most-its-rows corrections move come evenly from (or go evenly to)
    # the other meso-clusters, whose counts stay within one of each other's
    # distance to their quotas.
    quota = sizes * n_clusters / sizes.sum()
    free = (counts > 1) & (counts < sizes)
    off_quota = (counts - quota)[free]
    assert off_quota.size == 0 or off_quota.max() - off_quota.min() <= 1 + 1e-9
    if np.all(quota[sizes > 0] >= 1) and np.all(quota <= sizes):
        assert np.all(np.abs(counts - quota) < 1)  # no corrections: largest remainders


def test_share_clusters_takes_the_smallest_groups_at_least_one_from_the_rest():
    # Three one-row groups get a cluster each, beyond their quotas of 1/3:
    # the 12-row group gives them up (2 clusters against a quota of 4).
    counts = _kmeans._share_clusters(np.array([1, 1, 1, 12]), 5)
    assert counts.tolist() == [1, 1, 1, 2]
