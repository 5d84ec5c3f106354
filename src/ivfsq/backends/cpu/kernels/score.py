"""Scoring one code row: the dot products of a row with a query's weights,
the distance they give, the integer filter's bounds and the hand-off of a
row that passes to a heap.
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu.kernels import simd
from ivfsq.backends.cpu.kernels.common import METRIC_IP, METRIC_L2
from ivfsq.backends.cpu.kernels.heaps import push


# ---------------------------------------------------------------------- scan
@njit(inline="always")
def _dot_codes8(weights, codes, row, code_size):
    # float x uint8 dot product; fastmath lets LLVM vectorise the reduction.
    total = np.float32(0.0)
    for j in range(code_size):
        total += weights[j] * np.float32(codes[row, j])
    return total


@njit(inline="always")
def _dot_codes4(weights, codes, row, code_size):
    # Low nibbles meet weights[:code_size], high nibbles weights[code_size:].
    # int32 arithmetic: with numba's default int64 the int -> float
    # conversions do not vectorise. The two halves are taken as 1-D slices:
    # indexing them as weights[code_size + j] keeps the loop from
    # vectorising.
    low_weights = weights[:code_size]
    high_weights = weights[code_size:]
    low = np.float32(0.0)
    high = np.float32(0.0)
    for j in range(code_size):
        byte = np.int32(codes[row, j])
        low += low_weights[j] * np.float32(byte & np.int32(15))
        high += high_weights[j] * high_nibble(byte)
    return low + high


@njit(inline="always")
def high_nibble(byte):
    # (byte & 0xF0) / 16, exactly the high nibble as a float. LLVM vectorises
    # ``byte >> 4`` through 64-bit lanes here; this form is faster.
    return np.float32(byte & np.int32(240)) * np.float32(0.0625)


@njit(inline="always")
def is_kept(keep_words, vid):
    # cuVS bitset: bit vid % 32 of word vid // 32 set means kept; ids past
    # the bitset are not kept.
    word = vid >> 5
    return word < keep_words.shape[0] and ((keep_words[word] >> (vid & 31)) & 1) == 1


@njit(inline="always")
def score_to_distance(metric, s, q_sq, aux_value):
    if metric == METRIC_L2:
        return q_sq + aux_value - np.float32(2.0) * s
    if metric == METRIC_IP:
        return -s
    return np.float32(1.0) - aux_value * s


@njit(inline="always")
def distance_lower_bound(metric, approx, margin, q_sq, aux_value):
    """A distance no larger than the exact one of a vector whose score is
    within ``margin`` of ``approx`` (see :func:`scan_list`); the last terms
    absorb float32 rounding."""
    best = approx + margin
    if metric == METRIC_L2:
        magnitude = q_sq + aux_value
        return magnitude - np.float32(2.0) * best - np.float32(1e-6) * magnitude
    if metric == METRIC_IP:
        return -best
    return np.float32(1.0) - aux_value * best - np.float32(1e-6)


@njit(inline="always")
def distance_upper_bound(metric, approx, margin, q_sq, aux_value):
    """A distance no smaller than the exact one of a vector whose score is
    within ``margin`` below ``approx``: :func:`distance_lower_bound`'s mirror."""
    worst = approx - margin
    if metric == METRIC_L2:
        magnitude = q_sq + aux_value
        return magnitude - np.float32(2.0) * worst + np.float32(1e-6) * magnitude
    if metric == METRIC_IP:
        return -worst
    return np.float32(1.0) - aux_value * worst + np.float32(1e-6)


@njit(inline="always")
def int_margin_below(int_params, query, base):
    # How much the exact score can fall short of the integer one.
    return int_params[query, 2] + np.float32(1e-6) * abs(base)


@njit(inline="always")
def int_margin(int_params, query, base):
    # The integer dot's error bound for this query, and rounding of the base.
    return int_params[query, 1] + np.float32(1e-6) * abs(base)


@njit(inline="always")
def exact_score(w, base, codes, row, bits, code_size):
    if bits == 8:
        return base + _dot_codes8(w, codes, row, code_size)
    return base + _dot_codes4(w, codes, row, code_size)


@njit(inline="always")
def int_dot(codes, row, int_weights, query, n_chunks, bits):
    if bits == 8:
        return simd.dot_bytes(codes, row, int_weights, query, n_chunks)
    return simd.dot_nibbles(codes, row, int_weights, query, n_chunks)


@njit(inline="always")
def n_int_chunks(int_weights, bits):
    # 0 when the integer path is off (no int weights were made).
    per_chunk = 2 * simd.SQ4_CHUNK_BYTES if bits == 4 else simd.SQ8_CHUNK_BYTES
    return int_weights.shape[1] // (per_chunk * _n_planes(int_weights, bits))


@njit(inline="always")
def _n_planes(int_weights, bits):
    # simd.n_planes for the kernels.
    return simd.SQ4_PLANES if bits == 4 and int_weights.itemsize == 1 else 1


@njit(inline="always")
def plane_score(base, scale, scale2, scale3, dot, second, third):
    """The exact score of a row that the integer filter let through, for
    4-bit codes with int8 weights: ``base + s1 dot + s2 (W2 . u) + s3 (W3 .
    u)`` (the three weight planes' dots, ``simd.SQ4_PLANES``), summed in
    float64. Other codes take :func:`exact_score` (float weights).

    The callers run the two plane dots in their own bodies: passed to a
    helper, the arrays they read would be reference-counted with atomic
    calls for every row."""
    total = (np.float64(scale) * np.float64(dot) + np.float64(scale2) * np.float64(second)
             + np.float64(scale3) * np.float64(third))
    return base + np.float32(total)


@njit(inline="always")
def plane_scales(int_params, query, plane):
    # (scale2, scale3) of a query; zeros without planes.
    if plane > 0:
        return int_params[query, 3], int_params[query, 4]
    return np.float32(0.0), np.float32(0.0)


@njit(inline="always")
def plane_width(int_weights, bits):
    # Columns per plane of the integer weights; 0 without planes.
    if _n_planes(int_weights, bits) == 1:
        return 0
    return int_weights.shape[1] // simd.SQ4_PLANES


@njit(inline="always")
def any_may_pass(metric, base, int_scale, margin, q_sq, worst, dots, aux_values):
    """Whether any of four rows' distance lower bounds (integer dots
    ``dots``, see :func:`scan_list`) passes ``worst``."""
    passes = False
    for member in range(4):
        approx = base + int_scale * np.float32(dots[member])
        lower = distance_lower_bound(metric, approx, margin, q_sq, aux_values[member])
        passes |= lower <= worst
    return passes


@njit(inline="always")
def offer_exact(heap_d, heap_i, query, k, metric, base, weights, codes, row, bits, q_sq,
                 aux_value, key, worst):
    """Score a vector exactly (float weights) and push it if it wins; the new worst."""
    score = exact_score(weights[query], base, codes, row, bits, codes.shape[1])
    dist = score_to_distance(metric, score, q_sq, aux_value)
    if dist <= worst:
        return push(heap_d, heap_i, query, k, dist, key)
    return worst


@njit(inline="always")
def offer_score(heap_d, heap_i, query, k, metric, score, q_sq, aux_value, key, worst):
    """Push a vector of this exact score if it wins; the new worst. (Not
    called by :func:`offer_exact`: each level of inlined helpers that
    passes the heaps on counts references to them once more.)"""
    dist = score_to_distance(metric, score, q_sq, aux_value)
    if dist <= worst:
        return push(heap_d, heap_i, query, k, dist, key)
    return worst
