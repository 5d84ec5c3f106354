"""Exact re-ranking of candidate neighbours (like ``cuvs.neighbors.refine``)."""

import numpy as np

from ivfsq import _device, metrics
from ivfsq._threads import run_chunks
from ivfsq._validation import (
    METRICS,
    _as_host_array,
    check_choice,
    check_int,
    check_matrix,
    output_writer,
    to_float32,
)
from ivfsq.backends.cpu import kernels
from ivfsq.common import resolve_device, resolve_n_threads


def refine(
    dataset,
    queries,
    candidates,
    k=None,
    metric="sqeuclidean",
    indices=None,
    distances=None,
    resources=None,
):
    """Re-rank candidate neighbours by their exact distance to each query.

    Parameters
    ----------
    dataset : array (n_rows, dim)
        The vectors the candidate ids index into (row ``i`` has id ``i``).
        Any real dtype; may be memory-mapped (only candidate rows are read).
    queries : array (n_queries, dim)
    candidates : int array (n_queries, n_candidates)
        Candidate ids, e.g. from :func:`ivfsq.neighbors.ivf_sq.search` with a
        larger ``k``. Entries of -1 (missing results) are ignored.
    k : int, optional
        Neighbours to return, at most ``n_candidates``. Default: ``n_candidates``.
    metric : str
        "sqeuclidean", "euclidean", "inner_product" or "cosine".
    indices, distances : arrays (n_queries, k), optional
        int64 / float32 outputs written in place and returned: NumPy arrays,
        arrays that expose host memory (``__array_interface__``,
        ``__dlpack__``) or device arrays.
    resources : ivfsq.common.Resources, optional
        ``device="cuda"``, or device arrays among the inputs, scores on the
        GPU (the candidate rows are gathered on the host, as on the CPU);
        device ``queries`` give device results of their kind.

    Returns
    -------
    distances : float32 (n_queries, k)
        Exact distances, best first (inner products descending). Missing
        results are padded with id -1 and distance +inf (-inf for inner_product).
    indices : int64 (n_queries, k)

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import refine
    >>> dataset = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    >>> queries = np.array([[0.9, 0.0]], dtype=np.float32)
    >>> distances, indices = refine(dataset, queries, np.array([[2, 0, 1]]), k=2)
    >>> indices
    array([[1, 0]])
    """
    metric = metrics.get(check_choice("metric", metric, METRICS))
    given_queries = queries
    queries_on_device = _device.is_device_array(queries)
    on_device = queries_on_device or any(map(_device.is_device_array, (dataset, candidates)))
    device = resolve_device(resources, "cuda" if on_device else "cpu")
    dataset = check_matrix("dataset", dataset)
    queries = check_matrix("queries", queries, dim=dataset.shape[1], allow_empty=True)
    candidates = _as_host_array("candidates", candidates)
    if candidates.dtype.kind not in "iu":
        raise TypeError(f"candidates must have an integer dtype, got dtype {candidates.dtype}")
    if candidates.ndim != 2 or candidates.shape[0] != queries.shape[0]:
        raise ValueError(
            f"candidates must have shape ({queries.shape[0]}, n_candidates), got shape "
            f"{candidates.shape}"
        )
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    n_candidates = candidates.shape[1]
    if k is None:
        k = n_candidates
    k = check_int("k", k, minimum=1, maximum=max(1, n_candidates))
    if candidates.size and int(candidates.max()) >= dataset.shape[0]:
        raise ValueError(
            f"candidates must be ids < {dataset.shape[0]} (the rows of dataset), got "
            f"{int(candidates.max())}"
        )
    if candidates.size and int(candidates.min()) < -1:
        raise ValueError(f"candidates must be ids >= 0 or -1, got {int(candidates.min())}")
    n_threads = resolve_n_threads(resources)
    queries = to_float32("queries", queries)
    n_queries = queries.shape[0]
    if indices is not None:
        write_indices = output_writer("indices", indices, (n_queries, k), np.int64)
    if distances is not None:
        write_distances = output_writer("distances", distances, (n_queries, k), np.float32)
    out_d = np.empty((n_queries, k), dtype=np.float32)
    out_i = np.empty((n_queries, k), dtype=np.int64)

    # Gather only the candidate rows, so a memory-mapped dataset is read sparsely.
    used = np.unique(candidates[candidates >= 0])
    local = to_float32("dataset", dataset[used]) if used.size else np.zeros(
        (0, dataset.shape[1]), dtype=np.float32
    )
    local_candidates = np.where(candidates >= 0, np.searchsorted(used, candidates), -1)
    metric_code = kernels.common.METRIC_CODES[metric.family]

    def task(start, stop):
        kernels.exact.refine_exact(
            local,
            queries[start:stop],
            local_candidates[start:stop],
            metric_code,
            out_d[start:stop],
            out_i[start:stop],
        )

    if device == "cuda" and n_queries and k <= _max_k_on_device():
        from ivfsq.backends.cuda import search as cuda_search

        out_d, out_i = cuda_search.refine_rows(local, queries, local_candidates, used,
                                               metric_code, k)
    else:
        run_chunks(task, n_queries, n_threads, min_chunk=16)
        found = out_i >= 0
        out_i[found] = used[out_i[found]]
    metric.to_public(out_d)
    if indices is not None:
        write_indices(out_i)
        out_i = indices
    elif queries_on_device:
        out_i = _device.like(given_queries, out_i)
    if distances is not None:
        write_distances(out_d)
        out_d = distances
    elif queries_on_device:
        out_d = _device.like(given_queries, out_d)
    return out_d, out_i


def _max_k_on_device():
    """The largest k the GPU's selection takes (a larger one runs on the CPU)."""
    from ivfsq.backends.cuda import kernels as cuda_kernels

    return cuda_kernels.MAX_K
