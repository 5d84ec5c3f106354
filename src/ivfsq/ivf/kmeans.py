"""Balanced k-means for the coarse quantizer, and nearest-center assignment.

Lloyd iterations with BLAS assignment. In the first half of the iterations,
empty and tiny clusters are re-seeded by splitting the largest clusters, so
inverted lists stay balanced; the list-size imbalance factor
``n_lists * sum(size^2) / n^2`` (1.0 is perfect balance) is reported.

Many L2 clusters are trained hierarchically, as cuVS's balanced k-means does:
about ``sqrt(k)`` mesoclusters first, then each mesocluster's share of the
``k`` fine clusters on its own rows, then a few Lloyd iterations of all ``k``
centers on the whole sample. An iteration over all ``k`` centers costs
``n * k * dim`` multiply-adds, the stages before it about ``n * sqrt(k) *
dim``, so training takes less time than with flat k-means, without losing
recall at equal n_probes.
"""

import threading

import numpy as np

from ivfsq._progress import report
from ivfsq._threads import default_n_threads, run_chunks, single_threaded_blas
from ivfsq import backends
from ivfsq.backends.cpu import kernels

# A cluster smaller than this fraction of the mean size is re-seeded.
SMALL_CLUSTER_FRACTION = 0.25
# Relative perturbation separating the two halves of a split cluster.
SPLIT_EPSILON = 1.0 / 1024.0
ASSIGN_BLOCK_ROWS = 4096
# Clusters are split only in this first fraction of the iterations; the rest
# let the moved centers converge.
SPLIT_ITERATIONS = 0.5
# From this many clusters on, k-means is trained hierarchically.
HIERARCHICAL_MIN_CLUSTERS = 256
# Lloyd iterations of all centers on the whole sample after the hierarchical
# stages (at most the requested iteration count).
HIERARCHICAL_FINAL_ITERATIONS = 4
# Largest-dot k-means runs its first half of the iterations on half the rows
# when there are at least this many rows per cluster.
HALF_SAMPLE_MIN_ROWS_PER_CLUSTER = 16
# Rows per mesocluster used to train the mesoclusters.
MESO_TRAIN_ROWS_PER_CLUSTER = 512


def imbalance_factor(sizes):
    """``k * sum(size^2) / n^2``: 1.0 when every list has the same size."""
    sizes = np.asarray(sizes, dtype=np.float64)
    total = sizes.sum()
    if total == 0:
        return 1.0
    return float(sizes.shape[0] * np.square(sizes).sum() / (total * total))


def assign_nearest(vectors, centers, center_sq_norms=None, inner_product=False, n_threads=None,
                   return_distances=False, device="cpu"):
    """Index (int64) of each row's nearest center, and with
    ``return_distances`` its squared L2 distance (float32) too.

    Computed blockwise as ``|c|^2 - 2 x.c`` with one GEMM per block, so memory
    stays bounded; ties go to the lower center index. With ``inner_product``
    the center with the largest ``x.c`` is chosen instead (the rule lists are
    probed by for inner-product and cosine search), and the distance returned
    is ``-2 x.c``. ``device`` "cuda" computes it on the GPU
    (:func:`ivfsq.backends.cuda.search.assign_nearest`), with the same rule.
    """
    if device != "cpu":
        return backends.get(device).assign_nearest(vectors, centers, center_sq_norms,
                                                   inner_product, return_distances)
    if inner_product:
        center_sq_norms = np.zeros(centers.shape[0], dtype=np.float32)
    elif center_sq_norms is None:
        center_sq_norms = np.einsum("ij,ij->i", centers, centers)
    n_rows = vectors.shape[0]
    labels = np.empty(n_rows, dtype=np.int64)
    distances = np.empty(n_rows, dtype=np.float32) if return_distances else None
    center_sq_norms = np.ascontiguousarray(center_sq_norms, dtype=np.float32)
    centers_t = centers.T

    half_sq_norms = center_sq_norms * np.float32(0.5)

    # Each thread takes its rows block by block: a single-threaded GEMM, then
    # the largest x.c - |c|^2 / 2 per row by NumPy's SIMD argmax (first index
    # on ties), faster than a numba argmin loop (which LLVM does not
    # vectorise). Halving the norms and doubling the result are exact, so
    # the scores are those of |c|^2 - 2 x.c.
    def task(start, stop):
        for block in range(start, stop, ASSIGN_BLOCK_ROWS):
            end = min(stop, block + ASSIGN_BLOCK_ROWS)
            rows = vectors[block:end]
            dots = rows @ centers_t
            if not inner_product:
                dots -= half_sq_norms
            best = dots.argmax(axis=1)
            labels[block:end] = best
            if distances is None:
                continue
            scores = np.take_along_axis(dots, best[:, None], axis=1)[:, 0]
            np.multiply(scores, np.float32(-2.0), out=distances[block:end])
            if not inner_product:
                row_sq = np.einsum("ij,ij->i", rows, rows)
                np.maximum(distances[block:end] + row_sq, 0.0, out=distances[block:end])

    with single_threaded_blas():
        # k-means steps are followed by NumPy work, not by another parallel
        # step: no spinning (see run_chunks).
        run_chunks(task, n_rows, n_threads or default_n_threads(), min_chunk=256,
                   chunks_per_thread=1, spin=False)
    return (labels, distances) if return_distances else labels


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


def train_kmeans(sample, n_clusters, n_iters, seed, inner_product=False, n_threads=None,
                 device="cpu"):
    """Balanced k-means on ``sample`` (float32, C-contiguous).

    With ``inner_product`` rows are assigned to the center of largest inner
    product (centers stay means, unnormalized), matching how lists are probed.
    From ``HIERARCHICAL_MIN_CLUSTERS`` clusters on, L2 k-means is trained
    hierarchically, each stage with ``n_iters`` iterations (the final one at
    most ``HIERARCHICAL_FINAL_ITERATIONS``). Largest-dot k-means stays flat:
    started from per-mesocluster centers, centers of large norm took all the
    rows of their neighbours (5 of 64 lists empty in a test, none when flat).

    ``device``: where rows are assigned to centers (:func:`assign_nearest`);
    the centers' updates run on the host.

    Returns ``centers`` (float32, (n_clusters, dim)). Deterministic for a given
    seed and sample on one machine.
    """
    n_rows = sample.shape[0]
    hierarchical = (
        n_clusters >= HIERARCHICAL_MIN_CLUSTERS
        and not inner_product
        and n_clusters < n_rows
        and n_iters > 0
    )
    if not hierarchical:
        return _train_flat(
            sample, n_clusters, n_iters, seed, inner_product, n_threads, "k-means", device
        )
    rng = np.random.default_rng(seed)
    n_meso = round(np.sqrt(n_clusters))
    # Mesoclusters, trained on a subsample, then every row assigned to one.
    n_meso_train = min(n_rows, n_meso * MESO_TRAIN_ROWS_PER_CLUSTER)
    meso_rows = np.sort(rng.choice(n_rows, size=n_meso_train, replace=False))
    meso_centers = _train_flat(
        np.ascontiguousarray(sample[meso_rows]), n_meso, n_iters, seed, inner_product, n_threads,
        "k-means: mesoclusters", device,
    )
    meso_labels = assign_nearest(
        sample, meso_centers, inner_product=inner_product, n_threads=n_threads, device=device
    )
    meso_sizes = np.bincount(meso_labels, minlength=n_meso)
    fine_counts = _share_clusters(meso_sizes, n_clusters)
    # Each mesocluster's fine clusters, on its own rows.
    order = np.argsort(meso_labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(meso_sizes)])
    # Mesoclusters are small: each thread trains whole ones, one at a time
    # (their GEMMs are too small to split well).
    centers = np.empty((n_clusters, sample.shape[1]), dtype=np.float32)
    first_center = np.concatenate([[0], np.cumsum(fine_counts)])

    def task(start, stop):
        for meso in range(start, stop):
            count = int(fine_counts[meso])
            if count == 0:
                continue
            rows = np.ascontiguousarray(sample[order[bounds[meso] : bounds[meso + 1]]])
            centers[first_center[meso] : first_center[meso] + count] = _train_flat(
                rows, count, n_iters, seed + 1 + meso, inner_product, 1, device=device
            )
            with trained_lock:
                trained[0] += 1
                report("k-means: lists per mesocluster", trained[0], n_meso)

    trained = [0]
    trained_lock = threading.Lock()

    # On the GPU, one mesocluster at a time: each is a few small launches,
    # which host threads would only queue on the one device.
    task_threads = 1 if device != "cpu" else n_threads or default_n_threads()
    with single_threaded_blas():
        run_chunks(task, n_meso, task_threads, chunks_per_thread=4, spin=False)
    # A few iterations of all centers on the whole sample.
    final_iters = min(n_iters, HIERARCHICAL_FINAL_ITERATIONS)
    return _lloyd(sample, centers, final_iters, rng, inner_product, n_threads, final_iters - 1,
                  "k-means: all lists", device)


def _share_clusters(sizes, n_clusters):
    """Fine clusters per mesocluster: proportional to its rows (largest
    remainders), at most its rows, at least one when it has rows."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quota = sizes * (n_clusters / sizes.sum())
    counts = np.minimum(np.floor(quota).astype(np.int64), sizes)
    counts[(sizes > 0) & (counts == 0)] = 1
    while counts.sum() > n_clusters:
        surplus = np.where(counts > 1, counts - quota, -np.inf)
        counts[np.argmax(surplus)] -= 1
    while counts.sum() < n_clusters:
        deficit = np.where(counts < sizes, quota - counts, -np.inf)
        counts[np.argmax(deficit)] += 1
    return counts


def _train_flat(sample, n_clusters, n_iters, seed, inner_product, n_threads, stage=None,
                device="cpu"):
    """Lloyd's k-means from ``n_clusters`` distinct sample rows."""
    rng = np.random.default_rng(seed)
    n_rows = sample.shape[0]
    initial = rng.choice(n_rows, size=n_clusters, replace=False)
    centers = sample[np.sort(initial)].copy()
    if n_clusters == 1:
        return sample.mean(axis=0, dtype=np.float64).astype(np.float32)[None, :]
    if n_rows == n_clusters:
        return np.ascontiguousarray(centers)
    split_iters = SPLIT_ITERATIONS * n_iters
    if (inner_product and n_iters >= 2
            and n_rows >= HALF_SAMPLE_MIN_ROWS_PER_CLUSTER * n_clusters):
        # Largest-dot k-means (trained flat, all its iterations over every
        # row) runs the first half of its iterations on half the rows (a
        # fixed random half): the centers are far from converged then, and a
        # half sample moves them as well, at half the cost per iteration.
        # (L2 k-means, hierarchical, is left as it was: there the half
        # sample cost recall.)
        first = n_iters // 2
        half = np.sort(rng.choice(n_rows, size=n_rows // 2, replace=False))
        centers = _lloyd(np.ascontiguousarray(sample[half]), centers, first, rng,
                         inner_product, n_threads, split_iters, stage, device)
        return _lloyd(sample, centers, n_iters - first, rng, inner_product, n_threads,
                      split_iters - first, stage, device)
    return _lloyd(sample, centers, n_iters, rng, inner_product, n_threads, split_iters, stage,
                  device)


def _lloyd(sample, centers, n_iters, rng, inner_product, n_threads, split_iters, stage=None,
           device="cpu"):
    """``n_iters`` Lloyd iterations from ``centers`` (updated in place); tiny
    clusters are split after each of the first ``split_iters``."""
    n_clusters, dim = centers.shape
    for iteration in range(n_iters):
        labels = assign_nearest(sample, centers, inner_product=inner_product, n_threads=n_threads,
                                device=device)
        sums = np.zeros((n_clusters, dim), dtype=np.float64)
        counts = np.zeros(n_clusters, dtype=np.int64)
        kernels.encode.accumulate_clusters(sample, labels, sums, counts)
        nonempty = counts > 0
        centers[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        if iteration < split_iters:
            _split_small_clusters(centers, counts, rng)
        if stage is not None:
            report(stage, iteration + 1, n_iters)
    return np.ascontiguousarray(centers, dtype=np.float32)
