"""Balanced k-means for the coarse quantizer, and nearest-center assignment.

Lloyd iterations with BLAS assignment. After each iteration (but the last),
empty and tiny clusters are re-seeded by splitting the largest clusters, so
inverted lists stay balanced; the list-size imbalance factor
``n_lists * sum(size^2) / n^2`` (1.0 is perfect balance) is reported.
"""

import numpy as np

from ivfsq._cpu import kernels
from ivfsq._threads import default_n_threads, run_chunks, single_threaded_blas

# A cluster smaller than this fraction of the mean size is re-seeded.
SMALL_CLUSTER_FRACTION = 0.25
# Relative perturbation separating the two halves of a split cluster.
SPLIT_EPSILON = 1.0 / 1024.0
ASSIGN_BLOCK_ROWS = 4096
# Clusters are split only in this first fraction of the iterations; the rest
# let the moved centers converge.
SPLIT_ITERATIONS = 0.5


def imbalance_factor(sizes):
    """``k * sum(size^2) / n^2``: 1.0 when every list has the same size."""
    sizes = np.asarray(sizes, dtype=np.float64)
    total = sizes.sum()
    if total == 0:
        return 1.0
    return float(sizes.shape[0] * np.square(sizes).sum() / (total * total))


def assign_nearest(vectors, centers, center_sq_norms=None, inner_product=False, n_threads=None):
    """Index (int64) and squared L2 distance of each row's nearest center.

    Computed blockwise as ``|c|^2 - 2 x.c`` with one GEMM per block, so memory
    stays bounded; ties go to the lower center index. With ``inner_product``
    the center with the largest ``x.c`` is chosen instead (the rule lists are
    probed by for inner-product and cosine search).
    """
    if inner_product:
        center_sq_norms = np.zeros(centers.shape[0], dtype=np.float32)
    elif center_sq_norms is None:
        center_sq_norms = np.einsum("ij,ij->i", centers, centers)
    n_rows = vectors.shape[0]
    labels = np.empty(n_rows, dtype=np.int64)
    distances = np.empty(n_rows, dtype=np.float32)
    center_sq_norms = np.ascontiguousarray(center_sq_norms, dtype=np.float32)
    centers_t = centers.T

    # Each thread takes its rows block by block: a single-threaded GEMM, then
    # one fused argmin pass over the block's dots (several NumPy passes over
    # them cost 20 % more).
    def task(start, stop):
        for block in range(start, stop, ASSIGN_BLOCK_ROWS):
            end = min(stop, block + ASSIGN_BLOCK_ROWS)
            rows = vectors[block:end]
            dots = rows @ centers_t
            kernels.nearest_from_dots(
                dots, center_sq_norms, labels[block:end], distances[block:end]
            )
            if not inner_product:
                row_sq = np.einsum("ij,ij->i", rows, rows)
                np.maximum(distances[block:end] + row_sq, 0.0, out=distances[block:end])

    with single_threaded_blas():
        run_chunks(task, n_rows, n_threads or default_n_threads(), min_chunk=256,
                   chunks_per_thread=1)
    return labels, distances


def _split_small_clusters(centers, counts, rng):
    """Move each empty or tiny cluster next to the largest one, splitting it.

    The donor's center is perturbed symmetrically, ``c (1 +- eps)``, and its
    count is shared between the halves, so several small clusters split several
    different large ones. Returns the number of clusters moved.
    """
    n_clusters = centers.shape[0]
    threshold = SMALL_CLUSTER_FRACTION * counts.sum() / n_clusters
    small = np.flatnonzero(counts < threshold)
    if small.size == 0:
        return 0
    counts = counts.astype(np.float64)
    # Smallest first: empty clusters are the most urgent.
    small = small[np.argsort(counts[small], kind="stable")]
    moved = 0
    for cluster in small:
        donor = int(np.argmax(counts))
        if counts[donor] <= max(threshold * 2.0, counts[cluster] + 1):
            break
        noise = rng.uniform(-SPLIT_EPSILON, SPLIT_EPSILON, size=centers.shape[1])
        noise = noise.astype(np.float32)
        donor_center = centers[donor].copy()
        centers[cluster] = donor_center * (1.0 + noise) + noise * 1e-6
        centers[donor] = donor_center * (1.0 - noise) - noise * 1e-6
        half = counts[donor] / 2.0
        counts[cluster] = half
        counts[donor] = half
        moved += 1
    return moved


def train_kmeans(sample, n_clusters, n_iters, seed, inner_product=False, n_threads=None):
    """Balanced k-means on ``sample`` (float32, C-contiguous).

    With ``inner_product`` rows are assigned to the center of largest inner
    product (centers stay means, unnormalized), matching how lists are probed.

    Returns ``centers`` (float32, (n_clusters, dim)). Deterministic for a given
    seed and sample on one machine.
    """
    rng = np.random.default_rng(seed)
    n_rows, dim = sample.shape
    initial = rng.choice(n_rows, size=n_clusters, replace=False)
    centers = sample[np.sort(initial)].copy()
    if n_clusters == 1 or n_rows == n_clusters:
        if n_clusters == 1:
            centers = sample.mean(axis=0, dtype=np.float64).astype(np.float32)[None, :]
        return np.ascontiguousarray(centers)
    for iteration in range(n_iters):
        labels, _ = assign_nearest(
            sample, centers, inner_product=inner_product, n_threads=n_threads
        )
        sums = np.zeros((n_clusters, dim), dtype=np.float64)
        counts = np.zeros(n_clusters, dtype=np.int64)
        kernels.accumulate_clusters(sample, labels, sums, counts)
        nonempty = counts > 0
        centers[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        if iteration < SPLIT_ITERATIONS * n_iters:
            _split_small_clusters(centers, counts, rng)
    if n_iters == 0:
        return np.ascontiguousarray(centers)
    return np.ascontiguousarray(centers, dtype=np.float32)
