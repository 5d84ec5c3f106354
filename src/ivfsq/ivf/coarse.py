"""Exact coarse search through a low-dimensional lower bound.

Picking the ``n_probes`` best lists costs ``n_lists x dim`` multiply-adds
per query, a large share of a batch's time when few lists are probed.
When the centers lie close to a subspace, most of that is avoidable
without changing which lists are picked:

- The centers' principal directions give an orthonormal basis ``P`` (``r``
  columns). With ``q' = q - m`` and ``c' = c - m`` (``m`` the centers' mean),
  ``a = |q' - P P^T q'|`` and ``b = |c' - P P^T c'|`` (the parts off the
  subspace), Cauchy-Schwarz gives ``q' . c' <= P^T q' . P^T c' + a b``.
- So ``q_aug = [P^T q', a]`` against ``c_aug = [P^T c', b]`` (``r + 1``
  dimensions) bounds every list's coarse score from below:

  - L2: ``|c|^2 - 2 q.c = (|q'|^2 - |q|^2) + |c'|^2 - 2 q'.c'``;
  - inner product: ``-q.c = -(q'.c' + q.m + c.m - m.m)``;

  each is ``query_term + center_term + scale * (q_aug . c_aug)`` with the
  dot replaced by its bound.
- The kernel (:func:`ivfsq.backends.cpu.probes.select_probes_bounded`) scores a few
  lists with the best bounds exactly, then every list whose bound could
  still beat the ``n_probes``-th exact score. A list it skips cannot be
  among the best, so the selection is that of the full computation (up to
  float32 rounding, which a small slack on the bound covers).

The basis is computed from the centers on first use (not stored in index
files) and used only where it saves work (:meth:`CoarseBound.pays_off`).
"""

import numpy as np

from ivfsq.backends.cpu import kernels

# Smallest share of the centers' variance (about their mean) the subspace
# keeps: a smaller subspace is cheaper to score, but its looser bound leaves
# more lists per query to score exactly.
MIN_ENERGY = 0.98
# Subspace sizes are multiples of this (whole SIMD registers).
DIM_STEP = 8
# The bound is used only when its estimated cost is at most this share of
# the full computation's.
MAX_COST_SHARE = 0.5
# Relative slack on the bound, against float32 rounding in both the bound
# and the exact scores.
SLACK = 1e-5


class CoarseBound:
    """The subspace and per-center terms of the coarse lower bound.

    ``basis`` is float32 ``(r, dim)`` (rows orthonormal), ``center_aug``
    float32 ``(n_lists, r + 1)``; ``center_terms`` (float32, per list) and
    ``scale`` are those of the module docstring for the metric.
    """

    def __init__(self, mean, basis, center_aug, center_terms, scale, inner_product, slack_terms):
        self.mean = mean
        self.basis = basis
        self.center_aug = center_aug
        self.center_terms = center_terms
        self.scale = scale
        self.inner_product = inner_product
        # (largest |c'|, largest |center term|): scales of the slack.
        self.slack_terms = slack_terms
        self.projected_mean = np.ascontiguousarray(mean @ basis.T, dtype=np.float32)

    @property
    def rank(self):
        return self.basis.shape[0]

    @classmethod
    def build(cls, centers, inner_product):
        """The bound for these centers, or None when no subspace is small
        enough to pay off at any number of probes."""
        n_lists, dim = centers.shape
        if n_lists < 2 * DIM_STEP or dim < 2 * DIM_STEP:
            return None
        centers64 = centers.astype(np.float64)
        mean = centers64.mean(axis=0)
        centered = centers64 - mean
        variances, axes = _principal_axes(centered)
        energy = np.cumsum(variances)
        if energy[-1] <= 0.0:
            return None
        enough = int(np.searchsorted(energy / energy[-1], MIN_ENERGY)) + 1
        rank = min(-(-enough // DIM_STEP) * DIM_STEP, variances.shape[0])
        if _cost(n_lists, dim, rank, n_probes=1) > MAX_COST_SHARE * n_lists * dim:
            return None
        basis = axes(rank)
        projected = centered @ basis.T
        off = np.sqrt(np.maximum((centered**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0))
        center_aug = np.hstack([projected, off[:, None]])
        if inner_product:
            center_terms = mean @ mean - centers64 @ mean
            scale = -1.0
        else:
            center_terms = (centered**2).sum(axis=1)
            scale = -2.0
        slack_terms = (
            float(np.sqrt((centered**2).sum(axis=1).max())),
            float(np.abs(center_terms).max()),
        )
        return cls(
            mean.astype(np.float32),
            np.ascontiguousarray(basis, dtype=np.float32),
            np.ascontiguousarray(center_aug, dtype=np.float32),
            center_terms.astype(np.float32),
            np.float32(scale),
            inner_product,
            slack_terms,
        )

    def pays_off(self, n_probes):
        """Whether the bound is estimated cheaper than full coarse search."""
        n_lists, dim = self.center_aug.shape[0], self.basis.shape[1]
        return _cost(n_lists, dim, self.rank, n_probes) <= MAX_COST_SHARE * n_lists * dim

    def query_parts(self, queries):
        """``q_aug`` (float32, (n, r + 1)) and the per-query term of the
        bound with its slack already taken off (float32, (n,))."""
        query_aug = np.empty((queries.shape[0], self.rank + 1), dtype=np.float32)
        np.matmul(queries, self.basis.T, out=query_aug[:, :-1])
        terms = np.empty(queries.shape[0], dtype=np.float32)
        max_center, max_term = self.slack_terms
        kernels.coarse.bound_query_parts(
            queries, self.mean, self.projected_mean, self.inner_product, SLACK, max_center,
            max_term, query_aug, terms,
        )
        return query_aug, terms

    def select_few(self, queries, centers, center_sq_norms, use_l2, out_scores, out_lists):
        """The probes of a few queries (:func:`select_probes_bounded_few`:
        one kernel call, no BLAS)."""
        max_center, max_term = self.slack_terms
        kernels.coarse.select_probes_bounded_few(
            queries, self.basis, self.mean, self.projected_mean, self.inner_product, SLACK,
            max_center, max_term, self.center_aug, self.center_terms, self.scale, centers,
            center_sq_norms, use_l2, out_scores, out_lists,
        )


def _principal_axes(centered):
    """Variances along the principal axes of centered rows (descending) and
    a function giving the first ``r`` axes as orthonormal rows.

    From the eigenvectors of the smaller Gram matrix (rows x rows or
    columns x columns), which is cheaper than an SVD of the rows.
    """
    n_rows, dim = centered.shape
    if dim <= n_rows:
        values, vectors = np.linalg.eigh(centered.T @ centered)
        values, vectors = np.maximum(values[::-1], 0.0), vectors[:, ::-1]
        return values, lambda rank: vectors[:, :rank].T
    values, vectors = np.linalg.eigh(centered @ centered.T)
    values, vectors = np.maximum(values[::-1], 0.0), vectors[:, ::-1]

    def axes(rank):
        # Right singular vectors v = X^T u / s; re-orthonormalized, as
        # dividing by small singular values loses accuracy.
        projected = (centered.T @ vectors[:, :rank]).T
        q, _ = np.linalg.qr(projected.T)
        return q.T

    return values, axes


def _cost(n_lists, dim, rank, n_probes):
    # Multiply-adds per query: projection, bound dots, and about
    # 2 x n_probes exact dots (an estimate of the lists whose bound does
    # not rule them out).
    return dim * rank + n_lists * (rank + 1) + 2 * n_probes * dim
