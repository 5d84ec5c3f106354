"""Structured synthetic vectors with a low intrinsic dimension
(:func:`make_blobs_lowrank`).
"""

from __future__ import annotations

import numpy as np

from ivfsq.data._common import BLOCK_ROWS, check_int


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
    n_rows = check_int("n_rows", n_rows, 1)
    dim = check_int("dim", dim, 1)
    n_queries = check_int("n_queries", n_queries, 0)
    if intrinsic_dim is None:
        intrinsic_dim = min(dim, max(4, min(32, dim // 4)))
    else:
        intrinsic_dim = check_int("intrinsic_dim", intrinsic_dim, 1)
        if intrinsic_dim > dim:
            raise ValueError(f"intrinsic_dim must be <= dim ({dim}), "
                             f"got {intrinsic_dim}")
    if n_clusters is None:
        n_clusters = max(8, int(np.sqrt(n_rows) / 2))
    else:
        n_clusters = check_int("n_clusters", n_clusters, 1)
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
    block = min(BLOCK_ROWS, n)
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
