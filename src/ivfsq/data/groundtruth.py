"""Exact k nearest neighbours by blocked GEMM in bounded memory
(:func:`brute_force_knn`) and recall against ground truth (:func:`recall_at_k`).
"""

from __future__ import annotations

import numpy as np

from ivfsq import metrics
from ivfsq.data._common import BLOCK_ROWS, check_int

#: Metrics understood by :func:`brute_force_knn`.
METRICS = metrics.NAMES


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
    k = check_int("k", k, 1)
    if k > n_base:
        raise ValueError(f"k ({k}) must not exceed the number of base rows "
                         f"({n_base})")
    if batch_size is None:
        batch_size = BLOCK_ROWS
    else:
        batch_size = check_int("batch_size", batch_size, 1)

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
    k = check_int("k", k, 1)
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
