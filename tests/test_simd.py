"""The integer scan filter: AVX2 dots, their portable stand-ins, the error
bound, and searches that must not change when the filter is on."""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from ivfsq.backends.cpu import search
from ivfsq.backends.cpu.kernels import common, encode, grouped, heaps, scan, simd
from ivfsq.common import Resources
from ivfsq.ivf import engine as _ivf
from ivfsq.neighbors import filters, ivf_sq


@functools.lru_cache(maxsize=None)
def _row_dots(dot_one, dots_four, dots_rows):
    # One compiled runner per implementation, not per test (compiling it
    # takes seconds).
    @njit
    def run(codes, weights, n_chunks, out_one, out_four, out_rows):
        for row in range(codes.shape[0]):
            out_one[row] = dot_one(codes, row, weights, 2, n_chunks)
            a, b, c, d = dots_four(codes, row, weights, (0, 3, 1, 3), n_chunks)
            out_four[row, 0] = a
            out_four[row, 1] = b
            out_four[row, 2] = c
            out_four[row, 3] = d
        for row in range(codes.shape[0] - 3):
            a, b, c, d = dots_rows(codes, row, weights, 1, n_chunks)
            out_rows[row, 0] = a
            out_rows[row, 1] = b
            out_rows[row, 2] = c
            out_rows[row, 3] = d

    return run


def _chunk_columns(bits, wide):
    """Per byte t of a chunk, the columns (within the chunk's weights) of
    its weights, as documented in simd: [byte] for 8-bit codes, [low
    nibble, high nibble] for 4-bit ones."""
    chunk_bytes = simd.CHUNK_BYTES[bits]
    if bits == 8:
        return [[t] for t in range(chunk_bytes)]
    if wide:  # groups of 16: even bytes' low, high nibbles, odd bytes' low, high
        return [[32 * (t % 2) + t // 2, 32 * (t % 2) + 16 + t // 2] for t in range(chunk_bytes)]
    return [[t, chunk_bytes + t] for t in range(chunk_bytes)]


def _nibble_values(block, bits):
    """The code values of a chunk's bytes, one column per weight of
    :func:`_chunk_columns` (int64)."""
    block = block.astype(np.int64)
    return [block] if bits == 8 else [block & 15, block >> 4]


def _oracle(codes, weights, bits):
    """int64 dots per the documented chunk layout (numpy)."""
    n_rows, code_size = codes.shape
    chunk_bytes = simd.CHUNK_BYTES[bits]
    n_chunks = -(-code_size // chunk_bytes)
    per_chunk = simd.WEIGHTS_PER_CHUNK[bits]
    columns = np.array(_chunk_columns(bits, weights.dtype.itemsize == 2))
    out = np.zeros((n_rows, weights.shape[0]), np.int64)
    for chunk in range(n_chunks):
        start = min(chunk * chunk_bytes, code_size - chunk_bytes)
        values = _nibble_values(codes[:, start:start + chunk_bytes], bits)
        w = weights[:, chunk * per_chunk:(chunk + 1) * per_chunk].astype(np.int64)
        for part, part_values in enumerate(values):
            out += part_values @ w[:, columns[:, part]].T
    return out


IMPLEMENTATIONS = {
    "portable": {bits: (simd._portable_row_dots(1, bits), simd._portable_row_dots(4, bits),
                        simd._portable_row_dots(1, bits, n_rows=4))
                 for bits in (8, 4)},
    "native": {8: (simd.dot_bytes, simd.dots4_bytes, simd.dots_4rows_bytes),
               4: (simd.dot_nibbles, simd.dots4_nibbles, simd.dots_4rows_nibbles)},
}


# (bits, weight dtype): 4-bit codes take int8 weights, or int16 ones on
# short rows (simd.SQ4_WIDE_MAX_CODE_BYTES); both are tested at every size.
WEIGHT_KINDS = [(8, np.int16), (4, np.int8), (4, np.int16)]


def _zero_reread_weights(weights, bits, code_size, wide=False):
    """Zero, in place, the weights of the bytes that a row's last chunk
    re-reads (the layout of the module docstring of simd)."""
    chunk_bytes = simd.CHUNK_BYTES[bits]
    per_chunk = simd.WEIGHTS_PER_CHUNK[bits]
    n_chunks = -(-code_size // chunk_bytes)
    skip = n_chunks * chunk_bytes - code_size
    first = (n_chunks - 1) * per_chunk
    for t in range(skip):
        for column in _chunk_columns(bits, wide)[t]:
            weights[:, first + column] = 0


@pytest.mark.parametrize("implementation", ["portable", "native"])
@pytest.mark.parametrize("bits, dtype", WEIGHT_KINDS)
@pytest.mark.parametrize("code_size", [16, 27, 32, 50, 64, 100, 392, 8000])
def test_row_dots_match_oracle(implementation, bits, dtype, code_size):
    if implementation == "native" and not simd.HAS_AVX2_DOTS:
        pytest.skip("no AVX2 integer dots on this CPU")
    if code_size < simd.CHUNK_BYTES[bits]:
        pytest.skip("rows shorter than one chunk take the float path")
    rng = np.random.default_rng(code_size)
    limit = simd.weight_limit(bits, code_size, dtype)
    n_chunks = -(-code_size // simd.CHUNK_BYTES[bits])
    codes = rng.integers(0, 256, size=(40, code_size), dtype=np.uint8)
    # The extremes: no 16-bit pair sum may saturate, no 32-bit sum overflow.
    codes[0] = 255
    weights = rng.integers(-limit, limit + 1, size=(4, n_chunks * simd.WEIGHTS_PER_CHUNK[bits]))
    weights[3] = limit
    weights[1] = -limit
    _zero_reread_weights(weights, bits, code_size, wide=np.dtype(dtype).itemsize == 2)
    weights = weights.astype(dtype)
    out_one = np.zeros(40, np.int32)
    out_four = np.zeros((40, 4), np.int32)
    out_rows = np.zeros((37, 4), np.int32)
    _row_dots(*IMPLEMENTATIONS[implementation][bits])(
        codes, weights, n_chunks, out_one, out_four, out_rows
    )
    expected = _oracle(codes, weights, bits)
    np.testing.assert_array_equal(out_one, expected[:, 2])
    np.testing.assert_array_equal(out_four, expected[:, [0, 3, 1, 3]])
    # Four consecutive rows against query 1: rows r .. r + 3.
    np.testing.assert_array_equal(out_rows, np.stack([expected[m:37 + m, 1] for m in range(4)], 1))


@pytest.mark.parametrize("implementation", ["portable", "native"])
@pytest.mark.parametrize("code_size", [32, 50, 392])
def test_plane_dots_read_the_plane_at_their_column(implementation, code_size):
    """dot_nibbles_at: the dot with the weights that start at a column (the
    second and third int8 planes of 4-bit codes)."""
    if implementation == "native" and not simd.HAS_AVX2_DOTS:
        pytest.skip("no AVX2 integer dots on this CPU")
    dot_at = simd._portable_row_dots(1, 4, True) if implementation == "portable" else (
        simd.dot_nibbles_at)

    @njit
    def run(codes, weights, n_chunks, column, out):
        for row in range(codes.shape[0]):
            for query in range(weights.shape[0]):
                out[row, query] = dot_at(codes, row, weights, query, n_chunks, column)

    rng = np.random.default_rng(code_size)
    n_chunks = -(-code_size // simd.SQ4_CHUNK_BYTES)
    width = n_chunks * simd.WEIGHTS_PER_CHUNK[4]
    codes = rng.integers(0, 256, size=(20, code_size), dtype=np.uint8)
    weights = rng.integers(-127, 128, size=(3, simd.SQ4_PLANES * width)).astype(np.int8)
    for plane in range(simd.SQ4_PLANES):
        plane_weights = weights[:, plane * width:(plane + 1) * width]
        _zero_reread_weights(plane_weights, 4, code_size)
        out = np.zeros((20, 3), np.int32)
        run(codes, weights, n_chunks, plane * width, out)
        np.testing.assert_array_equal(out, _oracle(codes, plane_weights, 4))


@pytest.mark.parametrize("bits, dtype", WEIGHT_KINDS)
@pytest.mark.parametrize("code_size", [16, 32, 77, 392])
def test_int_weights_bound_the_exact_dot(bits, dtype, code_size):
    """scale * (w_int . u) + above >= exact >= scale * (w_int . u) - below
    for all codes u, the worst included. The exact score is w . u, or, for
    4-bit codes with int8 weights, the three planes' sum, which must be
    within float32 rounding of w . u."""
    if code_size < simd.CHUNK_BYTES[bits]:
        pytest.skip("rows shorter than one chunk take the float path")
    rng = np.random.default_rng(7)
    n_weights = code_size if bits == 8 else 2 * code_size
    weights = (rng.standard_normal((5, n_weights)) * rng.random((5, 1)) * 100).astype(np.float32)
    weights[4] = 0.0  # an all-zero query
    n_planes = simd.n_planes(bits, dtype)
    width = simd.n_int_weights(bits, code_size)
    # Not zeroed first: the kernel writes every weight, those of the bytes
    # that the last chunk re-reads included (zeros, checked below).
    int_weights = np.full((5, n_planes * width), 99, dtype)
    params = np.zeros((5, common.INT_PARAMS), np.float32)
    encode.query_int_weights(weights, bits, code_size, int_weights, params)
    limit = simd.weight_limit(bits, code_size, dtype)
    # The largest weight uses the range.
    assert np.abs(int_weights[:, :width].astype(int)).max() == limit
    assert params[4, 1] == 0.0 and params[4, 2] == 0.0
    max_code = 255 if bits == 8 else 15
    # Back in the float layout: every float weight has exactly one level per plane.
    planes = [_float_layout(int_weights[:, plane * width:(plane + 1) * width], bits, code_size)
              for plane in range(n_planes)]
    # The chunked dot (re-read bytes included) equals the dot in the float layout.
    some_codes = rng.integers(0, 256, size=(30, code_size), dtype=np.uint8)
    some_levels = _unpacked(some_codes, bits)
    for plane in range(n_planes):
        np.testing.assert_array_equal(
            _oracle(some_codes, int_weights[:, plane * width:(plane + 1) * width], bits),
            some_levels @ planes[plane].T,
        )
    approx_weights = planes[0] * params[:, :1].astype(np.float64)
    # Nearest levels, up to float32 rounding of weight / scale (a few
    # thousandths of a level at 15 bits); the bounds below use the actual errors.
    assert np.all(np.abs(approx_weights - weights) <= params[:, :1] * (0.5 + 2.0**-8) + 1e-6)
    codes = rng.integers(0, max_code + 1, size=(200, n_weights)).astype(np.float64)
    exact_weights = weights.astype(np.float64)
    if n_planes == 1:
        assert np.all(params[:, 3:] == 0.0)
    else:
        exact_weights = approx_weights + (planes[1] * params[:, 3:4].astype(np.float64)
                                          + planes[2] * params[:, 4:5].astype(np.float64))
        # Within float32 rounding of the largest weight, and closer than
        # the first plane alone by far.
        largest = np.abs(weights).max(axis=1, keepdims=True)
        assert np.all(np.abs(exact_weights - weights) <= largest * 2.0**-23)
        assert np.abs(exact_weights - weights)[:4].max() < 1e-4 * np.abs(
            approx_weights - weights)[:4].max()
    excess = codes @ exact_weights.T - codes @ approx_weights.T
    assert np.all(excess <= params[:, 1] + 1e-9)
    adversarial = np.where(exact_weights > approx_weights, max_code, 0)
    excess = np.einsum("qj,qj->q", adversarial, exact_weights - approx_weights)
    assert np.all(excess <= params[:, 1] + 1e-9)
    # Not vacuous: the adversarial codes reach all of the bound but the
    # allowance for float32 rounding (max_code * 1e-5 * sum |w|).
    allowance = max_code * 1e-5 * np.abs(exact_weights).sum(axis=1)
    rounding_part = params[:, 1].astype(np.float64) / 1.001 - allowance
    assert np.all(rounding_part[:4] > 0)
    assert np.all(excess[:4] >= 0.999 * rounding_part[:4] - 1e-6 * params[:4, 1])
    # The other way: how far the exact dot can fall below the integer one.
    shortfall = codes @ approx_weights.T - codes @ exact_weights.T
    assert np.all(shortfall <= params[:, 2] + 1e-9)
    adversarial = np.where(approx_weights > exact_weights, max_code, 0)
    shortfall = np.einsum("qj,qj->q", adversarial, approx_weights - exact_weights)
    assert np.all(shortfall <= params[:, 2] + 1e-9)
    rounding_part = params[:, 2].astype(np.float64) / 1.001 - allowance
    assert np.all(rounding_part[:4] > 0)
    assert np.all(shortfall[:4] >= 0.999 * rounding_part[:4] - 1e-6 * params[:4, 2])


def _unpacked(codes, bits):
    """Code levels in the layout of encode.query_weights (int64): bytes, or
    low nibbles then high nibbles."""
    codes = codes.astype(np.int64)
    return codes if bits == 8 else np.hstack([codes & 15, codes >> 4])


def _float_layout(int_weights, bits, code_size):
    """The integer weights in the layout of encode.query_weights (int64)."""
    n_weights = code_size if bits == 8 else 2 * code_size
    out = np.zeros((int_weights.shape[0], n_weights), np.int64)
    chunk_bytes = simd.CHUNK_BYTES[bits]
    per_chunk = simd.WEIGHTS_PER_CHUNK[bits]
    columns = _chunk_columns(bits, int_weights.dtype.itemsize == 2)
    for chunk in range(-(-code_size // chunk_bytes)):
        start = min(chunk * chunk_bytes, code_size - chunk_bytes)
        for t in range(chunk * chunk_bytes - start, chunk_bytes):
            for half, column in enumerate(columns[t]):
                out[:, start + t + half * code_size] = int_weights[:, chunk * per_chunk + column]
    return out


@pytest.mark.skipif(not simd.HAS_INT_DOTS, reason="no AVX2 integer dots on this CPU")
@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product", "cosine"])
@pytest.mark.parametrize("quantizer, dim", [("sq4", 70), ("sq4", 300), ("sq8", 21), ("sq8", 300)])
def test_search_is_the_same_with_and_without_the_filter(metric, quantizer, dim):
    # 300-d: rows of at least 128 bytes, so big batches take the list-major
    # filter too; 21-d sq8: two overlapping 16-byte chunks.
    rng = np.random.default_rng(dim)
    centers = rng.standard_normal((20, dim)) * 3
    data = (centers[rng.integers(0, 20, 3000)] + rng.standard_normal((3000, dim))).astype(np.float32)
    queries = (centers[rng.integers(0, 20, 300)] + rng.standard_normal((300, dim))).astype(np.float32)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=64, metric=metric, quantizer=quantizer), data)
    engine = index._engine
    assert engine.quantizer.n_int_weights > 0
    # sq4 70-d (35-byte rows) may take int16 weights: both are checked.
    wide_choices = [False, True] if quantizer == "sq4" and dim == 70 else [False]
    # At 300-d most first lists (about 47 rows) are scanned in two phases
    # at k = 10 (the list-major path too), and in one at k = 1.
    code_size = index._engine.lists.codes.shape[1]
    typical = int(np.median(index._engine.lists.list_sizes))
    assert scan.two_phase_pays(10, code_size, typical) == (dim == 300)
    assert not scan.two_phase_pays(1, code_size, typical)
    kept_ids = np.flatnonzero(rng.random(3000) < 0.7)
    bitset = np.zeros(-(-3000 // 32), np.uint32)
    np.bitwise_or.at(bitset, kept_ids // 32, (1 << (kept_ids % 32)).astype(np.uint32))
    keep = filters.from_bitset(bitset)
    # Fewer kept vectors than k in most lists: a first list's skipped rows
    # must stay out of an empty heap.
    sparse = np.zeros(3000, bool)
    sparse[[5, 500, 1500, 2999]] = True
    sparse = filters.from_bitset(sparse)
    # k = 1 and k past a list's size too: a first list is scanned in two
    # phases, with a cutoff only where it holds at least k rows.
    shapes = [
        (8, 300, None, 10), (2, 300, None, 10), (4, 1, None, 10), (3, 5, None, 10),
        (8, 300, keep, 10), (4, 1, keep, 10), (8, 300, None, 1), (3, 5, keep, 1),
        (2, 300, None, 250), (2, 1, None, 250), (16, 300, sparse, 10), (16, 1, sparse, 10),
    ]

    def search_all(int_filter):
        results = []
        for n_probes, n_queries, keep_filter, k in shapes:
            params = ivf_sq.SearchParams(n_probes=n_probes, int_filter=int_filter)
            results.append(ivf_sq.search(params, index, queries[:n_queries], k,
                                         filter=keep_filter))
        return results

    runs = []
    for wide in wide_choices:
        int_filter = "int16" if wide or quantizer == "sq8" else "int8"
        params = ivf_sq.SearchParams(n_probes=8, int_filter=int_filter)
        assert ivf_sq.search_plan(params, index, 300).int_filter == int_filter
        with_filter = search_all(int_filter)
        # Filtered list-major scans split the queries among threads (or the
        # lists, with int16 weights for 4-bit codes): any count gives the
        # same results.
        for n_threads in (1, 3):
            again = ivf_sq.search(params, index, queries, 10,
                                  resources=Resources(n_threads=n_threads))
            np.testing.assert_array_equal(again[1], with_filter[0][1])
        assert set(np.unique(with_filter[-2][1])) == {-1, 5, 500, 1500, 2999}
        runs.append(with_filter)
    without = search_all("off")
    cases = [(None, None, keep_filter, k) for _, _, keep_filter, k in shapes]
    for (d_int, i_int), (d_float, i_float), case in (
        (run, float_run, case)
        for with_filter in runs
        for run, float_run, case in zip(with_filter, without, cases)
    ):
        # Same float arithmetic, summed in another order: float32 rounding
        # only. It is absolute (scores of thousands cancel to the small
        # distances of the far vectors the sparse filter leaves).
        atol = 1e-3 if case[2] is sparse else 1e-5
        np.testing.assert_allclose(d_int, d_float, rtol=1e-5, atol=atol)
        if case[3] <= 10:
            np.testing.assert_array_equal(i_int, i_float)
        else:
            # 250 neighbours hold near-ties that the rounding may swap, at
            # the k-th place too: ids that only one side holds lie there.
            for row in range(i_int.shape[0]):
                kth = abs(float(d_float[row, -1]))
                for ids, dists, others in ((i_int, d_int, i_float), (i_float, d_float, i_int)):
                    only = ~np.isin(ids[row], others[row])
                    gaps = np.abs(dists[row][only] - d_float[row, -1])
                    assert np.all(gaps <= 1e-5 * max(kth, 1.0))


@pytest.mark.skipif(not simd.HAS_INT_DOTS, reason="no AVX2 integer dots on this CPU")
@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("spread, wide", [(1.0, False), (30.0, True)])
def test_4_bit_codes_take_int16_weights_where_int8_ones_are_loose(metric, spread, wide):
    # A few dimensions of a wide range: their int8 weights set the scale,
    # and the rounding of all the others loosens the bound.
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 128)) * 2
    data = (centers[rng.integers(0, 8, 6000)] + rng.standard_normal((6000, 128))).astype(np.float32)
    data[:, :4] *= spread
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16, quantizer="sq4", metric=metric), data)
    engine = index._engine
    excess = search.int8_excess(engine, engine.lists)
    assert 0.0 <= excess <= 1.0
    assert (excess >= _ivf.SQ4_WIDE_MIN_EXCESS) == wide
    # The planner takes the estimate's choice, computed once per snapshot.
    params = ivf_sq.SearchParams(n_probes=1)
    for _ in range(2):
        assert ivf_sq.search_plan(params, index, 1).int_filter == ("int16" if wide else "int8")
        assert engine.sq4_int16_pays(engine.lists) == wide
    # The estimate is of the int8 weights whichever the index took.
    assert search.int8_excess(engine, engine.lists) == excess
    # Nearest lists left empty (their vectors removed) are passed over.
    empty = np.zeros((32, 1), np.int64)
    sizes = engine.lists.list_sizes.copy()
    sizes[0] = 0
    engine.lists.list_sizes = sizes
    engine.coarse_probes = lambda queries, n_probes, n_threads: empty[:queries.shape[0]]
    assert search.int8_excess(engine, engine.lists) == 0.0
    # Longer rows keep int8 weights whatever the data.
    wider = np.concatenate([data, data[:, :4]], axis=1)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16, quantizer="sq4", metric=metric), wider)
    assert index._engine.lists.codes.shape[1] > simd.SQ4_WIDE_MAX_CODE_BYTES
    assert ivf_sq.search_plan(params, index, 1).int_filter == "int8"


def test_switching_the_filter_off_does_not_change_the_compiled_dots():
    # The kernels' disk cache is keyed on the CPU, not on the environment: a
    # run with IVFSQ_INT_DOTS=0 must compile (and cache) the same dots.
    code = (
        "from ivfsq.backends.cpu.kernels import simd; "
        "print(simd._row_dots is simd._row_dots_ir, simd.HAS_AVX2_DOTS, simd.HAS_INT_DOTS)"
    )
    env = {**os.environ, "IVFSQ_INT_DOTS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(simd.HAS_AVX2_DOTS), str(simd.HAS_AVX2_DOTS), "False"]


@njit
def _cover(values, k, n_buckets):
    return scan._kth_smallest_cover(values, values.shape[0], k,
                                       np.empty(n_buckets, np.int64))


@pytest.mark.parametrize("n_buckets", [1, 4, 64])
def test_kth_smallest_cover_is_a_value_at_or_above_the_kth(n_buckets):
    rng = np.random.default_rng(11)
    cases = [
        rng.standard_normal(60).astype(np.float32),
        np.repeat(rng.standard_normal(5), 12).astype(np.float32),  # ties
        np.full(30, 2.5, np.float32),  # all equal
        np.array([1e30, -1e30, 0.0, 1e-30, 3.0], np.float32),  # a huge range
        (1.0 + np.arange(40) * np.finfo(np.float32).eps).astype(np.float32),  # a tiny one
        np.array([0.0, 1e-45, 2e-45, 5.0], np.float32),  # subnormal gaps
    ]
    with_inf = rng.standard_normal(50).astype(np.float32)
    with_inf[rng.random(50) < 0.4] = np.inf  # rows a filter skipped
    cases.append(with_inf)
    for values in cases:
        finite = np.sort(values[np.isfinite(values)])
        for k in sorted({1, 2, 7, finite.size, min(values.size, finite.size + 1)}):
            if k < 1 or k > values.size:
                continue
            cover = _cover(values.copy(), k, n_buckets)
            if k > finite.size:
                assert cover == np.inf
                continue
            assert cover >= finite[k - 1]
            assert cover in values
            if n_buckets == 1:
                assert cover == finite[-1]  # one bucket holds them all


@pytest.mark.parametrize("bits, dtype", WEIGHT_KINDS)
@pytest.mark.parametrize("code_size", [40, 64, 150])
def test_scans_take_every_row_of_short_lists_once(bits, dtype, code_size):
    """Rows of two chunks up to scan.FOUR_ROWS_MAX_CODE_BYTES take their
    integer dots four rows at a time, and list-major blocks of fewer than
    four queries scan per query: lists of 1 to 13 rows (last blocks that
    overlap), a bitset filter, top-k, range and list-major scans must give
    what the float path gives."""
    if bits == 4 and np.dtype(dtype).itemsize == 2 and code_size > simd.SQ4_WIDE_MAX_CODE_BYTES:
        pytest.skip("int16 weights for 4-bit codes only on short rows")
    assert code_size <= scan.FOUR_ROWS_MAX_CODE_BYTES
    rng = np.random.default_rng(code_size + bits)
    sizes = np.array([1, 2, 3, 4, 5, 6, 7, 9, 13], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    n = int(sizes.sum())
    codes = rng.integers(0, 256, size=(n, code_size), dtype=np.uint8)
    ids = rng.permutation(n).astype(np.int64) + 100
    aux = rng.random(n).astype(np.float32) * 10
    n_queries, n_probes, k = 7, 4, 5
    weights = rng.standard_normal((n_queries, code_size if bits == 8 else 2 * code_size))
    weights = weights.astype(np.float32)
    int_weights = np.empty((n_queries, simd.n_int_weights(bits, code_size)
                            * simd.n_planes(bits, dtype)), dtype)
    params = np.zeros((n_queries, common.INT_PARAMS), np.float32)
    encode.query_int_weights(weights, bits, code_size, int_weights, params)
    # No columns: the float path (the same dtype: no extra compilation).
    no_int = (np.zeros((n_queries, 0), dtype), params)
    probes = np.stack([rng.permutation(sizes.shape[0])[:n_probes] for _ in range(n_queries)])
    consts = rng.standard_normal((n_queries, n_probes)).astype(np.float32)
    q_sq = (rng.random(n_queries) * 100).astype(np.float32)
    kept = ids[rng.random(n) < 0.6]
    bitset = np.zeros(-(-(n + 100) // 32), np.uint32)
    np.bitwise_or.at(bitset, kept // 32, (1 << (kept % 32)).astype(np.uint32))

    lists = common.ListArrays(codes, ids, aux, offsets, sizes)

    def top_k(int_args, keep, use_filter):
        out_d = np.empty((n_queries, k), np.float32)
        out_i = np.empty((n_queries, k), np.int64)
        scan.scan_lists(probes, consts, common.QueryTables(weights, q_sq, *int_args), lists,
                        common.KeepFilter(keep, use_filter), common.METRIC_L2, bits, False,
                        out_d, out_i)
        return out_d, out_i

    def list_major(int_args, keep, use_filter):
        pairs = search._pair_groups(probes, consts, np.arange(probes.size), sizes.shape[0])
        heap_d = np.empty((n_queries, k), np.float32)
        heap_i = np.empty((n_queries, k), np.int64)
        heaps.init_heaps(heap_d, heap_i)
        grouped.scan_lists_grouped(
            np.flatnonzero(np.diff(pairs.offsets)), pairs,
            common.QueryTables(weights, q_sq, *int_args), lists,
            common.KeepFilter(keep, use_filter), common.METRIC_L2, bits, False, heap_d, heap_i,
        )
        out_d = np.empty((n_queries, k), np.float32)
        out_i = np.empty((n_queries, k), np.int64)
        heaps.merge_topk(heap_d, heap_i, True, out_d, out_i)
        return out_d, out_i

    def in_range(int_args, keep, use_filter):
        counts, found, _ = scan.range_lists(
            probes, consts, common.QueryTables(weights, q_sq, *int_args), lists,
            common.KeepFilter(keep, use_filter), common.METRIC_L2, bits, np.float32(radius),
        )
        return counts, found

    float_d, _ = top_k(no_int, bitset[None], False)
    radius = np.median(float_d[:, -1])
    # Bitsets as the kernels take them: one row for every query.
    for keep, use_filter in ((np.zeros((1, 0), np.uint32), False), (bitset[None], True)):
        for run in (top_k, list_major):
            expected_d, expected_i = run(no_int, keep, use_filter)
            got_d, got_i = run((int_weights, params), keep, use_filter)
            np.testing.assert_array_equal(got_i, expected_i)
            np.testing.assert_allclose(got_d, expected_d, rtol=1e-5, atol=1e-4)
            if use_filter:
                assert np.isin(got_i[got_i >= 0], kept).all()
        expected_counts, expected_found = in_range(no_int, keep, use_filter)
        got_counts, got_found = in_range((int_weights, params), keep, use_filter)
        assert expected_counts.sum() > n_queries  # the radius keeps some, not all
        np.testing.assert_array_equal(got_counts, expected_counts)
        np.testing.assert_array_equal(got_found, expected_found)


@pytest.mark.skipif(not simd.HAS_INT_DOTS, reason="no AVX2 integer dots on this CPU")
@pytest.mark.parametrize("quantizer", ["sq4", "sq8"])
def test_queries_too_small_for_an_integer_step_search_as_without_the_filter(quantizer):
    # A query of magnitude 1e-43 makes the weights' integer step underflow
    # to 0 in float32: the search must not fail, and give what the exact
    # scan gives up to subnormal rounding (all such distances are ~0, so the
    # ids of the top 5 may differ among the ties).
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2000, 64)).astype(np.float32)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, quantizer=quantizer,
                                            metric="inner_product"), data)
    queries = np.full((3, 64), 1e-43, np.float32)
    queries[1, ::2] = -1e-43
    results = {}
    for int_filter in ("auto", "off"):
        for n_queries in (1, 3):
            params = ivf_sq.SearchParams(n_probes=8, int_filter=int_filter)
            results[int_filter, n_queries] = ivf_sq.search(params, index, queries[:n_queries], 5)
    for n_queries in (1, 3):
        (d_auto, i_auto), (d_off, _) = results["auto", n_queries], results["off", n_queries]
        np.testing.assert_allclose(d_auto, d_off, rtol=0, atol=1e-35)
        assert ((i_auto >= 0) & (i_auto < 2000)).all()
        assert all(len(set(row)) == 5 for row in i_auto.tolist())
