"""The bad-input catalogue: every public function, given wrong types,
shapes, dtypes, non-finite values, empty arrays, out-of-range counts, bad
ids or filters, raises TypeError or ValueError naming the argument, and
leaves the index exactly as it was."""

import numpy as np
import pytest

from ivfsq.common import Resources
from ivfsq.neighbors import filters, ivf_sq
from ivfsq.neighbors.refine import refine

DIM = 12
N_ROWS = 500


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N_ROWS, DIM)).astype(np.float32)


@pytest.fixture
def index(data):
    return ivf_sq.build(ivf_sq.IndexParams(n_lists=8), data)


def fingerprint(index, data):
    """Everything a caller can observe of an index."""
    distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=8), index, data[:20], 5)
    return (len(index), index._engine.next_id, index.list_sizes.tolist(),
            distances.tobytes(), neighbors.tobytes())


def make_queries(data, rows=3):
    return data[:rows].copy()


def nan_rows(data):
    rows = data[:3].copy()
    rows[1, 4] = np.nan
    return rows


def inf_rows(data):
    rows = data[:3].copy()
    rows[0, 0] = np.inf
    return rows


SP = ivf_sq.SearchParams(n_probes=4)
IDS = np.arange(N_ROWS, N_ROWS + 3, dtype=np.int64)

# (name, call(index, data), exception, message pattern). Every pattern names
# the argument at fault.
CASES = [
    # ----------------------------------------------------------- search
    ("search params type", lambda ix, d: ivf_sq.search({"n_probes": 4}, ix, d[:3], 5),
     TypeError, "search_params"),
    ("search index type", lambda ix, d: ivf_sq.search(SP, "index", d[:3], 5),
     TypeError, "index"),
    ("search untrained index", lambda ix, d: ivf_sq.search(SP, ivf_sq.Index(), d[:3], 5),
     ValueError, "index"),
    ("search queries list of str", lambda ix, d: ivf_sq.search(SP, ix, [["a"] * DIM], 5),
     TypeError, "queries"),
    ("search queries 1-d", lambda ix, d: ivf_sq.search(SP, ix, d[0], 5),
     ValueError, "queries"),
    ("search queries 3-d", lambda ix, d: ivf_sq.search(SP, ix, d[:4].reshape(2, 2, DIM), 5),
     ValueError, "queries"),
    ("search queries wrong dim", lambda ix, d: ivf_sq.search(SP, ix, d[:3, :5], 5),
     ValueError, "queries"),
    ("search queries complex", lambda ix, d: ivf_sq.search(SP, ix, d[:3].astype(complex), 5),
     TypeError, "queries"),
    ("search queries object", lambda ix, d: ivf_sq.search(SP, ix, d[:3].astype(object), 5),
     TypeError, "queries"),
    ("search queries bool", lambda ix, d: ivf_sq.search(SP, ix, d[:3] > 0, 5),
     TypeError, "queries"),
    ("search queries nan", lambda ix, d: ivf_sq.search(SP, ix, nan_rows(d), 5),
     ValueError, "queries"),
    ("search queries inf", lambda ix, d: ivf_sq.search(SP, ix, inf_rows(d), 5),
     ValueError, "queries"),
    ("search k zero", lambda ix, d: ivf_sq.search(SP, ix, d[:3], 0), ValueError, "k"),
    ("search k negative", lambda ix, d: ivf_sq.search(SP, ix, d[:3], -1), ValueError, "k"),
    ("search k float", lambda ix, d: ivf_sq.search(SP, ix, d[:3], 2.5), TypeError, "k"),
    ("search k bool", lambda ix, d: ivf_sq.search(SP, ix, d[:3], True), TypeError, "k"),
    ("search k > size", lambda ix, d: ivf_sq.search(SP, ix, d[:3], N_ROWS + 1),
     ValueError, "k must be <="),
    ("search neighbors wrong shape",
     lambda ix, d: ivf_sq.search(SP, ix, d[:3], 5, neighbors=np.empty((3, 4), np.int64)),
     ValueError, "neighbors"),
    ("search neighbors wrong dtype",
     lambda ix, d: ivf_sq.search(SP, ix, d[:3], 5, neighbors=np.empty((3, 5), np.int32)),
     TypeError, "neighbors"),
    ("search distances wrong dtype",
     lambda ix, d: ivf_sq.search(SP, ix, d[:3], 5, distances=np.empty((3, 5), np.float64)),
     TypeError, "distances"),
    ("search filter type",
     lambda ix, d: ivf_sq.search(SP, ix, d[:3], 5, filter=np.ones(N_ROWS, bool)),
     TypeError, "filter"),
    ("search filter too short",
     lambda ix, d: ivf_sq.search(SP, ix, d[:3], 5,
                                 filter=filters.from_bitset(np.zeros(2, np.uint32))),
     ValueError, "filter"),
    ("search refine_ratio without store",
     lambda ix, d: ivf_sq.search(ivf_sq.SearchParams(n_probes=4, refine_ratio=2.0), ix,
                                 d[:3], 5),
     ValueError, "refine_ratio"),
    ("search resources type",
     lambda ix, d: ivf_sq.search(SP, ix, d[:3], 5, resources=4), TypeError, "resources"),
    # ----------------------------------------------------------- params
    ("n_probes zero", lambda ix, d: ivf_sq.SearchParams(n_probes=0), ValueError, "n_probes"),
    ("n_probes float", lambda ix, d: ivf_sq.SearchParams(n_probes=4.0), TypeError, "n_probes"),
    ("n_probes str", lambda ix, d: ivf_sq.SearchParams(n_probes="4"), TypeError, "n_probes"),
    ("refine_ratio < 1", lambda ix, d: ivf_sq.SearchParams(refine_ratio=0.5),
     ValueError, "refine_ratio"),
    ("refine_ratio nan", lambda ix, d: ivf_sq.SearchParams(refine_ratio=float("nan")),
     ValueError, "refine_ratio"),
    ("n_lists zero", lambda ix, d: ivf_sq.IndexParams(n_lists=0), ValueError, "n_lists"),
    ("n_lists float", lambda ix, d: ivf_sq.IndexParams(n_lists=8.5), TypeError, "n_lists"),
    ("metric unknown", lambda ix, d: ivf_sq.IndexParams(metric="manhattan"),
     ValueError, "metric"),
    ("quantizer unknown", lambda ix, d: ivf_sq.IndexParams(quantizer="sq2"),
     ValueError, "quantizer"),
    ("kmeans_n_iters negative", lambda ix, d: ivf_sq.IndexParams(kmeans_n_iters=-1),
     ValueError, "kmeans_n_iters"),
    ("params positional", lambda ix, d: ivf_sq.IndexParams(8), TypeError, "positional"),
    ("positional search params", lambda ix, d: ivf_sq.SearchParams(4), TypeError,
     "positional"),
    ("resources threads zero", lambda ix, d: Resources(n_threads=0), ValueError, "n_threads"),
    # ------------------------------------------------------------ build
    ("build params type", lambda ix, d: ivf_sq.build({"n_lists": 8}, d), TypeError,
     "index_params"),
    ("build dataset 1-d", lambda ix, d: ivf_sq.build(ivf_sq.IndexParams(n_lists=8), d[0]),
     ValueError, "dataset"),
    ("build dataset empty",
     lambda ix, d: ivf_sq.build(ivf_sq.IndexParams(n_lists=8), d[:0]), ValueError, "dataset"),
    ("build dataset zero dims",
     lambda ix, d: ivf_sq.build(ivf_sq.IndexParams(n_lists=8), np.empty((100, 0), np.float32)),
     ValueError, "dataset"),
    ("build fewer rows than lists",
     lambda ix, d: ivf_sq.build(ivf_sq.IndexParams(n_lists=8), d[:7]), ValueError, "n_lists"),
    ("build dataset nan", lambda ix, d: ivf_sq.build(ivf_sq.IndexParams(n_lists=2), nan_rows(d)),
     ValueError, "dataset"),
    ("build dataset str", lambda ix, d: ivf_sq.build(ivf_sq.IndexParams(n_lists=2), "data"),
     TypeError, "dataset"),
    # ----------------------------------------------------------- extend
    ("extend index type", lambda ix, d: ivf_sq.extend(None, d[:3], IDS), TypeError, "index"),
    ("extend wrong dim", lambda ix, d: ivf_sq.extend(ix, d[:3, :4], IDS), ValueError,
     "new_vectors"),
    ("extend nan", lambda ix, d: ivf_sq.extend(ix, nan_rows(d), IDS), ValueError,
     "new_vectors"),
    ("extend inf", lambda ix, d: ivf_sq.extend(ix, inf_rows(d), IDS), ValueError,
     "new_vectors"),
    ("extend ids too few", lambda ix, d: ivf_sq.extend(ix, d[:3], IDS[:2]), ValueError,
     "new_indices"),
    ("extend ids 2-d", lambda ix, d: ivf_sq.extend(ix, d[:3], IDS[:, None]), ValueError,
     "new_indices"),
    ("extend ids float", lambda ix, d: ivf_sq.extend(ix, d[:3], IDS.astype(float)),
     TypeError, "new_indices"),
    ("extend ids negative",
     lambda ix, d: ivf_sq.extend(ix, d[:3], np.array([N_ROWS, -1, N_ROWS + 1])),
     ValueError, "new_indices"),
    ("extend ids duplicated",
     lambda ix, d: ivf_sq.extend(ix, d[:3], np.array([N_ROWS, N_ROWS, N_ROWS + 1])),
     ValueError, "new_indices"),
    ("extend ids already present", lambda ix, d: ivf_sq.extend(ix, d[:3], np.arange(3)),
     ValueError, "new_indices"),
    ("extend a nan after many good rows",
     lambda ix, d: ivf_sq.extend(ix, np.vstack([d, nan_rows(d)]),
                                 np.arange(N_ROWS, 2 * N_ROWS + 3)),
     ValueError, "new_vectors"),
    # ------------------------------------------------------- save, load
    ("save index type", lambda ix, d: ivf_sq.save("/tmp/x.ivfsq", "index"), TypeError,
     "index"),
    ("save into a missing folder",
     lambda ix, d: ivf_sq.save("/nonexistent-folder/x.ivfsq", ix), FileNotFoundError,
     "nonexistent-folder"),
    ("load missing file", lambda ix, d: ivf_sq.load("/nonexistent-folder/x.ivfsq"),
     FileNotFoundError, "nonexistent-folder"),
    ("load mmap not bool", lambda ix, d: ivf_sq.load("/tmp/x.ivfsq", mmap="yes"), TypeError,
     "mmap"),
    # ----------------------------------------------------------- refine
    ("refine candidates out of range",
     lambda ix, d: refine(d, d[:3], np.full((3, 5), N_ROWS, np.int64), k=2),
     ValueError, "candidates"),
    ("refine k > candidates",
     lambda ix, d: refine(d, d[:3], np.zeros((3, 5), np.int64), k=6),
     ValueError, "k"),
    ("refine queries wrong dim",
     lambda ix, d: refine(d, d[:3, :5], np.zeros((3, 5), np.int64), k=2),
     ValueError, "queries"),
    ("refine metric unknown",
     lambda ix, d: refine(d, d[:3], np.zeros((3, 5), np.int64), k=2, metric="l1"),
     ValueError, "metric"),
    # ---------------------------------------------------------- filters
    ("bitset wrong dtype", lambda ix, d: filters.from_bitset(np.zeros(4, np.int64)),
     TypeError, "bitset"),
    ("bitset 2-d", lambda ix, d: filters.from_bitset(np.zeros((2, 2), np.uint32)),
     ValueError, "bitset"),
    ("bitset mask too short",
     lambda ix, d: ivf_sq.search(SP, ix, d[:3], 5,
                                 filter=filters.from_bitset(np.ones(N_ROWS - 1, bool))),
     ValueError, "filter must cover every id"),
    ("bitmap wrong dtype", lambda ix, d: filters.from_bitmap(np.zeros((2, 4), np.int32)),
     TypeError, "bitmap"),
    ("bitmap 3-d", lambda ix, d: filters.from_bitmap(np.zeros((2, 2, 2), np.uint32)),
     ValueError, "bitmap"),
    ("bitmap mask 1-d", lambda ix, d: filters.from_bitmap(np.ones(8, bool)),
     ValueError, "bitmap"),
    ("bitmap rows", lambda ix, d: ivf_sq.search(
        SP, ix, d[:3], 5, filter=filters.from_bitmap(np.ones((2, N_ROWS), bool))),
     ValueError, "one row per query"),
    ("bitmap mask too short", lambda ix, d: ivf_sq.search(
        SP, ix, d[:3], 5, filter=filters.from_bitmap(np.ones((3, N_ROWS - 1), bool))),
     ValueError, "filter must cover every id"),
    ("bitmap flat too short", lambda ix, d: ivf_sq.search(
        SP, ix, d[:3], 5, filter=filters.from_bitmap(np.ones(3 * N_ROWS // 32 - 1, np.uint32))),
     ValueError, "cuVS's bitmap layout"),
    ("range bitmap rows", lambda ix, d: ivf_sq.range_search(
        SP, ix, d[:3], 1.0, filter=filters.from_bitmap(np.ones((4, N_ROWS), bool))),
     ValueError, "one row per query"),
]


@pytest.mark.parametrize("name, call, error, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_and_leaves_the_index_unchanged(index, data, name, call, error,
                                                         pattern):
    before = fingerprint(index, data)
    with pytest.raises(error, match=pattern) as raised:
        call(index, data)
    if error in (TypeError, ValueError):
        assert len(str(raised.value)) > 20  # says what was expected and what came
    assert fingerprint(index, data) == before


def test_empty_query_batch_and_extend_are_no_ops(index, data):
    before = fingerprint(index, data)
    distances, neighbors = ivf_sq.search(SP, index, data[:0], 5)
    assert distances.shape == neighbors.shape == (0, 5)
    ivf_sq.extend(index, data[:0], np.zeros(0, np.int64))
    assert fingerprint(index, data) == before


def test_k_and_n_probes_at_their_bounds(index, data):
    # k == len(index) returns every vector once; n_probes beyond n_lists is
    # clamped to n_lists.
    params = ivf_sq.SearchParams(n_probes=10**6)
    distances, neighbors = ivf_sq.search(params, index, data[:2], N_ROWS)
    assert sorted(neighbors[0]) == list(range(N_ROWS))
    assert np.all(np.diff(distances[0]) >= 0)


def test_failed_extend_after_good_rows_adds_nothing(index, data):
    # The first 500 rows are valid and would be encoded before the bad one
    # is met: the index must still not change.
    rows = np.vstack([data, nan_rows(data)])
    with pytest.raises(ValueError, match="new_vectors"):
        ivf_sq.extend(index, rows, None)
    assert len(index) == N_ROWS and index._engine.next_id == N_ROWS
    ivf_sq.extend(index, data[:3], None)  # ids continue after the largest
    assert len(index) == N_ROWS + 3


def test_outputs_need_not_be_contiguous(index, data):
    distances = np.empty((5, 3), np.float32).T
    neighbors = np.empty((5, 3), np.int64).T
    expected = ivf_sq.search(SP, index, data[:3], 5)
    ivf_sq.search(SP, index, data[:3], 5, neighbors=neighbors, distances=distances)
    np.testing.assert_array_equal(neighbors, expected[1])
    np.testing.assert_array_equal(distances, expected[0])


def test_failed_extend_in_a_later_batch_adds_nothing(index, data, monkeypatch):
    # Rows are assigned and checked batch by batch before anything is
    # stored: a bad row in the last batch leaves the index as it was, and a
    # good multi-batch extend equals a single-batch one.
    from ivfsq.ivf import engine as _ivf
    before = fingerprint(index, data)
    monkeypatch.setattr(_ivf, "ENCODE_BATCH_ROWS", 100)
    rows = np.vstack([data, nan_rows(data)])
    with pytest.raises(ValueError, match="new_vectors must contain only finite values.*row 501"):
        ivf_sq.extend(index, rows, None)
    assert fingerprint(index, data) == before
    ivf_sq.extend(index, data[:250], None)
    monkeypatch.setattr(_ivf, "ENCODE_BATCH_ROWS", 1 << 16)
    single = ivf_sq.build(ivf_sq.IndexParams(n_lists=8), data)
    ivf_sq.extend(single, data[:250], None)
    queries = data[:30]
    for got, expected in zip(ivf_sq.search(SP, index, queries, 7),
                             ivf_sq.search(SP, single, queries, 7)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_one_dot_fast_path_finds_every_bad_row(dtype):
    # Valid input passes on one dot of all values; anything else must still be
    # named row by row (NaN, inf, a row too large), and rows that are each
    # fine but whose summed squares overflow the dot must pass.
    from ivfsq._validation import MAX_SQ_NORM, to_float32_checked

    rows = np.ones((6, 4), dtype=dtype)
    assert to_float32_checked("queries", rows).dtype == np.float32
    for bad, message in [(np.nan, "finite values.*row 13"), (np.inf, "finite values.*row 13")]:
        broken = rows.copy()
        broken[3, 1] = bad
        with pytest.raises(ValueError, match=message):
            to_float32_checked("queries", broken, start=10)
    if dtype != np.float16:  # float16 cannot hold 1e18
        large = rows.copy()
        large[4] = 1e18  # squared norm 4e36 > MAX_SQ_NORM
        with pytest.raises(ValueError, match="too large for float32 distances: row 4"):
            to_float32_checked("queries", large)
        # No magnitude limit (cosine): only finiteness.
        assert to_float32_checked("queries", large, magnitudes=False).shape == (6, 4)
        each_fine = np.full((8, 4), np.sqrt(MAX_SQ_NORM / 4 * 0.9), dtype=dtype)
        assert float((each_fine.astype(np.float64) ** 2).sum()) > MAX_SQ_NORM
        assert to_float32_checked("queries", each_fine).shape == (8, 4)


@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product", "cosine"])
def test_prepare_one_call_path_matches_general_path(metric, monkeypatch):
    # A few float32 rows are checked (and normalized, for cosine) by one
    # kernel call; the result, and the error for every kind of bad row, must
    # be the general path's, which FAST_PREPARE_ROWS = 0 forces.
    from ivfsq.ivf import engine as engine_module
    from ivfsq.ivf.engine import FAST_PREPARE_ROWS

    rng = np.random.default_rng(3)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=4, metric=metric),
                         rng.standard_normal((400, 8)).astype(np.float32))
    engine = index._engine
    rows = rng.standard_normal((FAST_PREPARE_ROWS, 8)).astype(np.float32)
    rows[5] = 0.0  # a zero row: cosine keeps it zero and marks it
    rows[6] = 3e18  # squared norm 7.2e37: only cosine takes it
    cases = [rows[:1], rows[:7], rows]
    for bad in (np.nan, np.inf, -np.inf):
        broken = rows[:3].copy()
        broken[2, 4] = bad
        cases.append(broken)

    def outcome(case):
        original = case.copy()
        try:
            vectors, nonzero = engine.prepare("queries", case)
        except ValueError as error:
            return str(error)
        np.testing.assert_array_equal(case, original)  # the caller's rows are untouched
        return vectors.copy(), None if nonzero is None else nonzero.copy()

    from ivfsq.backends.cpu import kernels

    calls = []
    for kernel_name in ("rows_within", "normalized_within"):  # l2/ip, cosine
        one_call = getattr(kernels.encode, kernel_name)
        monkeypatch.setattr(kernels.encode, kernel_name,
                            lambda *args, one_call=one_call: calls.append(1) or one_call(*args))
    fast = [outcome(case) for case in cases]
    assert len(calls) == len(cases)  # every case took the one-call path first
    monkeypatch.setattr(engine_module, "FAST_PREPARE_ROWS", 0)
    general = [outcome(case) for case in cases]
    for got, expected in zip(fast, general):
        if isinstance(expected, str):
            assert got == expected
        else:
            np.testing.assert_array_equal(got[0], expected[0])
            if expected[1] is None:
                assert got[1] is None
            else:
                np.testing.assert_array_equal(got[1], expected[1])
    if metric == "cosine":
        assert isinstance(fast[1], tuple) and not fast[1][1][5] and fast[1][1][6]
    else:
        assert "too large for float32 distances: row 6" in fast[1]


def test_read_only_inputs_compile_no_second_kernel_specialization(tmp_path):
    # A read-only memory map (or an array from Ray's object store) searches
    # and extends like a writeable array, through the same compiled kernels.
    from ivfsq.backends.cpu import kernels
    from ivfsq.datasets import make_blobs_lowrank

    base, queries = make_blobs_lowrank(2000, 24, n_queries=20, seed=4)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8), base)
    params = ivf_sq.SearchParams(n_probes=3)
    expected = [ivf_sq.search(params, index, queries[:n], 5) for n in (1, 20)]
    np.save(tmp_path / "queries.npy", queries)
    read_only = np.load(tmp_path / "queries.npy", mmap_mode="r")
    assert not read_only.flags.writeable
    kernel_list = [kernels.scan.search_few, kernels.scan.scan_lists,
                   kernels.grouped.scan_lists_grouped, kernels.encode.query_weights,
                   kernels.encode.list_constants, kernels.encode.encode_sq]
    signatures = [len(kernel.signatures) for kernel in kernel_list]
    for n, (distances, neighbors) in zip((1, 20), expected):
        got = ivf_sq.search(params, index, read_only[:n], 5)
        np.testing.assert_array_equal(got[0], distances)
        np.testing.assert_array_equal(got[1], neighbors)
    ivf_sq.extend(index, read_only, None)
    assert [len(kernel.signatures) for kernel in kernel_list] == signatures
