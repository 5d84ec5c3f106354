"""The SQ8 code format and the kernels, each against a plain NumPy oracle."""

import numpy as np
import pytest

from ivfsq import codecs
from ivfsq.backends.cpu.kernels import coarse, common, encode, heaps, scan, simd
from ivfsq.codecs.scalar import ScalarQuantizer
from ivfsq.ivf.kmeans import assign_nearest, imbalance_factor
from ivfsq.ivf.lists import ListStorage


@pytest.fixture
def residuals():
    rng = np.random.default_rng(0)
    scales = np.array([1.0, 0.01, 100.0, 5.0, 0.0, 3.0], dtype=np.float32)
    return (rng.standard_normal((500, 6)) * scales).astype(np.float32)


def test_sq8_range_has_five_percent_margin(residuals):
    quantizer = codecs.get("sq8").train(residuals, "minmax")
    low, high = residuals.min(0), residuals.max(0)
    span = (high - low).astype(np.float64)
    np.testing.assert_allclose(quantizer.vmin, low - 0.05 * span, rtol=1e-6)
    expected_delta = np.where(span == 0, 1.0, 1.1 * span / 255)
    np.testing.assert_allclose(quantizer.delta, expected_delta, rtol=1e-6)


def test_sq8_round_trip_error_at_most_half_a_step(residuals):
    quantizer = codecs.get("sq8").train(residuals, "minmax")
    centers = np.zeros((1, 6), np.float32)
    labels = np.zeros(len(residuals), np.int64)
    codes, decoded = quantizer.encode(residuals, centers, labels)
    assert codes.dtype == np.uint8 and codes.shape == (500, 6)
    error = np.abs(decoded - residuals)
    assert np.all(error <= quantizer.delta / 2 * (1 + 1e-5) + 1e-7)
    # Round to nearest (not truncation): the code is the nearest level.
    expected = np.clip(np.floor((residuals - quantizer.vmin) / quantizer.delta + 0.5), 0, 255)
    np.testing.assert_array_equal(codes, expected.astype(np.uint8))
    # The margin keeps training values off the clamping edges.
    assert codes[:, [0, 2]].min() >= 10 and codes[:, [0, 2]].max() <= 245
    # decode() is the exact inverse used by the kernels.
    np.testing.assert_array_equal(quantizer.decode(codes, centers, labels), decoded)


def test_sq8_with_centers_and_clamping():
    quantizer = ScalarQuantizer(codecs.get("sq8"), np.array([-1.0, -1.0], np.float32),
                                np.array([1 / 128, 1 / 128], np.float32))
    centers = np.array([[0.0, 0.0], [10.0, -10.0]], np.float32)
    vectors = np.array([[0.0, 0.0], [10.0, -10.0], [15.0, -20.0], [0.5, -0.5]], np.float32)
    labels = np.array([0, 1, 1, 0])
    codes, decoded = quantizer.encode(vectors, centers, labels)
    # Residual 0 sits at level (0 - vmin) / delta = 128.
    assert codes[0].tolist() == [128, 128] and codes[1].tolist() == [128, 128]
    # Out-of-range residuals (+5, -10) clamp to the last levels.
    assert codes[2].tolist() == [255, 0]
    np.testing.assert_allclose(decoded[2], [10.0 - 1 + 255 / 128, -11.0], rtol=1e-6)
    # Half a step rounds up (round half up, never truncation).
    codes, _ = quantizer.encode(np.array([[1 / 256, 3 / 256]], np.float32), centers, [0])
    assert codes[0].tolist() == [129, 130]


def _oracle_levels(codes, bits, dim):
    """Integer levels of packed codes, per the documented nibble order."""
    if bits == 8:
        return codes.astype(np.int64)
    levels = np.zeros((codes.shape[0], 2 * codes.shape[1]), np.int64)
    levels[:, 0::2] = codes & 15  # dimension 2j: low nibble of byte j
    levels[:, 1::2] = codes >> 4  # dimension 2j + 1: high nibble
    return levels[:, :dim]


def _int_weights(weights, bits, code_size, use_int):
    """The integer filter's weights (see ivfsq.backends.cpu.kernels.simd), or none."""
    if not use_int:
        return (np.zeros((weights.shape[0], 0), np.int8),
                np.zeros((weights.shape[0], common.INT_PARAMS), np.float32))
    dtype = simd.weight_dtype(bits)
    out = np.zeros((weights.shape[0], simd.n_int_weights(bits, code_size)
                    * simd.n_planes(bits, dtype)), dtype)
    params = np.zeros((weights.shape[0], common.INT_PARAMS), np.float32)
    encode.query_int_weights(weights, bits, code_size, out, params)
    return out, params


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("emit_rows", [False, True])
@pytest.mark.parametrize("dim, use_int", [(11, False), (77, False), (77, True), (130, True)])
def test_scan_kernel_matches_numpy_oracle(bits, emit_rows, dim, use_int):
    # With use_int the integer dots (AVX2, or their portable stand-ins)
    # filter the candidates first; the results must not change.
    rng = np.random.default_rng(1)
    n, k = 300, 7
    code_size = dim if bits == 8 else (dim + 1) // 2
    codes = rng.integers(0, 256, size=(n, code_size), dtype=np.uint8)
    if bits == 4:
        codes[:, -1] &= 15  # odd dim: the last high nibble is padding (0)
    levels = _oracle_levels(codes, bits, dim)
    ids = rng.permutation(n).astype(np.int64) + 1000
    aux = rng.random(n).astype(np.float32)
    list_offsets = np.array([0, 100, 180], np.int64)
    list_sizes = np.array([100, 80, 120], np.int64)
    dim_weights = rng.standard_normal((3, dim)).astype(np.float32)
    if bits == 8:
        weights = dim_weights
    else:  # low-nibble weights (even dims), then high-nibble weights (odd dims)
        weights = np.zeros((3, 2 * code_size), np.float32)
        weights[:, :code_size] = dim_weights[:, 0::2]
        weights[:, code_size : code_size + dim // 2] = dim_weights[:, 1::2]
    probes = np.array([[0, 2], [1, 1], [2, -1]], np.int64)
    consts = rng.standard_normal((3, 2)).astype(np.float32)
    q_sq = rng.random(3).astype(np.float32)
    int_weights, int_params = _int_weights(weights, bits, code_size, use_int)
    for metric in (common.METRIC_L2, common.METRIC_IP, common.METRIC_COSINE):
        out_d = np.empty((3, k), np.float32)
        out_i = np.empty((3, k), np.int64)
        scan.scan_lists(probes, consts,
                        common.QueryTables(weights, q_sq, int_weights, int_params),
                        common.ListArrays(codes, ids, aux, list_offsets, list_sizes),
                        common.KeepFilter(np.zeros((1, 0), np.uint32), False), metric, bits,
                        emit_rows, out_d, out_i)
        for i in range(3):
            cand_d, cand_i = [], []
            for p in range(2):
                lst = probes[i, p]
                if lst < 0:
                    continue
                rows = np.arange(list_offsets[lst], list_offsets[lst] + list_sizes[lst])
                s = consts[i, p] + levels[rows].astype(np.float64) @ dim_weights[i]
                if metric == common.METRIC_L2:
                    d = q_sq[i] + aux[rows] - 2 * s
                elif metric == common.METRIC_IP:
                    d = -s
                else:
                    d = 1 - aux[rows] * s
                cand_d.append(d)
                cand_i.append(rows if emit_rows else ids[rows])
            cand_d, cand_i = np.concatenate(cand_d), np.concatenate(cand_i)
            order = np.lexsort((cand_i, cand_d))[:k]
            np.testing.assert_allclose(out_d[i], cand_d[order], rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(out_i[i], cand_i[order])


def test_merge_topk_breaks_ties_by_smaller_id_and_skips_padding():
    cand_d = np.array([[3.0, 1.0, 1.0, np.inf, 2.0, 1.0]], np.float32)
    cand_i = np.array([[5, 9, 4, -1, 8, 7]], np.int64)
    out_d = np.empty((1, 4), np.float32)
    out_i = np.empty((1, 4), np.int64)
    heaps.merge_topk(cand_d, cand_i, False, out_d, out_i)
    assert out_i.tolist() == [[4, 7, 9, 8]]
    out_d = np.empty((1, 7), np.float32)
    out_i = np.empty((1, 7), np.int64)
    heaps.merge_topk(cand_d, cand_i, False, out_d, out_i)
    assert out_i.tolist() == [[4, 7, 9, 8, 5, -1, -1]]
    assert np.isinf(out_d[0, 5:]).all()


def test_assign_nearest_matches_oracle():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((1000, 5)).astype(np.float32)
    centers = rng.standard_normal((17, 5)).astype(np.float32)
    labels, distances = assign_nearest(vectors, centers, return_distances=True)
    full = ((vectors[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, full.argmin(1))
    np.testing.assert_allclose(distances, full.min(1), rtol=1e-4, atol=1e-5)


def test_assign_nearest_inner_product_takes_largest_dot():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1000, 5)).astype(np.float32)
    # Centers of unequal norms: the largest dot and the nearest center differ.
    centers = (rng.standard_normal((17, 5)) * rng.uniform(0.2, 3.0, (17, 1))).astype(np.float32)
    labels, scores = assign_nearest(vectors, centers, inner_product=True, return_distances=True)
    dots = vectors.astype(np.float64) @ centers.T.astype(np.float64)
    np.testing.assert_array_equal(labels, dots.argmax(1))
    np.testing.assert_allclose(-0.5 * scores, dots.max(1), rtol=1e-4, atol=1e-4)
    l2_labels = assign_nearest(vectors, centers)
    assert (labels != l2_labels).any()
    # Without distances, the same labels.
    np.testing.assert_array_equal(assign_nearest(vectors, centers, inner_product=True), labels)


def test_imbalance_factor():
    assert imbalance_factor([10, 10, 10, 10]) == 1.0
    assert imbalance_factor([40, 0, 0, 0]) == 4.0


def test_list_storage_growth_keeps_old_snapshot_intact():
    storage = ListStorage.empty(3, 2)
    first = storage.add(np.array([0, 2, 2]), np.arange(6, dtype=np.uint8).reshape(3, 2),
                        np.array([10, 11, 12]), np.zeros(3, np.float32), conservative=False)
    assert first.list_sizes.tolist() == [1, 0, 2]
    second = first.add(np.array([2, 1]), np.full((2, 2), 9, np.uint8), np.array([13, 14]),
                       np.ones(2, np.float32), conservative=False)
    # The old snapshot still shows exactly its own entries.
    assert sorted(first.ids[first.valid_rows()].tolist()) == [10, 11, 12]
    assert sorted(second.ids[second.valid_rows()].tolist()) == [10, 11, 12, 13, 14]
    rows = second.valid_rows()
    lists = np.repeat(np.arange(3), second.list_sizes)
    assert dict(zip(second.ids[rows].tolist(), lists.tolist())) == {
        10: 0, 11: 2, 12: 2, 13: 2, 14: 1}
    assert np.all(second.list_capacities >= second.list_sizes)
    assert second.list_capacities[2] % 16 == 0


@pytest.mark.parametrize("use_l2", [True, False])
def test_small_batch_probe_selection_matches_blas_path(use_l2):
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((5, 24)).astype(np.float32)
    centers = rng.standard_normal((40, 24)).astype(np.float32)
    sq_norms = (centers.astype(np.float64) ** 2).sum(1).astype(np.float32)
    small_scores, small_lists = np.empty((5, 6), np.float32), np.empty((5, 6), np.int64)
    coarse.select_probes_small(queries, centers, sq_norms, use_l2, small_scores, small_lists)
    dots = queries.astype(np.float64) @ centers.T.astype(np.float64)
    oracle = sq_norms[None, :] - 2 * dots if use_l2 else -dots
    np.testing.assert_array_equal(small_lists, np.argsort(oracle, axis=1)[:, :6])
    np.testing.assert_allclose(small_scores, np.sort(oracle, axis=1)[:, :6], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("use_l2", [True, False])
@pytest.mark.parametrize("by_residual", [True, False])
def test_list_constants_match_numpy(by_residual, use_l2):
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((7, 24)).astype(np.float32)
    centers = rng.standard_normal((10, 24)).astype(np.float32)
    vmin = rng.standard_normal(24).astype(np.float32)
    probes = rng.integers(0, 10, (7, 3))
    out = np.empty((7, 3), np.float32)
    sq_norms = np.full(7, np.nan, np.float32)
    encode.list_constants(queries, centers, probes, vmin, by_residual, use_l2, out, sq_norms)
    q = queries.astype(np.float64)
    expected = (q @ vmin.astype(np.float64))[:, None] + np.zeros((7, 3))
    if by_residual:
        expected += np.einsum("ij,ipj->ip", q, centers[probes].astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    expected_norms = (q**2).sum(axis=1) if use_l2 else np.zeros(7)
    np.testing.assert_allclose(sq_norms, expected_norms, rtol=1e-6)


def test_normalize_rows_kernel():
    vectors = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]], np.float32)
    nonzero = np.empty(3, np.bool_)
    encode.normalize_rows(vectors, nonzero)
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
    assert nonzero.tolist() == [True, False, True]


def test_merge_topk_from_a_first_heap_matches_oracle():
    rng = np.random.default_rng(3)
    k = 6
    for trial in range(50):
        first_d = rng.integers(0, 5, k).astype(np.float32)  # ties on purpose
        first_i = rng.permutation(100)[:k].astype(np.int64)
        if trial % 5 == 0:  # a part that found fewer than k: (inf, -1) padding
            first_d[:2], first_i[:2] = np.inf, -1
        # A sequence sorted by descending (distance, id) is a valid max-heap.
        order = np.lexsort((first_i, first_d))[::-1]
        first_d, first_i = first_d[order], first_i[order]
        rest_i = np.setdiff1d(np.arange(200), first_i)[rng.permutation(150)[:9]]
        rest_d = rng.integers(0, 5, 9).astype(np.float32)
        cand_d = np.concatenate([first_d, rest_d])[None]
        cand_i = np.concatenate([first_i, rest_i])[None]
        out_d = np.empty((1, k), np.float32)
        out_i = np.empty((1, k), np.int64)
        heaps.merge_topk(cand_d, cand_i, True, out_d, out_i)
        valid = cand_i[0] >= 0
        expected = np.lexsort((cand_i[0][valid], cand_d[0][valid]))[:k]
        np.testing.assert_array_equal(out_i[0], cand_i[0][valid][expected])


def test_quantization_mse_matches_numpy_oracle():
    # The kernel rounds with the inverse step; values half-way between two
    # levels (the 0.5 offsets) may go either way at the same error.
    rng = np.random.default_rng(5)
    dim, levels = 9, 15.0
    lo = rng.standard_normal(dim) - 3.0
    delta = rng.random(dim) * 0.7 + 0.01
    codes = rng.integers(-3, 19, size=(400, dim))
    offsets = rng.choice([0.0, 0.5, 0.25, -0.499], size=(400, dim))
    values = (lo + (codes + offsets) * delta).astype(np.float32)
    out = np.empty(dim)
    encode.quantization_mse(values, lo, delta, levels, out)
    wide = values.astype(np.float64)
    levels_taken = np.clip(np.floor((wide - lo) / delta + 0.5), 0, levels)
    expected = ((lo + levels_taken * delta - wide) ** 2).mean(axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-9)
