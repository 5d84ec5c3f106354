"""Data helpers for ivfsq: synthetic data, exact k-NN ground truth, recall,
and loading of the shared evaluation data sets.

Everything here is pure NumPy, so it imports without numba and can be used
to build ground truth for checking the index itself.

* :func:`make_blobs_lowrank` -- structured synthetic vectors with a low
  intrinsic dimension (clusters on a curved low-dimensional manifold), much
  closer to real embeddings or SIFT than uniform noise.
* :func:`brute_force_knn` -- exact k nearest neighbours by blocked GEMM with
  bounded memory (works on a memory-mapped base larger than RAM).
* :func:`recall_at_k` -- recall of found ids against ground-truth ids.
* :func:`load_dataset_dir` / :func:`find_shared_dataset` -- read a data set
  folder (``base.npy``, ``query.npy``, ``gt_<metric>.npy``).
* :func:`load_vectors` (``.npy``, TEXMEX ``.fvecs``/``.bvecs``/``.ivecs``,
  memory-mapped), :func:`read_ann_hdf5` (ann-benchmarks files, with the
  optional h5py) and :func:`load_data` (any of these, or a folder).
"""

from __future__ import annotations

import numbers
import os
import pathlib

import numpy as np

from ivfsq import metrics

__all__ = [
    "make_blobs_lowrank",
    "brute_force_knn",
    "recall_at_k",
    "load_dataset_dir",
    "find_shared_dataset",
    "load_data",
    "load_vectors",
    "read_texmex",
    "read_ann_hdf5",
]

#: Metrics understood by :func:`brute_force_knn`.
METRICS = metrics.NAMES

# Rows of base (and of generated data) handled per block: big enough for an
# efficient GEMM, small enough that the float32 temporaries stay near 32 MB
# for d = 128.
_BLOCK_ROWS = 65536

# Element budget of the (query block x base block) float32 score matrix and of
# the float64 candidate gather used for exact re-scoring (each ~64 MB).
_SCORE_BUDGET = 1 << 24
_RESCORE_BUDGET = 1 << 23

# Sentinel id for "no neighbour yet": the largest int64, so that a real id
# always wins a tie against it in the (distance, id) sort.
_NO_ID = np.iinfo(np.int64).max

# dtypes whose every value is exactly representable in float32; for these the
# float32 copy of a block can serve as the source of the exact re-scoring.
_EXACT_IN_F32 = {np.dtype(t) for t in (np.bool_, np.int8, np.uint8, np.int16,
                                        np.uint16, np.float16, np.float32)}

# Ground-truth file tags and the metric name each one maps to.
# (A metric's family is its tag.)
_FILE_TAG = {**{tag: tag for tag in metrics.FAMILIES},
             **{name: metric.family for name, metric in metrics.METRICS.items()}}
_TAG_METRIC = {tag: metrics.of_family(tag).name for tag in metrics.FAMILIES}
_TAG_PREFERENCE = ("l2", "cosine", "ip")


def _check_int(name, value, minimum):
    """Return ``value`` as a Python int, checking type and lower bound."""
    # bool is an Integral, but passing True for a size is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} "
                        f"({value!r})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------

def make_blobs_lowrank(n_rows, dim, *, n_queries=0, intrinsic_dim=None,
                       n_clusters=None, seed=0, dtype=np.float32, out=None):
    """Structured synthetic vectors with a low intrinsic dimension.

    Points are drawn in a latent space of ``intrinsic_dim`` dimensions from a
    mixture of ``n_clusters`` anisotropic Gaussians (random means, random
    orientations, unequal axis scales, unequal cluster sizes). They are mapped
    to ``dim`` dimensions by a random linear map whose output scales decay
    (so that, as in SIFT or embedding data, dimensions have very different
    variances), bent by a mild nonlinearity (``tanh`` of a second random
    projection, mapped out at about 15 % of the signal scale) and blurred by
    small noise with isotropic covariance (5 % of the signal scale). This
    makes the data clustered and close to a low-dimensional curved manifold
    -- the regime where IVF and scalar quantization are meant to work --
    unlike uniform noise, on which every approximate method looks bad.

    Parameters
    ----------
    n_rows : int
        Number of base rows (>= 1).
    dim : int
        Dimension of the vectors (>= 1).
    n_queries : int, default 0
        Number of query rows, drawn from the same distribution as the base
        but as separate points. The base does not depend on ``n_queries``.
    intrinsic_dim : int, optional
        Latent dimension, 1 <= intrinsic_dim <= dim. Default
        ``min(dim, max(4, min(32, dim // 4)))``.
    n_clusters : int, optional
        Number of mixture components. Default
        ``max(8, int(sqrt(n_rows) / 2))``.
    seed : int, numpy.random.Generator or None, default 0
        Seed for :func:`numpy.random.default_rng`; the same integer seed
        gives the same bytes.
    dtype : floating dtype, default numpy.float32
        dtype of the returned arrays (values are computed in float32).
    out : ndarray, optional
        Where to write the base: shape (n_rows, dim), a floating dtype
        (``dtype`` is then ignored for the base), C-contiguous; for example
        a :func:`numpy.lib.format.open_memmap` file, for sets larger than
        memory (rows are generated a block at a time). The same bytes as
        without it.

    Returns
    -------
    base : ndarray, shape (n_rows, dim)
        Returned alone when ``n_queries == 0``.
    (base, queries) : tuple of ndarray
        When ``n_queries > 0``; ``queries`` has shape (n_queries, dim).
        Both are C-contiguous in ``dtype``.

    Examples
    --------
    >>> from ivfsq.datasets import make_blobs_lowrank
    >>> base, queries = make_blobs_lowrank(1000, 64, n_queries=10, seed=1)
    >>> base.shape, queries.shape, base.dtype
    ((1000, 64), (10, 64), dtype('float32'))
    """
    n_rows = _check_int("n_rows", n_rows, 1)
    dim = _check_int("dim", dim, 1)
    n_queries = _check_int("n_queries", n_queries, 0)
    if intrinsic_dim is None:
        intrinsic_dim = min(dim, max(4, min(32, dim // 4)))
    else:
        intrinsic_dim = _check_int("intrinsic_dim", intrinsic_dim, 1)
        if intrinsic_dim > dim:
            raise ValueError(f"intrinsic_dim must be <= dim ({dim}), "
                             f"got {intrinsic_dim}")
    if n_clusters is None:
        n_clusters = max(8, int(np.sqrt(n_rows) / 2))
    else:
        n_clusters = _check_int("n_clusters", n_clusters, 1)
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}") from exc
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating dtype (float16, float32, "
                        f"float64), got {dtype}")

    rng = np.random.default_rng(seed)
    model = _lowrank_model(rng, dim, intrinsic_dim, n_clusters)
    # Base and queries get their own streams, derived from the model stream,
    # so the base is the same whatever n_queries is, and the two sets are
    # independent draws (hence distinct points) from one distribution.
    base_seed, query_seed = (int(s) for s in rng.integers(0, 2**63, size=2))

    if out is None:
        base = np.empty((n_rows, dim), dtype=dtype)
    else:
        base = out
        if not isinstance(out, np.ndarray) or out.shape != (n_rows, dim):
            raise ValueError(f"out must be an array of shape ({n_rows}, {dim}), got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        if out.dtype.kind != "f" or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writeable C-contiguous floating array, got "
                             f"dtype {out.dtype}")
    _lowrank_sample(model, np.random.default_rng(base_seed), base)
    if n_queries == 0:
        return base
    queries = np.empty((n_queries, dim), dtype=dtype)
    _lowrank_sample(model, np.random.default_rng(query_seed), queries)
    return base, queries


def _lowrank_model(rng, dim, r, n_clusters):
    """Draw the parameters of the generative model used by make_blobs_lowrank."""
    f32 = np.float32
    # Unequal cluster sizes, as in real data (log-normal weights).
    weights = np.exp(0.5 * rng.standard_normal(n_clusters))
    weights /= weights.sum()
    means = rng.standard_normal((n_clusters, r))
    # Anisotropic clusters: axis scales decay along each cluster's own random
    # orientation; z = mean + eps @ A_c has covariance A_c^T A_c.
    axis = 0.6 * np.exp(-np.linspace(0.0, 1.5, r))
    scales = axis * np.exp(0.25 * rng.standard_normal((n_clusters, 1)))
    rot, _ = np.linalg.qr(rng.standard_normal((n_clusters, r, r)))
    mix = scales[:, :, None] * np.swapaxes(rot, 1, 2)
    # Output-dimension scales decay by e^-3 (x400 in variance) and are
    # shuffled, so high- and low-variance dimensions are interleaved.
    col_scale = np.exp(-3.0 * np.arange(dim) / dim)[rng.permutation(dim)]
    linear = rng.standard_normal((r, dim)) / np.sqrt(r) * col_scale
    # The bend is tanh of a random r-dim projection of z, mapped out with
    # amplitude 15 % of each output scale: cheap (tanh on r columns, not
    # dim) and it curves the r-dim latent sheet without adding dimensions.
    lift = rng.standard_normal((r, r)) / np.sqrt(r)
    phase = rng.uniform(-1.0, 1.0, size=r)
    bend = 0.15 * rng.standard_normal((r, dim)) / np.sqrt(r) * col_scale
    offset = 0.5 * rng.standard_normal(dim) * col_scale
    noise_std = 0.05 * float(np.sqrt(np.mean(col_scale ** 2)))
    return {
        "weights": weights, "means": means.astype(f32), "mix": mix.astype(f32),
        "lift": lift.astype(f32), "phase": phase.astype(f32),
        # One GEMM maps [z, tanh(z @ lift + phase)] to the output space.
        "mapping": np.vstack((linear, bend)).astype(f32),
        "offset": offset.astype(f32), "noise_std": noise_std,
    }


def _lowrank_sample(model, rng, out):
    """Fill ``out`` (n, dim) with samples of the model, one block at a time."""
    n, dim = out.shape
    means, mix = model["means"], model["mix"]
    n_clusters, r = means.shape
    # Uniform noise with the same covariance (noise_std^2 * I) as Gaussian
    # noise: it is three times cheaper to draw, and drawing dominated the run
    # time; its exact shape does not matter at 5 % of the signal.
    noise_width = np.float32(model["noise_std"] * np.sqrt(12.0))
    block = min(_BLOCK_ROWS, n)
    direct = out.dtype == np.float32
    y_buf = None if direct else np.empty((block, dim), dtype=np.float32)
    u_buf = np.empty((block, dim), dtype=np.float32)
    h_buf = np.empty((block, 2 * r), dtype=np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        # float32 output is written in place (no extra copy of the block).
        y = out[start:start + m] if direct else y_buf[:m]
        u, h = u_buf[:m], h_buf[:m]
        labels = rng.choice(n_clusters, size=m, p=model["weights"])
        eps = rng.standard_normal((m, r), dtype=np.float32)
        # Group rows by cluster so each cluster is one small GEMM. The eps
        # rows are i.i.d., so consecutive eps rows can go to the (scattered)
        # rows of a cluster without changing the distribution.
        order = np.argsort(labels, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(labels, minlength=n_clusters))))
        for c in np.flatnonzero(np.diff(bounds)):
            lo, hi = bounds[c], bounds[c + 1]
            h[order[lo:hi], :r] = eps[lo:hi] @ mix[c] + means[c]
        z = h[:, :r]
        np.matmul(z, model["lift"], out=h[:, r:])
        h[:, r:] += model["phase"]
        np.tanh(h[:, r:], out=h[:, r:])
        np.matmul(h, model["mapping"], out=y)
        rng.random(out=u, dtype=np.float32)
        u -= np.float32(0.5)
        u *= noise_width
        y += u
        y += model["offset"]
        if not direct:
            out[start:start + m] = y


# --------------------------------------------------------------------------
# exact k-NN
# --------------------------------------------------------------------------

def _as_real_2d(name, x):
    """Return ``x`` as a 2-D array of a real dtype, without copying ndarrays."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a real numeric dtype (bool, int, "
                        f"uint or float), got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {x.shape}")
    return x


def _to_f32(name, block):
    """Convert a block to float32, rejecting NaN/inf (which break the sort)."""
    out = np.ascontiguousarray(block, dtype=np.float32)
    if block.dtype.kind == "f" and not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinite values (or values "
                         f"outside the float32 range)")
    return out


def brute_force_knn(base, queries, k, metric="sqeuclidean", *, batch_size=None):
    """Exact k nearest neighbours by blocked matrix products.

    The base is read one block of rows at a time (so it may be a read-only
    :class:`numpy.memmap` larger than RAM) and a running top-k is kept per
    query. Candidates are chosen with float32 GEMM scores, with a safety
    margin of extra candidates per block, and then re-scored exactly in
    float64 from the original values; results are ordered by (distance, id),
    so equal distances are broken by the smaller id.

    Parameters
    ----------
    base : array_like, shape (n_base, dim)
        Database vectors, any real dtype (e.g. uint8 SIFT data); converted
        to float32 one block at a time.
    queries : array_like, shape (n_queries, dim)
        Query vectors, any real dtype.
    k : int
        Number of neighbours, 1 <= k <= n_base.
    metric : {"sqeuclidean", "euclidean", "inner_product", "cosine"}
        ``"sqeuclidean"`` and ``"euclidean"`` return (squared) Euclidean
        distances, ascending; ``"inner_product"`` returns inner products,
        descending; ``"cosine"`` returns ``1 - cosine similarity``,
        ascending (a zero vector has cosine distance 1 to everything).
    batch_size : int, optional
        Base rows per block (default 65536).

    Returns
    -------
    distances : ndarray of float32, shape (n_queries, k)
    neighbors : ndarray of int64, shape (n_queries, k)
        Row numbers in ``base``, best first.

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.datasets import brute_force_knn
    >>> base = np.array([[0, 0], [1, 0], [0, 2]], dtype=np.uint8)
    >>> d, i = brute_force_knn(base, np.array([[0.9, 0.1]]), k=2)
    >>> i
    array([[1, 0]])
    >>> np.round(d, 2)
    array([[0.02, 0.82]], dtype=float32)
    """
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}; "
                         f"got {metric!r}")
    metric = metrics.get(metric)
    base = _as_real_2d("base", base)
    queries = _as_real_2d("queries", queries)
    n_base, dim = base.shape
    n_q = queries.shape[0]
    if queries.shape[1] != dim:
        raise ValueError(f"queries must have the same dimension as base "
                         f"({dim}), got shape {queries.shape}")
    k = _check_int("k", k, 1)
    if k > n_base:
        raise ValueError(f"k ({k}) must not exceed the number of base rows "
                         f"({n_base})")
    if batch_size is None:
        batch_size = _BLOCK_ROWS
    else:
        batch_size = _check_int("batch_size", batch_size, 1)

    # Smaller score = better for every metric: inner products are negated.
    q32 = _to_f32("queries", queries)
    q64 = queries.astype(np.float64)
    if metric.normalized:
        qnorm = np.sqrt(np.einsum("ij,ij->i", q64, q64))
        # Zero queries stay zero: similarity 0, distance 1 to everything.
        q64 = q64 / np.where(qnorm > 0, qnorm, 1.0)[:, None]
        q32 = q64.astype(np.float32)

    best_key = np.full((n_q, k), np.inf)
    best_id = np.full((n_q, k), _NO_ID, dtype=np.int64)
    if n_q == 0:
        return best_key.astype(np.float32), best_id

    # Extra candidates per block absorb float32 rounding near the k-th
    # distance (and keep exact ties together for the by-id tie break).
    pad = max(16, k // 4)
    exact_src = base.dtype in _EXACT_IN_F32

    for start in range(0, n_base, batch_size):
        stop = min(n_base, start + batch_size)
        raw = np.asarray(base[start:stop])
        b32 = _to_f32("base", raw)
        src = b32 if exact_src else raw
        rows = stop - start
        n_cand = min(rows, k + pad)
        if metric.family == "l2":
            bias = np.einsum("ij,ij->i", b32, b32)
        elif metric.family == "cosine":
            bnorm = np.sqrt(np.einsum("ij,ij->i", b32, b32))
            # Zero base rows get similarity 0 (distance 1), not a 0/0 NaN.
            inv_bnorm = np.divide(1.0, bnorm, out=np.zeros_like(bnorm), where=bnorm > 0)
        q_step = max(1, min(_SCORE_BUDGET // rows, _RESCORE_BUDGET // (n_cand * dim)))
        for qs in range(0, n_q, q_step):
            qe = min(n_q, qs + q_step)
            scores = q32[qs:qe] @ b32.T
            if metric.family == "l2":
                # |q|^2 is the same for the whole row, so it is left out.
                scores *= -2.0
                scores += bias
            elif metric.family == "cosine":
                scores *= inv_bnorm
                np.negative(scores, out=scores)
            else:
                np.negative(scores, out=scores)
            if n_cand < rows:
                cand = np.argpartition(scores, n_cand - 1, axis=1)[:, :n_cand]
            else:
                cand = np.broadcast_to(np.arange(rows), (qe - qs, rows))
            del scores
            key = _exact_keys(metric, q64[qs:qe], src[cand])
            ids = cand + np.int64(start)
            all_key = np.concatenate((best_key[qs:qe], key), axis=1)
            all_id = np.concatenate((best_id[qs:qe], ids), axis=1)
            order = np.lexsort((all_id, all_key), axis=-1)[:, :k]
            best_key[qs:qe] = np.take_along_axis(all_key, order, axis=1)
            best_id[qs:qe] = np.take_along_axis(all_id, order, axis=1)

    return metric.to_public(best_key).astype(np.float32), best_id


def _exact_keys(metric, q, cand_rows):
    """float64 scores (smaller = better) of candidate rows (nq, c, d) for q (nq, d)."""
    cand_rows = cand_rows.astype(np.float64)
    if metric.family == "l2":
        # Direct differences, not the |q|^2 - 2qb + |b|^2 expansion, so that
        # equal distances come out bit-equal and tie-break by id.
        cand_rows -= q[:, None, :]
        return np.einsum("ijk,ijk->ij", cand_rows, cand_rows)
    dots = np.einsum("ijk,ik->ij", cand_rows, q)
    if metric.family == "ip":
        return -dots
    # cosine: q is already unit (or zero) norm.
    norms = np.sqrt(np.einsum("ijk,ijk->ij", cand_rows, cand_rows))
    sim = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.clip(1.0 - sim, 0.0, 2.0)


# --------------------------------------------------------------------------
# recall
# --------------------------------------------------------------------------

def recall_at_k(found, truth, k=None):
    """Mean recall@k of found neighbour ids against ground-truth ids.

    For each query ``i`` this is ``|set(found[i, :k]) & set(truth[i, :k])| / k``;
    the result is the mean over queries. Negative ids (``-1`` marks "no
    result") never count as hits, and an id repeated in ``found`` counts once.

    Parameters
    ----------
    found : array_like of int, shape (n_queries, >= k)
        Ids returned by a search, best first.
    truth : array_like of int, shape (n_queries, >= k)
        Exact ids, best first (e.g. ``gt_l2.npy``).
    k : int, optional
        Cut-off; defaults to ``found.shape[1]``.

    Returns
    -------
    float
        Recall in [0, 1].

    Examples
    --------
    >>> from ivfsq.datasets import recall_at_k
    >>> recall_at_k([[1, 2, -1], [4, 5, 6]], [[2, 1, 3], [7, 8, 9]])
    0.3333333333333333
    """
    found = np.asarray(found)
    truth = np.asarray(truth)
    for name, arr in (("found", found), ("truth", truth)):
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array of ids, got dtype "
                            f"{arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_queries, k), got shape "
                             f"{arr.shape}")
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"found and truth must have the same number of rows "
                         f"(queries), got {found.shape[0]} and {truth.shape[0]}")
    if found.shape[0] == 0:
        raise ValueError("found and truth have no rows (queries)")
    if k is None:
        k = found.shape[1]
    k = _check_int("k", k, 1)
    if k > found.shape[1] or k > truth.shape[1]:
        raise ValueError(f"k ({k}) must not exceed the number of columns of "
                         f"found ({found.shape[1]}) and truth ({truth.shape[1]})")

    f = found[:, :k].astype(np.int64)
    t = np.sort(truth[:, :k].astype(np.int64), axis=1)
    # Count each distinct, valid truth id that occurs in found: this is the
    # set intersection size, robust to repeats on either side.
    counted = t >= 0
    counted[:, 1:] &= t[:, 1:] != t[:, :-1]
    hits = 0
    step = max(1, (1 << 22) // (k * k))  # bounds the (rows, k, k) comparison
    for s in range(0, f.shape[0], step):
        e = s + step
        present = (t[s:e, :, None] == f[s:e, None, :]).any(axis=2)
        hits += int(np.count_nonzero(present & counted[s:e]))
    return hits / (k * f.shape[0])


# --------------------------------------------------------------------------
# data set folders
# --------------------------------------------------------------------------

def load_dataset_dir(path, metric=None, *, mmap=True):
    """Load a data set folder (``base.npy``, ``query.npy``, ``gt_<metric>.npy``).

    Parameters
    ----------
    path : str or os.PathLike
        The folder. It must hold ``base.npy`` (N, d) and ``query.npy``
        (nq, d); ground truth ``gt_<tag>.npy`` (nq, K) integer ids, best
        first, and ``gt_<tag>_dist.npy`` are optional. Tags are ``l2``,
        ``ip`` and ``cosine``.
    metric : str, optional
        ``"l2"``, ``"ip"``, ``"cosine"`` or one of our metric names
        (``"sqeuclidean"``/``"euclidean"`` mean ``l2``, ``"inner_product"``
        means ``ip``). If None, the ground truth present is used, preferring
        ``l2``, then ``cosine``, then ``ip``.
    mmap : bool, default True
        Memory-map ``base.npy`` read-only instead of reading it into memory.

    Returns
    -------
    dict
        ``"base"``, ``"queries"``, ``"gt"`` (ids, or None if that ground truth
        is absent), ``"gt_dist"`` (its scores, or None), ``"metric"``
        (``"sqeuclidean"``, ``"inner_product"`` or ``"cosine"``; None when
        ``metric`` is None and no ground truth exists) and ``"name"`` (the
        folder name).

    Examples
    --------
    >>> from ivfsq.datasets import find_shared_dataset, load_dataset_dir
    >>> folder = find_shared_dataset("siftsmall")
    >>> if folder is not None:
    ...     ds = load_dataset_dir(folder)
    ...     print(ds["metric"], ds["base"].shape, ds["gt"].shape)
    ... else:
    ...     print("sqeuclidean (10000, 128) (100, 100)")
    sqeuclidean (10000, 128) (100, 100)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"data set folder {str(folder)!r} does not exist "
                                f"or is not a directory")
    if metric is None:
        tags = [t for t in _TAG_PREFERENCE if (folder / f"gt_{t}.npy").is_file()]
        tag = tags[0] if tags else None
    else:
        tag = _metric_tag(metric)

    base = _load_npy(folder / "base.npy", mmap_mode="r" if mmap else None)
    queries = _load_npy(folder / "query.npy")
    for name, arr in (("base.npy", base), ("query.npy", queries)):
        if arr.ndim != 2:
            raise ValueError(f"{str(folder / name)!r} must hold a 2-D array, got "
                             f"shape {arr.shape}")
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"{str(folder / 'query.npy')!r} has dimension "
                         f"{queries.shape[1]} but base.npy has {base.shape[1]}")

    gt = gt_dist = None
    if tag is not None:
        gt_path = folder / f"gt_{tag}.npy"
        if gt_path.is_file():
            gt = _load_npy(gt_path)
            if gt.ndim != 2 or gt.shape[0] != queries.shape[0] or gt.dtype.kind not in "iu":
                raise ValueError(f"{str(gt_path)!r} must hold integer ids of shape "
                                 f"({queries.shape[0]}, K), got {gt.dtype} "
                                 f"{gt.shape}")
            dist_path = folder / f"gt_{tag}_dist.npy"
            if dist_path.is_file():
                gt_dist = _load_npy(dist_path)
                if gt_dist.shape != gt.shape:
                    raise ValueError(f"{str(dist_path)!r} has shape {gt_dist.shape}, "
                                     f"expected {gt.shape} like {gt_path.name}")
    return {
        "base": base,
        "queries": queries,
        "gt": gt,
        "gt_dist": gt_dist,
        "metric": None if tag is None else _TAG_METRIC[tag],
        "name": folder.resolve().name,
    }


def _load_npy(path, mmap_mode=None):
    """np.load with a message that names the missing file."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file {str(path)!r}")
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def find_shared_dataset(name):
    """Locate a shared data set folder by name, or return None.

    Looks, in order, in ``$IVFSQ_DATA_DIR/<name>`` (when that variable is
    set), then for ``shared/data/<name>`` in each parent directory of this
    module and then of the current working directory (the shared data sits
    next to the repository clone). A folder counts only if it holds
    ``base.npy``.

    Parameters
    ----------
    name : str
        Folder name, e.g. ``"siftsmall"``, ``"fashion-mnist"``,
        ``"pypi-minilm"``.

    Returns
    -------
    pathlib.Path or None

    Examples
    --------
    >>> from ivfsq.datasets import find_shared_dataset
    >>> find_shared_dataset("no-such-data-set") is None
    True
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"name must be a plain folder name, got {name!r}")

    candidates = []
    env = os.environ.get("IVFSQ_DATA_DIR")
    if env:
        candidates.append(pathlib.Path(env) / name)
    for start in (pathlib.Path(__file__).resolve().parent, pathlib.Path.cwd()):
        for parent in (start, *start.parents):
            candidates.append(parent / "shared" / "data" / name)
    for folder in candidates:
        if (folder / "base.npy").is_file():
            return folder
    return None


# --------------------------------------------------------------- file loaders
#: File formats :func:`load_vectors` reads, by suffix.
VECTOR_SUFFIXES = (".npy", ".fvecs", ".bvecs", ".ivecs")
HDF5_SUFFIXES = (".hdf5", ".h5")

# TEXMEX formats: each row is a little-endian int32 dimension, then the row.
_TEXMEX_DTYPES = {".fvecs": np.dtype("<f4"), ".ivecs": np.dtype("<i4"), ".bvecs": np.dtype("u1")}

# ann-benchmarks "distance" attribute -> metric.
_ANN_METRICS = {"euclidean": "sqeuclidean", "angular": "cosine", "dot": "inner_product",
                "ip": "inner_product", "cosine": "cosine", "l2": "sqeuclidean"}


def read_texmex(path, *, mmap=True):
    """Read a TEXMEX ``.fvecs`` (float32), ``.bvecs`` (uint8) or ``.ivecs``
    (int32) file as a 2-D array.

    Every row is stored as its dimension (int32) followed by its values; all
    rows must have the same dimension. With ``mmap`` the result is a
    read-only strided view of a memory map (nothing is read until used), so
    files larger than RAM can be indexed batch by batch.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unknown suffix, an empty or truncated file, a non-positive
        dimension, or rows of different dimensions.

    Examples
    --------
    >>> import numpy as np, pathlib, tempfile
    >>> from ivfsq.datasets import read_texmex
    >>> rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> record = np.hstack([np.full((2, 1), 3, np.int32).view(np.float32), rows])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "x.fvecs"
    ...     record.tofile(path)
    ...     read_texmex(path).tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix not in _TEXMEX_DTYPES:
        raise ValueError(f"path must end in .fvecs, .bvecs or .ivecs, got {str(path)!r}")
    dtype = _TEXMEX_DTYPES[suffix]
    size = path.stat().st_size
    if size < 4:
        raise ValueError(f"{str(path)!r} is empty or truncated ({size} bytes): not a "
                         f"{suffix} file")
    dim = int(np.fromfile(path, dtype="<i4", count=1)[0])
    row_bytes = 4 + dim * dtype.itemsize
    if dim <= 0 or size % row_bytes:
        raise ValueError(
            f"{str(path)!r} is not a valid {suffix} file: its first row declares dimension "
            f"{dim}, which does not divide the file size {size} into rows of {row_bytes} bytes"
        )
    n_rows = size // row_bytes
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n_rows, row_bytes))
    dims = raw[:, :4].view("<i4")[:, 0]
    if not np.all(dims == dim):
        bad = int(np.flatnonzero(dims != dim)[0])
        raise ValueError(f"{str(path)!r}: row {bad} declares dimension {int(dims[bad])}, "
                         f"row 0 declares {dim}; all rows must have the same dimension")
    values = raw[:, 4:].view(dtype)
    return values if mmap else np.array(values)


def read_ann_hdf5(path):
    """Read an ann-benchmarks HDF5 file (needs the optional ``h5py``).

    Returns a dict: ``"base"`` (the ``train`` set), ``"queries"`` (``test``),
    ``"gt"`` (``neighbors``, or None), ``"gt_dist"`` (``distances``, or
    None), ``"metric"`` (from the file's ``distance`` attribute:
    euclidean -> ``"sqeuclidean"``, angular -> ``"cosine"``, dot ->
    ``"inner_product"``; None when absent) and ``"name"`` (the file stem).
    Arrays are read into memory.
    """
    path = _existing_file(path)
    try:
        import h5py
    except ImportError:
        raise ImportError(
            f"reading {str(path)!r} needs h5py, which is not installed: "
            f"pip install 'ivfsq[hdf5]' (or pip install h5py)"
        ) from None
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{str(path)!r} is not a readable HDF5 file ({error})") from None
    with handle:
        missing = [name for name in ("train", "test") if name not in handle]
        if missing:
            raise ValueError(f"{str(path)!r} is not an ann-benchmarks file: no "
                             f"{' or '.join(missing)} data set")
        distance = handle.attrs.get("distance")
        if isinstance(distance, bytes):
            distance = distance.decode()
        metric = None
        if distance is not None:
            if str(distance) not in _ANN_METRICS:
                raise ValueError(f"{str(path)!r}: distance {distance!r} is not supported "
                                 f"(expected one of {', '.join(sorted(_ANN_METRICS))})")
            metric = _ANN_METRICS[str(distance)]
        data = {
            "base": np.asarray(handle["train"]),
            "queries": np.asarray(handle["test"]),
            "gt": np.asarray(handle["neighbors"]) if "neighbors" in handle else None,
            "gt_dist": np.asarray(handle["distances"]) if "distances" in handle else None,
            "metric": metric,
            "name": path.stem,
        }
    for name in ("base", "queries"):
        if data[name].ndim != 2:
            raise ValueError(f"{str(path)!r}: {name} must be 2-D, got shape {data[name].shape}")
    if data["queries"].shape[1] != data["base"].shape[1]:
        raise ValueError(f"{str(path)!r}: test has dimension {data['queries'].shape[1]} but "
                         f"train has {data['base'].shape[1]}")
    return data


def load_vectors(path, *, mmap=True):
    """Read a 2-D array of vectors from ``.npy``, ``.fvecs``, ``.bvecs`` or ``.ivecs``.

    ``.npy`` files are memory-mapped read-only when ``mmap`` (never
    unpickled); TEXMEX files as in :func:`read_texmex`.

    Examples
    --------
    >>> import numpy as np, pathlib, tempfile
    >>> from ivfsq.datasets import load_vectors
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "base.npy"
    ...     np.save(path, np.ones((4, 2), np.float32))
    ...     load_vectors(path).shape
    (4, 2)
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix in _TEXMEX_DTYPES:
        return read_texmex(path, mmap=mmap)
    if suffix != ".npy":
        raise ValueError(f"path must be a .npy, .fvecs, .bvecs or .ivecs file, got "
                         f"{str(path)!r}")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{str(path)!r} is not a readable .npy array ({error})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise ValueError(f"{str(path)!r} must hold a 2-D array (rows, dim), got shape {shape}")
    return array


def load_data(path, metric=None, *, mmap=True):
    """Load a data set from a folder, an ann-benchmarks HDF5 file or a vector file.

    Returns the dict of :func:`load_dataset_dir`. A plain vector file gives
    only ``"base"`` (``"queries"``, ``"gt"`` and ``"gt_dist"`` are None);
    ``metric`` then defaults to None as well.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = pathlib.Path(path)
    if path.is_dir():
        return load_dataset_dir(path, metric, mmap=mmap)
    if path.suffix.lower() in HDF5_SUFFIXES:
        data = read_ann_hdf5(path)
        if metric is not None:
            data["metric"] = _TAG_METRIC[_metric_tag(metric)]
        return data
    base = load_vectors(path, mmap=mmap)
    return {"base": base, "queries": None, "gt": None, "gt_dist": None,
            "metric": None if metric is None else _TAG_METRIC[_metric_tag(metric)],
            "name": path.stem}


def _metric_tag(metric):
    if not isinstance(metric, str) or metric not in _FILE_TAG:
        raise ValueError(f"metric must be one of {', '.join(map(repr, _FILE_TAG))}; "
                         f"got {metric!r}")
    return _FILE_TAG[metric]


def _existing_file(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file")
    return path
