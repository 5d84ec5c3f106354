"""numba-cuda kernels of the GPU backend.

Each kernel mirrors a CPU kernel of :mod:`ivfsq.backends.cpu.kernels` and
computes the same values in the same precision (float32 scores from the
codes, float64 sums for list constants and exact distances), so the two
backends agree up to float32 summation order.

Top-k selection works the same way everywhere here: each thread keeps its
own ascending top-``KCAP`` in local memory (pairs ``(distance, key)``
compared lexicographically, as the CPU heaps compare them), then the
block's threads merge their lists pairwise through shared memory,
``log2(TPB)`` rounds of ``KCAP`` steps. ``KCAP`` and ``TPB`` are
compile-time sizes (local and shared arrays need them), so these kernels
come from factories, one per :data:`SHAPES` entry. ``KCAP * TPB`` is at most
2,048 entries (24 KiB of shared memory): a larger ``k`` runs on fewer
threads per block, and more blocks share a query (:func:`scan_kernel`).

Nothing here uses warp shuffles: every kernel runs unchanged on numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which is how the test suite
checks them without a GPU. The device helpers are inlined into the kernels'
IR (``inline="always"``): compiled separately, numba-cuda would ask the
driver for the current GPU, and :func:`compile_ptx` could not run without
one.
"""

import functools
import math

import numpy as np
from numba import config, cuda, float32, int64

from ivfsq.backends.cpu.kernels import score
from ivfsq.backends.cpu.kernels.common import METRIC_IP, METRIC_L2

#: (KCAP, TPB) of the selecting kernels on a GPU: local top-k capacity and
#: threads per block. A search takes the smallest KCAP holding its k.
DEVICE_SHAPES = ((16, 128), (64, 32), (256, 8), (1024, 2))
#: The simulator's: the same capacities on fewer threads (each simulated
#: thread is a Python thread), still merging over several rounds.
SIMULATOR_SHAPES = ((16, 8), (64, 4), (256, 2), (1024, 2))
SHAPES = SIMULATOR_SHAPES if config.ENABLE_CUDASIM else DEVICE_SHAPES
#: The largest k the kernels select; a larger one is the caller's to handle.
MAX_K = SHAPES[-1][0]
#: Threads per block of the element-wise kernels (2-D: 16 x 16).
TILE = 16
#: Threads per block of range_rows (one block per probed list of a query).
ROW_THREADS = 8 if config.ENABLE_CUDASIM else 128


# The sizes of a selecting kernel's local and shared arrays (SHARED = KCAP *
# TPB): each kernel made by _with_shape reads its own values from its
# globals; these module-level zeros are never compiled into one.
KCAP = TPB = SHARED = 0


def shape_for(k):
    """The (KCAP, TPB) of :data:`SHAPES` for a top-``k`` (``k <= MAX_K``)."""
    for kcap, tpb in SHAPES:
        if k <= kcap:
            return kcap, tpb
    raise ValueError(f"k must be at most {MAX_K} on the GPU, got {k}")


# ------------------------------------------------------------ device helpers
@cuda.jit(device=True, inline="always")
def _before(d1, k1, d2, k2):
    # (d1, k1) < (d2, k2): by distance, ties by key (the CPU heaps' order).
    return d1 < d2 or (d1 == d2 and k1 < k2)


@cuda.jit(device=True, inline="always")
def _init(local_d, local_k, kcap):
    for j in range(kcap):
        local_d[j] = np.float32(np.inf)
        local_k[j] = -1


@cuda.jit(device=True, inline="always")
def _offer(local_d, local_k, kcap, d, key):
    # Insert (d, key) into the ascending list if it beats the last entry.
    if not _before(d, key, local_d[kcap - 1], local_k[kcap - 1]):
        return
    i = kcap - 1
    while i > 0 and _before(d, key, local_d[i - 1], local_k[i - 1]):
        local_d[i] = local_d[i - 1]
        local_k[i] = local_k[i - 1]
        i -= 1
    local_d[i] = d
    local_k[i] = key


@cuda.jit(device=True, inline="always")
def _merge_block(local_d, local_k, shared_d, shared_k, kcap, tpb):
    """Merge every thread's ascending list; the block's top ``kcap`` ends at
    ``shared_*[:kcap]``. Every thread of the block must call it (it syncs)."""
    t = cuda.threadIdx.x
    own = t * kcap
    for j in range(kcap):
        shared_d[own + j] = local_d[j]
        shared_k[own + j] = local_k[j]
    cuda.syncthreads()
    stride = 1
    while stride < tpb:
        if t % (2 * stride) == 0 and t + stride < tpb:
            other = (t + stride) * kcap
            a = 0
            b = 0
            # a + b == j < kcap: neither list is read past its end.
            for j in range(kcap):
                if _before(shared_d[other + b], shared_k[other + b], shared_d[own + a],
                           shared_k[own + a]):
                    local_d[j] = shared_d[other + b]
                    local_k[j] = shared_k[other + b]
                    b += 1
                else:
                    local_d[j] = shared_d[own + a]
                    local_k[j] = shared_k[own + a]
                    a += 1
            for j in range(kcap):
                shared_d[own + j] = local_d[j]
                shared_k[own + j] = local_k[j]
        cuda.syncthreads()
        stride *= 2


@cuda.jit(device=True, inline="always")
def _write_block_top(local_d, local_k, shared_d, shared_k, kcap, tpb, out_d, out_k, q, first,
                     k):
    # The block's merged top k (_merge_block) to out_*[q, first : first + k].
    _merge_block(local_d, local_k, shared_d, shared_k, kcap, tpb)
    for j in range(cuda.threadIdx.x, k, tpb):
        out_d[q, first + j] = shared_d[j]
        out_k[q, first + j] = shared_k[j]


# The CPU kernels' own scalar helpers, compiled for the device: the bitset
# test and the score-to-distance rule are then one definition for both.
_is_kept = cuda.jit(device=True, inline="always")(score.is_kept.py_func)
_to_distance = cuda.jit(device=True, inline="always")(score.score_to_distance.py_func)


@cuda.jit(device=True, inline="always")
def _code_distance(weights, q, base, query_sq, codes, row, aux, metric, bits):
    # The distance of storage row ``row`` scored on its codes: ``base`` (the
    # list constant) plus the dot of the query's weights with the codes
    # (4 bits: low nibbles meet weights[:code_size], high ones the rest).
    code_size = codes.shape[1]
    total = np.float32(0.0)
    if bits == 8:
        for j in range(code_size):
            total += weights[q, j] * np.float32(codes[row, j])
    else:
        low = np.float32(0.0)
        high = np.float32(0.0)
        for j in range(code_size):
            byte = np.int32(codes[row, j])
            low += weights[q, j] * np.float32(byte & 15)
            high += weights[q, code_size + j] * np.float32(byte >> 4)
        total = low + high
    return _to_distance(metric, base + total, query_sq, aux[row])


@cuda.jit(device=True, inline="always")
def _exact_distance(queries, q, precise, half_bits, half_table, row, metric):
    # ivfsq.backends.cpu.kernels.exact._exact_distance (float64 sums) of a
    # query and a precise row: float32 rows, or (none) float16 bit patterns
    # read through half_table. Queries are normalized for cosine.
    use_half = precise.shape[0] == 0
    acc = 0.0
    sq_norm = 0.0
    for j in range(queries.shape[1]):
        if use_half:
            x = np.float64(half_table[half_bits[row, j]])
        else:
            x = np.float64(precise[row, j])
        y = np.float64(queries[q, j])
        if metric == METRIC_L2:
            acc += (y - x) * (y - x)
        else:
            acc += y * x
            sq_norm += x * x
    if metric == METRIC_L2:
        return acc
    if metric == METRIC_IP:
        return -acc
    if sq_norm == 0.0:
        return 1.0
    return 1.0 - acc / math.sqrt(sq_norm)


# ------------------------------------------------------------------ kernels
def _scan(weights, list_consts, q_sq, probes, codes, aux, ids, list_offsets, list_sizes,
          keep_words, filtered, metric, bits, emit_rows, k, out_d, out_k):
    """Top-k of each query over the rows of its probed lists, scored on the
    codes: grid (queries, splits), block TPB threads. Block ``(q, s)``
    writes its sorted top ``k`` (padded with (+inf, -1)) to
    ``out_*[q, s * k : (s + 1) * k]``; with one split that is the result.

    Keys are ids, or storage rows with ``emit_rows`` (for re-ranking).
    ``keep_words``: bitset rows, one for every query or one per query,
    checked when ``filtered``."""
    q = cuda.blockIdx.x
    split = cuda.blockIdx.y
    t = cuda.threadIdx.x
    local_d = cuda.local.array(KCAP, float32)
    local_k = cuda.local.array(KCAP, int64)
    shared_d = cuda.shared.array(SHARED, float32)
    shared_k = cuda.shared.array(SHARED, int64)
    _init(local_d, local_k, KCAP)
    word_row = q if keep_words.shape[0] > 1 else 0
    lane = split * TPB + t
    stride = cuda.gridDim.y * TPB
    query_sq = q_sq[q]
    for p in range(probes.shape[1]):
        lst = probes[q, p]
        start = list_offsets[lst]
        size = list_sizes[lst]
        base = list_consts[q, p]
        for r in range(lane, size, stride):
            row = start + r
            vid = ids[row]
            if filtered and not _is_kept(keep_words[word_row], vid):
                continue
            dist = _code_distance(weights, q, base, query_sq, codes, row, aux, metric, bits)
            _offer(local_d, local_k, KCAP, dist, row if emit_rows else vid)
    _write_block_top(local_d, local_k, shared_d, shared_k, KCAP, TPB, out_d, out_k, q,
                     split * k, k)


def _select(values, keys, k, out_d, out_k):
    """Per row, the ascending top ``k`` of ``(values, keys)``: grid rows,
    block TPB threads. ``keys`` has one row per row of ``values``, or no
    rows: the key is then the column. Entries with key -1 are padding."""
    q = cuda.blockIdx.x
    t = cuda.threadIdx.x
    local_d = cuda.local.array(KCAP, float32)
    local_k = cuda.local.array(KCAP, int64)
    shared_d = cuda.shared.array(SHARED, float32)
    shared_k = cuda.shared.array(SHARED, int64)
    _init(local_d, local_k, KCAP)
    implicit = keys.shape[0] == 0
    for j in range(t, values.shape[1], TPB):
        key = j if implicit else keys[q, j]
        if key >= 0:
            _offer(local_d, local_k, KCAP, values[q, j], key)
    _write_block_top(local_d, local_k, shared_d, shared_k, KCAP, TPB, out_d, out_k, q, 0, k)


def _rerank(queries, precise, half_bits, half_table, candidate_rows, ids, metric, k, out_d,
            out_k):
    """Exact top-k of each query over its candidate storage rows (rows < 0
    are padding), from the precise store: float32 ``precise``, or (no rows
    there) float16 bit patterns read through ``half_table``. Distances as
    ``ivfsq.backends.cpu.kernels.exact._exact_distance`` (float64 sums);
    output ascending by (distance, id). Grid queries, block TPB threads."""
    q = cuda.blockIdx.x
    t = cuda.threadIdx.x
    local_d = cuda.local.array(KCAP, float32)
    local_k = cuda.local.array(KCAP, int64)
    shared_d = cuda.shared.array(SHARED, float32)
    shared_k = cuda.shared.array(SHARED, int64)
    _init(local_d, local_k, KCAP)
    for c in range(t, candidate_rows.shape[1], TPB):
        row = candidate_rows[q, c]
        if row < 0:
            continue
        dist = _exact_distance(queries, q, precise, half_bits, half_table, row, metric)
        _offer(local_d, local_k, KCAP, np.float32(dist), ids[row])
    _write_block_top(local_d, local_k, shared_d, shared_k, KCAP, TPB, out_d, out_k, q, 0, k)


@cuda.jit
def range_rows(weights, list_consts, q_sq, probes, codes, aux, ids, list_offsets, list_sizes,
               keep_words, filtered, metric, bits, precise_queries, precise, half_bits,
               half_table, exact, radius, write, cursors, starts, out_ids, out_d):
    """The rows of each query's probed lists within ``radius`` (internal
    distance, inclusive): grid (queries, probes), block ROW_THREADS threads.
    Distances are scored on the codes, or with ``exact`` on the precise
    store (``precise_queries``: the prepared queries), as the CPU's range
    search does.

    Two passes: without ``write``, ``cursors[q, p]`` counts the rows of
    probe ``p``; with it, each row takes a slot from ``cursors[q, p]`` (zero
    again) past ``starts[q, p]`` and writes its id and distance there. The
    order within a probe is the threads'; the caller sorts."""
    q = cuda.blockIdx.x
    p = cuda.blockIdx.y
    lst = probes[q, p]
    start = list_offsets[lst]
    word_row = q if keep_words.shape[0] > 1 else 0
    for r in range(cuda.threadIdx.x, list_sizes[lst], cuda.blockDim.x):
        row = start + r
        vid = ids[row]
        if filtered and not _is_kept(keep_words[word_row], vid):
            continue
        if exact:
            dist = np.float32(_exact_distance(precise_queries, q, precise, half_bits, half_table,
                                              row, metric))
        else:
            dist = _code_distance(weights, q, list_consts[q, p], q_sq[q], codes, row, aux,
                                  metric, bits)
        if dist <= radius:
            slot = cuda.atomic.add(cursors, (q, p), 1)
            if write:
                out_ids[starts[q, p] + slot] = vid
                out_d[starts[q, p] + slot] = dist


def _with_shape(function, kcap, tpb):
    """``function``'s code with the globals KCAP, TPB and SHARED (``KCAP *
    TPB``: array sizes must be constants, not expressions) bound, as a
    plain function for ``cuda.jit`` or ``cuda.compile_ptx``."""
    scope = dict(function.__globals__, KCAP=kcap, TPB=tpb, SHARED=kcap * tpb)
    bound = type(function)(function.__code__, scope, function.__name__)
    bound.__doc__ = function.__doc__
    return bound


@functools.lru_cache(maxsize=None)
def scan_kernel(kcap, tpb):
    """:func:`_scan` for one of :data:`SHAPES`."""
    return cuda.jit(_with_shape(_scan, kcap, tpb))


@functools.lru_cache(maxsize=None)
def select_kernel(kcap, tpb):
    """:func:`_select` for one of :data:`SHAPES`."""
    return cuda.jit(_with_shape(_select, kcap, tpb))


@functools.lru_cache(maxsize=None)
def rerank_kernel(kcap, tpb):
    """:func:`_rerank` for one of :data:`SHAPES`."""
    return cuda.jit(_with_shape(_rerank, kcap, tpb))


@cuda.jit
def coarse_scores(queries, centers, center_sq_norms, use_l2, out):
    """``out[q, l]``: ``|c_l|^2 - 2 q.c_l`` (L2) or ``-q.c_l``, float32
    sums as the CPU's coarse kernel. 2-D grid over (queries, lists)."""
    q, lst = cuda.grid(2)
    if q >= queries.shape[0] or lst >= centers.shape[0]:
        return
    dot = np.float32(0.0)
    for j in range(queries.shape[1]):
        dot += queries[q, j] * centers[lst, j]
    out[q, lst] = center_sq_norms[lst] - np.float32(2.0) * dot if use_l2 else -dot


@cuda.jit
def scores_from_dots(dots, center_sq_norms, use_l2, out):
    """:func:`coarse_scores` from the dot products (a GEMM's)."""
    q, lst = cuda.grid(2)
    if q >= dots.shape[0] or lst >= dots.shape[1]:
        return
    dot = dots[q, lst]
    out[q, lst] = center_sq_norms[lst] - np.float32(2.0) * dot if use_l2 else -dot


@cuda.jit
def nearest_centers(rows, centers, center_sq_norms, use_l2, out_labels, out_scores):
    """Each row's best center by :func:`coarse_scores`'s score (ties to the
    lower center) and that score: one thread per row, for k-means
    assignment where no GEMM (CuPy) is at hand."""
    row = cuda.grid(1)
    if row >= rows.shape[0]:
        return
    best = np.float32(np.inf)
    chosen = 0
    for lst in range(centers.shape[0]):
        dot = np.float32(0.0)
        for j in range(rows.shape[1]):
            dot += rows[row, j] * centers[lst, j]
        score = center_sq_norms[lst] - np.float32(2.0) * dot if use_l2 else -dot
        if score < best:
            best = score
            chosen = lst
    out_labels[row] = chosen
    out_scores[row] = best


@cuda.jit
def list_constants(queries, centers, probes, vmin, by_residual, use_l2, out, out_sq_norms):
    """``out[q, p] = q.c + q.vmin`` (``q.vmin`` without residuals) and
    ``out_sq_norms[q] = |q|^2`` for L2 (else 0), float64 sums rounded to
    float32, as ``ivfsq.backends.cpu.kernels.encode.list_constants``.
    2-D grid over (queries, probes)."""
    q, p = cuda.grid(2)
    if q >= probes.shape[0] or p >= probes.shape[1]:
        return
    dim = queries.shape[1]
    offset = 0.0
    for j in range(dim):
        offset += np.float64(queries[q, j]) * np.float64(vmin[j])
    if by_residual:
        lst = probes[q, p]
        for j in range(dim):
            offset += np.float64(queries[q, j]) * np.float64(centers[lst, j])
    out[q, p] = np.float32(offset)
    if p == 0:
        sq = 0.0
        if use_l2:
            for j in range(dim):
                sq += np.float64(queries[q, j]) * np.float64(queries[q, j])
        out_sq_norms[q] = np.float32(sq)


@cuda.jit
def encode_rows(vectors, centers, labels, vmin, delta, bits, metric, codes, aux):
    """``ivfsq.backends.cpu.kernels.encode.encode_sq`` on the device, one
    thread per row, and each row's side value from its decoded vector
    (``ivfsq.metrics.Metric.side_values``: ``|x_hat|^2`` for L2,
    ``1/|x_hat|`` for cosine (0 for a zero row), 0 for inner product; float64
    sums). ``codes`` zeroed by the caller for 4 bits."""
    row = cuda.grid(1)
    if row >= vectors.shape[0]:
        return
    max_level = np.float32((1 << bits) - 1)
    center = labels[row]
    sq_norm = 0.0
    for j in range(vectors.shape[1]):
        scaled = (vectors[row, j] - centers[center, j] - vmin[j]) / delta[j]
        level = math.floor(scaled + np.float32(0.5))
        if level < 0:
            level = 0
        elif level > max_level:
            level = max_level
        code = np.uint8(level)
        if bits == 8:
            codes[row, j] = code
        else:
            codes[row, j >> 1] |= np.uint8(code << np.uint8((j & 1) * 4))
        value = np.float64(centers[center, j] + (vmin[j] + np.float32(code) * delta[j]))
        sq_norm += value * value
    if metric == METRIC_L2:
        aux[row] = np.float32(sq_norm)
    elif metric == METRIC_IP or sq_norm == 0.0:
        aux[row] = np.float32(0.0)
    else:
        aux[row] = np.float32(1.0 / math.sqrt(sq_norm))


def grid_2d(rows, columns):
    """Blocks and threads of a 2-D element-wise launch."""
    return (max(1, -(-rows // TILE)), max(1, -(-columns // TILE))), (TILE, TILE)


def grid_1d(n, threads=128):
    """Blocks and threads of a 1-D element-wise launch."""
    return max(1, -(-n // threads)), threads


#: Every kernel's signature with the argument types the backend passes
#: (metrics, code widths and filters are run-time values, so one signature
#: covers each); :func:`compile_ptx` compiles them all.
_A1F, _A2F, _A1I, _A2I = "float32[::1]", "float32[:, ::1]", "int64[::1]", "int64[:, ::1]"
_CODES = "uint8[:, ::1]"
SIGNATURES = {
    "scan": (_A2F, _A2F, _A1F, _A2I, _CODES, _A1F, _A1I, _A1I, _A1I, "uint32[:, ::1]", "boolean",
             "int64", "int64", "boolean", "int64", _A2F, _A2I),
    "select": (_A2F, _A2I, "int64", _A2F, _A2I),
    "rerank": (_A2F, _A2F, "uint16[:, ::1]", _A1F, _A2I, _A1I, "int64", "int64", _A2F, _A2I),
    "coarse_scores": (_A2F, _A2F, _A1F, "boolean", _A2F),
    "scores_from_dots": (_A2F, _A1F, "boolean", _A2F),
    "nearest_centers": (_A2F, _A2F, _A1F, "boolean", _A1I, _A1F),
    "range_rows": (_A2F, _A2F, _A1F, _A2I, _CODES, _A1F, _A1I, _A1I, _A1I, "uint32[:, ::1]",
                   "boolean", "int64", "int64", _A2F, _A2F, "uint16[:, ::1]", _A1F, "boolean",
                   "float32", "boolean", _A2I, _A2I, _A1I, _A1F),
    "list_constants": (_A2F, _A2F, _A2I, _A1F, "boolean", "boolean", _A2F, _A1F),
    "encode_rows": (_A2F, _A2F, _A1I, _A1F, _A1F, "int64", "int64", _CODES, _A1F),
}
_SHAPED = {"scan": _scan, "select": _select, "rerank": _rerank}


def compile_ptx(cc):
    """PTX of every kernel for compute capability ``cc`` (e.g. (8, 0)), the
    selecting ones in every one of :data:`DEVICE_SHAPES`: {(name, KCAP,
    TPB) or (name,): PTX text}. Needs numba-cuda's compiler packages (NVVM
    and NVRTC: ``numba-cuda[cu12]``) but no GPU, and not the simulator."""
    found = {}
    for name, types in SIGNATURES.items():
        signature = f"void({', '.join(types)})"
        if name in _SHAPED:
            for kcap, tpb in DEVICE_SHAPES:
                function = _with_shape(_SHAPED[name], kcap, tpb)
                found[name, kcap, tpb] = cuda.compile_ptx(function, signature, cc=cc)[0]
        else:
            found[(name,)] = cuda.compile_ptx(globals()[name].py_func, signature, cc=cc)[0]
    return found
