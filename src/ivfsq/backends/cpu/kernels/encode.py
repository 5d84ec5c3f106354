"""Encoding and per-query tables: scalar-quantized codes, the list constants
and the float and integer weights of the scan's dot product.
"""

import numpy as np
from numba import njit

from ivfsq.backends.cpu.kernels import simd
from ivfsq.backends.cpu.kernels.common import FAST, JIT


# -------------------------------------------------------------------- encode
@njit(**JIT)
def encode_sq(vectors, centers, labels, vmin, delta, bits, codes, decoded):
    """Encode rows as 8- or 4-bit residual codes; write the decoded rows too.

    ``code = clamp(round((x - c - vmin) / delta), 0, 2^bits - 1)`` and
    ``x_hat = c + vmin + code * delta``. ``centers`` has one row of zeros when
    residuals are not used (``labels`` all 0). 8 bits: one byte per dimension.
    4 bits: dimension ``2j`` in the low nibble of byte ``j``, ``2j + 1`` in the
    high nibble; ``codes`` must be zeroed by the caller.
    """
    n_rows, dim = vectors.shape
    max_level = np.float32((1 << bits) - 1)
    for row in range(n_rows):
        center = labels[row]
        for j in range(dim):
            scaled = (vectors[row, j] - centers[center, j] - vmin[j]) / delta[j]
            level = np.floor(scaled + np.float32(0.5))
            if level < 0:
                level = 0
            elif level > max_level:
                level = max_level
            code = np.uint8(level)
            if bits == 8:
                codes[row, j] = code
            else:
                codes[row, j >> 1] |= code << np.uint8((j & 1) * 4)
            decoded[row, j] = centers[center, j] + (vmin[j] + np.float32(code) * delta[j])


@njit(**JIT)
def quantization_mse(values, lo, delta, levels, out):
    """Per column, the mean squared error of rounding ``values`` to the
    levels ``lo + code * delta``, ``code`` in ``[0, levels]`` (float64)."""
    n_rows, dim = values.shape
    # Multiplying by the inverse step instead of dividing by it is much
    # faster. Where the two round
    # a value to different levels it lies half-way between them (to within
    # a rounding error), at the same distance from either.
    inverse = np.empty(dim, dtype=np.float64)
    for j in range(dim):
        out[j] = 0.0
        inverse[j] = 1.0 / delta[j]
    for i in range(n_rows):
        for j in range(dim):
            value = np.float64(values[i, j])
            code = np.floor((value - lo[j]) * inverse[j] + 0.5)
            code = min(max(code, 0.0), levels)
            error = lo[j] + code * delta[j] - value
            out[j] += error * error
    for j in range(dim):
        out[j] /= max(n_rows, 1)


@njit(inline="always")
def _sq_norm(row):
    """The squared L2 norm of ``row``, summed in float64 (where the squares
    of float32 values cannot overflow)."""
    total = 0.0
    for j in range(row.shape[0]):
        total += np.float64(row[j]) * np.float64(row[j])
    return total


@njit(inline="always")
def _unit_row(row, sq_norm, out):
    """``row`` (squared norm ``sq_norm``) scaled to unit norm into ``out``
    (which may be ``row``); a zero row is copied as it is."""
    if sq_norm > 0.0:
        norm = np.float32(np.sqrt(sq_norm))
        for j in range(row.shape[0]):
            out[j] = row[j] / norm
    else:
        for j in range(row.shape[0]):
            out[j] = row[j]


@njit(**JIT)
def normalize_rows(vectors, nonzero):
    """Scale rows to unit L2 norm in place (norms summed in float64).

    Zero rows stay zero; ``nonzero[i]`` says whether row ``i`` was nonzero.
    """
    for i in range(vectors.shape[0]):
        total = _sq_norm(vectors[i])
        nonzero[i] = total > 0.0
        _unit_row(vectors[i], total, vectors[i])


@njit(**JIT)
def rows_within(rows, max_sq_norm):
    """Whether every row of ``rows`` is finite with a squared norm of at most
    ``max_sq_norm`` (``inf``: finiteness only), summed in float64, where the
    squares of float32 values cannot overflow. False sends the caller to the
    checks that name the offending row."""
    for i in range(rows.shape[0]):
        total = _sq_norm(rows[i])
        # NaN fails both comparisons; inf fails the first.
        if not (total < np.inf and total <= max_sq_norm):
            return False
    return True


@njit(**JIT)
def normalized_within(rows, out, nonzero):
    """:func:`rows_within` (finiteness only) and :func:`normalize_rows` in
    one call: ``rows`` scaled to unit norm into ``out``, ``nonzero[i]``
    whether row ``i`` was nonzero. False, with ``out`` partly written, when
    a row is not finite (the caller then takes the checks that name it)."""
    for i in range(rows.shape[0]):
        total = _sq_norm(rows[i])
        if not total < np.inf:  # NaN or inf
            return False
        nonzero[i] = total > 0.0
        _unit_row(rows[i], total, out[i])
    return True


@njit(fastmath=FAST, **JIT)
def list_constants(queries, centers, probes, vmin, by_residual, use_l2, out, out_sq_norms):
    """``out[i, p] = q . c + q . vmin`` for each probed list (float64 sums),
    and ``out_sq_norms[i] = |q|^2`` for L2 (else 0), as :func:`search_few`
    computes them.

    ``q . c`` is recomputed for the probed lists only, so a query's
    constants do not depend on which other queries share its batch (BLAS
    blocking would); without residuals it is left out.
    """
    n_queries, n_probes = probes.shape
    for i in range(n_queries):
        query = queries[i]
        out_sq_norms[i] = np.float32(dot64(query, query)) if use_l2 else np.float32(0.0)
        offset = dot64(query, vmin)
        for p in range(n_probes):
            out[i, p] = list_constant(query, centers, probes[i, p], offset, by_residual)


@njit(inline="always")
def dot64(x, y):
    total = 0.0
    for j in range(x.shape[0]):
        total += np.float64(x[j]) * np.float64(y[j])
    return total


@njit(inline="always")
def list_constant(query, centers, lst, offset, by_residual):
    # q . c + q . vmin (offset), summed in float64.
    if not by_residual:
        return np.float32(offset)
    return np.float32(offset + dot64(query, centers[lst]))


@njit(inline="always")
def weights_row(query, delta, bits, code_size, out):
    # 8 bits: q * delta. 4 bits: even dimensions' weights, then odd ones'
    # (``out`` zeroed by the caller: the padding dimension of an odd dim).
    dim = query.shape[0]
    if bits == 8:
        for j in range(dim):
            out[j] = query[j] * delta[j]
        return
    # Two stride-2 loops, which vectorize (a scatter by j's parity did not).
    for t in range(code_size):
        out[t] = query[2 * t] * delta[2 * t]
    for t in range(dim // 2):
        out[code_size + t] = query[2 * t + 1] * delta[2 * t + 1]


@njit(inline="always")
def int_weights_row(weights, bits, code_size, out, levels, params):
    """One query's integer weights for :mod:`ivfsq.backends.cpu.kernels.simd` (its layout,
    in ``out``'s dtype: int8 or int16 for 4-bit codes, int16 for 8-bit) from
    its float weights (the :func:`query_weights` layout, ``code_size >=
    simd.CHUNK_BYTES[bits]``), and its ``params`` (``INT_PARAMS`` values).

    ``weights ~ scale * W1`` with ``|W1| <= simd.weight_limit(bits,
    code_size, out.dtype)``. ``params`` = (``scale``, a bound on how much
    the exact score can exceed ``scale * (W1 . u)`` for any codes ``u``,
    the same bound the other way, ``scale2``, ``scale3``).

    - int16 weights: the exact score is ``weights . u`` (float32); the
      bounds are the largest code times the summed positive (negative)
      rounding errors. ``scale2 = scale3 = 0``.
    - 4-bit codes, int8 weights: ``out`` holds ``simd.SQ4_PLANES`` planes
      one after the other, ``W2`` and ``W3`` the rounded residuals of the
      planes before them (scales ``scale2``, ``scale3``), and the exact
      score is ``scale W1.u + scale2 W2.u + scale3 W3.u``
      (:func:`plane_score`); the bounds are 15 times the summed
      positive (negative) parts of ``scale2 W2 + scale3 W3``.

    Both bounds have a little more for float32 rounding in the scores.
    ``levels`` (float32, one per weight) is a workspace of the int16 case.
    """
    n_weights = weights.shape[0]
    planes = bits == 4 and out.itemsize == 1
    if bits == 4:
        if out.itemsize == 1:
            limit = np.float32(simd.SQ4_WEIGHT_LIMIT)
        else:
            limit = np.float32(simd.sq4_wide_weight_limit(code_size))
        max_code = np.float32(15.0)
    else:
        limit = np.float32(simd.sq8_weight_limit(code_size))
        max_code = np.float32(255.0)
    largest = np.float32(0.0)
    for j in range(n_weights):
        largest = max(largest, abs(weights[j]))
    scale = largest / limit
    if not scale > 0:
        # All weights zero, or so small that the step underflows: every
        # level is 0 and the bounds below hold the weights whole.
        scale = np.float32(1.0)
    inverse = np.float32(1.0) / scale
    scale2 = np.float32(0.0)
    scale3 = np.float32(0.0)
    if planes:
        # The residuals in two more int8 planes. Rounding leaves at most
        # half a step, so each plane's scale is half the one before over the
        # limit.
        scale2 = np.float32(scale * np.float32(0.5) / limit)
        scale3 = np.float32(scale2 * np.float32(0.5) / limit)
        magnitude, above_sum, below_sum = _sq4_planes(weights, code_size, out, scale, scale2,
                                                      scale3, inverse, limit)
    else:
        # Levels in the weights' order first (a loop LLVM vectorizes, with
        # float32 sums: their rounding is far inside the allowance below),
        # then copied into the chunk layout, where each weight appears once.
        magnitude = np.float32(0.0)
        above_sum = np.float32(0.0)
        below_sum = np.float32(0.0)
        for j in range(n_weights):
            weight = weights[j]
            level = min(max(np.floor(weight * inverse + np.float32(0.5)), -limit), limit)
            levels[j] = level
            # Codes lie in [0, max_code]: the exact dot exceeds the integer
            # one by at most max_code times the positive rounding errors.
            above_sum += max(weight - level * scale, np.float32(0.0))
            below_sum += max(level * scale - weight, np.float32(0.0))
            magnitude += abs(weight)
        out[:] = 0
        _layout_levels(levels, bits, code_size, out)
    # float32 sums of up to a few thousand terms (these and the scan's dot
    # products): 1e-5 of the absolute sum is many times their worst
    # rounding error.
    allowance = 1e-5 * np.float64(magnitude)
    params[0] = scale
    params[1] = np.float32(np.float64(max_code) * (np.float64(above_sum) + allowance) * 1.001)
    params[2] = np.float32(np.float64(max_code) * (np.float64(below_sum) + allowance) * 1.001)
    params[3] = scale2
    params[4] = scale3


@njit(inline="always")
def _layout_levels(levels, bits, code_size, out):
    """Integer levels in the weights' order into ``out`` (zeroed), in the
    chunk layout of :mod:`ivfsq.backends.cpu.kernels.simd`."""
    if bits == 8:
        # 8-bit codes: the weights' order up to the last chunk (one flat,
        # vectorized loop: per-chunk copies are slower), then the last.
        chunk_bytes = simd.SQ8_CHUNK_BYTES
        body = out.shape[0] - chunk_bytes
        for j in range(body):
            out[j] = levels[j]
        start = code_size - chunk_bytes
        for t in range(body - start, chunk_bytes):
            out[body + t] = levels[start + t]
        return
    # 4-bit codes (int16 weights): each chunk's weights in four groups of
    # 16, even bytes' low and high nibbles, then odd bytes' (the module
    # docstring of simd). The last chunk skips the bytes it shares with the
    # one before (their weights stay 0).
    half = simd.SQ4_CHUNK_BYTES
    n_chunks = out.shape[0] // (2 * half)
    for chunk in range(n_chunks - 1):
        _layout_wide_chunk(levels, code_size, out, 2 * half * chunk, half * chunk, 0)
    _layout_wide_chunk(levels, code_size, out, 2 * half * (n_chunks - 1), code_size - half,
                       half * n_chunks - code_size)


@njit(inline="always")
def _layout_wide_chunk(levels, code_size, out, first, start, skip):
    # One chunk of :func:`_layout_levels` for int16 weights of 4-bit codes:
    # bytes start + t, t >= skip, to out[first:first + 64].
    for pair in range(simd.SQ4_CHUNK_BYTES // 2):
        for parity in range(2):
            t = 2 * pair + parity
            if t >= skip:
                column = first + 32 * parity + pair
                out[column] = levels[start + t]
                out[column + 16] = levels[code_size + start + t]


@njit(inline="always")
def _sq4_planes(weights, code_size, out, scale, scale2, scale3, inverse, limit):
    """The three int8 planes of 4-bit codes' weights (see
    :func:`int_weights_row`), written straight into their chunk layout:
    ``out`` holds ``simd.SQ4_PLANES`` rows of it one after the other.
    Returns float32 ``sum |w|`` and the sums of the positive and of the
    negative parts of ``scale2 W2 + scale3 W3`` (what the last two planes
    add per unit of code).

    A level clamped by float rounding only leaves a little more to the next
    plane, and the bounds come from the levels themselves, so the residuals
    need not be exact; the sums, of terms of one sign, are within 1e-4 of
    exact (the 1.001 of the caller). Each chunk's 32 low- then 32
    high-nibble weights are one loop of constant length, but for the last
    chunk, which skips the bytes it shares with the one before (their
    weights stay 0). Indexes are unsigned, so that numba adds no wraparound
    of negative ones (which kept these loops from vectorizing).
    """
    half = np.uint64(simd.SQ4_CHUNK_BYTES)
    width = np.uint64(out.shape[0] // simd.SQ4_PLANES)
    n_chunks = width // (np.uint64(2) * half)
    size = np.uint64(code_size)
    # (Scales that underflow to 0 leave their planes at 0.)
    inverse2 = np.float32(1.0) / scale2 if scale2 > 0 else np.float32(0.0)
    inverse3 = np.float32(1.0) / scale3 if scale3 > 0 else np.float32(0.0)
    steps = (scale, scale2, scale3, inverse, inverse2, inverse3)
    sums = (np.float32(0.0), np.float32(0.0), np.float32(0.0))
    for chunk in range(n_chunks - np.uint64(1)):
        for side in range(np.uint64(2)):
            sums = _plane_levels(weights, side * size + half * chunk, out,
                                 np.uint64(2) * half * chunk + side * half, width, half, steps,
                                 limit, sums)
    start = size - half
    seen = half * (n_chunks - np.uint64(1)) - start
    last = np.uint64(2) * half * (n_chunks - np.uint64(1))
    for side in range(np.uint64(2)):
        for plane in range(np.uint64(simd.SQ4_PLANES)):
            for t in range(seen):
                out[plane * width + last + side * half + t] = 0
        sums = _plane_levels(weights, side * size + start + seen, out, last + side * half + seen,
                             width, half - seen, steps, limit, sums)
    return sums


@njit(inline="always")
def _plane_levels(weights, source, out, target, width, count, steps, limit, sums):
    """``count`` weights from ``weights[source]`` into the three planes at
    ``out[target]`` (planes ``width`` apart); adds to ``sums`` (see
    :func:`_sq4_planes`). ``steps``: the planes' scales, then their inverses."""
    scale, scale2, scale3, inverse, inverse2, inverse3 = steps
    magnitude, above, below = sums
    for t in range(count):
        weight = weights[source + t]
        level = min(max(np.floor(weight * inverse + np.float32(0.5)), -limit), limit)
        rest = weight - level * scale
        level2 = min(max(np.floor(rest * inverse2 + np.float32(0.5)), -limit), limit)
        second = level2 * scale2
        level3 = min(max(np.floor((rest - second) * inverse3 + np.float32(0.5)), -limit),
                     limit)
        out[target + t] = np.int8(level)
        out[width + target + t] = np.int8(level2)
        out[np.uint64(2) * width + target + t] = np.int8(level3)
        added = second + level3 * scale3
        above += max(added, np.float32(0.0))
        below += max(-added, np.float32(0.0))
        magnitude += abs(weight)
    return magnitude, above, below


@njit(fastmath=FAST, **JIT)
def query_int_weights(weights, bits, code_size, out, out_params):
    """:func:`int_weights_row` for each row: ``out_params[i] = (scale, bound
    above, bound below)``."""
    levels = np.empty(weights.shape[1], dtype=np.float32)
    for i in range(weights.shape[0]):
        int_weights_row(weights[i], bits, code_size, out[i], levels, out_params[i])


@njit(**JIT)
def query_weights(queries, delta, bits, code_size, out):
    """Per-query weights of the scan's dot product (see ``ScalarQuantizer.weights``)."""
    for i in range(queries.shape[0]):
        weights_row(queries[i], delta, bits, code_size, out[i])


# -------------------------------------------------------------------- kmeans
@njit(**JIT)
def accumulate_clusters(vectors, labels, sums, counts):
    """Add each row to its cluster's sum (float64) and count."""
    n_rows, dim = vectors.shape
    for row in range(n_rows):
        label = labels[row]
        counts[label] += 1
        for j in range(dim):
            sums[label, j] += vectors[row, j]
