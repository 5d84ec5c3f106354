"""The GPU backend against the CPU backend.

Run on numba's CUDA simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM
unless IVFSQ_TEST_GPU=1), on tiny data: each kernel against its CPU
counterpart, then whole searches, builds and index moves against the CPU
backend. The kernels' GPU compilation is checked by compiling them to PTX
(tests/test_cuda_ptx.py). Skipped without numba-cuda (the ``gpu`` extra).
"""

import sys

import numpy as np
import pytest

from ivfsq.backends import cuda as cuda_backend

if not cuda_backend.is_available():
    pytest.skip("the GPU backend cannot run here (no numba-cuda, or no GPU and no simulator)",
                allow_module_level=True)

from numba import cuda  # noqa: E402

from ivfsq.backends.cpu import search as cpu_search  # noqa: E402
from ivfsq.backends.cuda import kernels  # noqa: E402
from ivfsq.backends.cuda import search as gpu_search  # noqa: E402
from ivfsq.common import Resources  # noqa: E402
from ivfsq.datasets import make_blobs_lowrank  # noqa: E402
from ivfsq.neighbors import filters, ivf_sq  # noqa: E402

SIMULATED = kernels.SHAPES == kernels.SIMULATOR_SHAPES
CPU = Resources(device="cpu")
GPU = Resources(device="cuda")


@pytest.fixture(autouse=True)
def _short_gil_switch_interval():
    # The simulator's block manager polls its threads in a loop that holds
    # the GIL; at Python's default 5 ms switch interval a launch's threads
    # could wait on it for tens of seconds at a time.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture(scope="module")
def data():
    base, queries = make_blobs_lowrank(700, 12, n_queries=4, seed=3)
    return base, queries


def _index(data, **params):
    params.setdefault("n_lists", 8)
    return ivf_sq.build(ivf_sq.IndexParams(**params), data[0])


def assert_same_results(expected, found):
    """GPU results equal the CPU's: distances to float32 rounding, and ids
    position by position except where two distances tie."""
    (d0, i0), (d1, i1) = expected, found
    d1 = d1.copy_to_host() if hasattr(d1, "copy_to_host") else np.asarray(d1)
    i1 = i1.copy_to_host() if hasattr(i1, "copy_to_host") else np.asarray(i1)
    assert d1.dtype == np.float32 and i1.dtype == np.int64 and d1.shape == d0.shape
    np.testing.assert_allclose(d1, d0, rtol=2e-5, atol=2e-5)
    differ = i0 != i1
    for q, col in zip(*np.nonzero(differ)):
        # The other backend's id at this place has the same distance.
        tied = np.isclose(d0[q], d0[q, col], rtol=2e-5, atol=2e-5)
        assert i1[q, col] in i0[q][tied], (q, col)
    assert differ.mean() <= 0.05


def assert_same_ranges(expected, found, radius, descending=False):
    """GPU range results equal the CPU's: per query the same ids, except
    those whose distance is within rounding of the radius, with the same
    distances, best first (``descending`` for inner products)."""
    (o0, i0, d0), (o1, i1, d1) = expected, found
    assert len(o0) == len(o1)
    for q in range(len(o0) - 1):
        cpu = dict(zip(i0[o0[q]:o0[q + 1]].tolist(), d0[o0[q]:o0[q + 1]].tolist()))
        gpu = dict(zip(i1[o1[q]:o1[q + 1]].tolist(), d1[o1[q]:o1[q + 1]].tolist()))
        for vid in set(cpu) ^ set(gpu):
            assert abs(cpu.get(vid, gpu.get(vid)) - radius) <= 1e-4 * max(1.0, abs(radius))
        for vid in set(cpu) & set(gpu):
            assert cpu[vid] == pytest.approx(gpu[vid], rel=2e-5, abs=2e-5)
        steps = np.diff(d1[o1[q]:o1[q + 1]])
        assert np.all(steps <= 0 if descending else steps >= 0)


# ------------------------------------------------------------------ kernels
@pytest.mark.parametrize("k", [1, 5, 40, 200])
def test_select_kernel_is_a_sort_by_value_then_key(k):
    rng = np.random.default_rng(k)
    values = rng.integers(0, 30, size=(3, 300)).astype(np.float32)  # many ties
    keys = rng.permutation(300 * 3).reshape(3, 300).astype(np.int64)
    keys[:, ::7] = -1  # padding, never selected
    kcap, tpb = kernels.shape_for(k)
    for implicit in (False, True):
        given_keys = np.zeros((0, 0), np.int64) if implicit else keys
        out_d = np.zeros((3, k), np.float32)
        out_k = np.zeros((3, k), np.int64)
        kernels.select_kernel(kcap, tpb)[3, tpb](values, given_keys, k, out_d, out_k)
        for row in range(3):
            row_keys = np.arange(300) if implicit else keys[row]
            live = row_keys >= 0
            order = np.lexsort((row_keys[live], values[row][live]))[:k]
            np.testing.assert_array_equal(out_k[row], row_keys[live][order])
            np.testing.assert_array_equal(out_d[row], values[row][live][order])


def test_select_kernel_pads_short_rows():
    values = np.array([[3.0, 1.0, 2.0]], np.float32)
    out_d = np.zeros((1, 5), np.float32)
    out_k = np.zeros((1, 5), np.int64)
    kcap, tpb = kernels.shape_for(5)
    kernels.select_kernel(kcap, tpb)[1, tpb](values, np.zeros((0, 0), np.int64), 5, out_d,
                                             out_k)
    np.testing.assert_array_equal(out_k, [[1, 2, 0, -1, -1]])
    np.testing.assert_array_equal(out_d, [[1, 2, 3, np.inf, np.inf]])


def test_shape_for_takes_the_smallest_capacity():
    assert kernels.shape_for(1)[0] == 16 and kernels.shape_for(17)[0] == 64
    assert kernels.shape_for(kernels.MAX_K)[0] == kernels.MAX_K
    with pytest.raises(ValueError, match="k must be at most 1024 on the GPU, got 1025"):
        kernels.shape_for(kernels.MAX_K + 1)


@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product"])
def test_coarse_probes_and_list_constants_equal_the_engine(data, metric):
    index = _index(data, metric=metric)
    engine = index._engine
    queries = engine.internal(engine.prepare("q", data[1])[0])
    copy = gpu_search.device_lists(engine)
    probes = gpu_search.coarse_probes(engine, copy, cuda.to_device(queries), queries, 5,
                                      1).copy_to_host()
    np.testing.assert_array_equal(probes, engine.coarse_probes(queries, 5, 1))
    consts = np.zeros(probes.shape, np.float32)
    sq_norms = np.zeros(len(queries), np.float32)
    blocks, threads = kernels.grid_2d(*probes.shape)
    kernels.list_constants[blocks, threads](queries, engine.centers, probes,
                                            engine.quantizer.vmin, True, metric == "sqeuclidean",
                                            consts, sq_norms)
    expected_consts, expected_norms = engine.list_constants(queries, probes, 1)
    np.testing.assert_array_equal(consts, expected_consts)
    np.testing.assert_array_equal(sq_norms, expected_norms)


@pytest.mark.parametrize("quantizer", ["sq8", "sq4"])
@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product", "cosine"])
def test_encoding_on_the_device_equals_the_cpu(data, quantizer, metric):
    index = _index(data, metric=metric, quantizer=quantizer)
    engine = index._engine
    rows = engine.prepare("rows", data[0][:300])[0].copy()
    rows[5] = 0.0  # a zero row: cosine side value 0
    labels = engine.assign(rows, 1)
    codes, aux = engine.encode(rows, labels, 1, "cuda")
    expected_codes, expected_aux = engine.encode(rows, labels, 1, "cpu")
    np.testing.assert_array_equal(codes, expected_codes)
    np.testing.assert_array_equal(aux, expected_aux)


@pytest.mark.parametrize("inner_product", [False, True])
def test_assignment_on_the_device_equals_the_cpu(data, inner_product):
    from ivfsq.ivf.kmeans import assign_nearest

    centers = data[0][::50].copy()
    rows = data[0]
    expected = assign_nearest(rows, centers, inner_product=inner_product,
                              return_distances=True)
    found = assign_nearest(rows, centers, inner_product=inner_product, return_distances=True,
                           device="cuda")
    np.testing.assert_array_equal(found[0], expected[0])
    np.testing.assert_allclose(found[1], expected[1], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product"])
def test_build_on_the_device_trains_the_same_index(metric):
    # Well separated clusters: no row is near a tie between two centers, so
    # k-means on the GPU makes the same choices as on the CPU.
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(6, 10)).astype(np.float32) * 20
    base = (centers[rng.integers(0, 6, 300)] + rng.normal(size=(300, 10))).astype(np.float32)
    params = ivf_sq.IndexParams(n_lists=6, metric=metric, kmeans_n_iters=4)
    host = ivf_sq.build(params, base)
    device = ivf_sq.build(params, base, resources=GPU)
    assert device.device == "cuda" and host.device == "cpu"
    np.testing.assert_allclose(device.centers, host.centers, rtol=1e-5, atol=1e-5)
    for name in ("codes", "ids", "aux", "list_sizes"):
        np.testing.assert_array_equal(getattr(device._engine.lists, name),
                                      getattr(host._engine.lists, name), err_msg=name)


def test_hierarchical_kmeans_on_the_device_is_as_good_as_on_the_cpu():
    from ivfsq.ivf.kmeans import HIERARCHICAL_MIN_CLUSTERS, assign_nearest, train_kmeans

    base, _ = make_blobs_lowrank(600, 6, n_queries=1, seed=8)
    n_clusters = HIERARCHICAL_MIN_CLUSTERS

    def inertia(centers):
        return float(assign_nearest(base, centers, return_distances=True)[1].sum())

    host = train_kmeans(base, n_clusters, 1, seed=0)
    device = train_kmeans(base, n_clusters, 1, seed=0, device="cuda")
    assert device.shape == host.shape and np.isfinite(device).all()
    assert inertia(device) <= 1.05 * inertia(host)


def test_build_from_device_data_is_searched_there(data):
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, kmeans_n_iters=4),
                         cuda.to_device(data[0]))
    assert index.device == "cuda"
    params = ivf_sq.SearchParams(n_probes=8)
    distances, neighbors = ivf_sq.search(params, index, data[1], 5)
    truth = ivf_sq.search(params, index, data[1], 5, resources=CPU)
    assert_same_results(truth, (distances, neighbors))


@pytest.mark.parametrize("precise", ["float32", "float16"])
def test_rerank_kernel_equals_the_cpu(data, precise):
    index = _index(data, reorder=True, precise_dtype=precise, metric="cosine")
    engine = index._engine
    prepared = engine.prepare("q", data[1])[0]
    lists = engine.lists
    rng = np.random.default_rng(0)
    rows = rng.choice(lists.size, size=(len(prepared), 30)).astype(np.int64)
    rows[:, -3:] = -1  # padding
    expected = cpu_search._rerank(engine, prepared, rows, 6, lists, engine.kernel_metric, 1)
    copy = gpu_search.device_lists(engine)
    out_d = np.zeros((len(prepared), 6), np.float32)
    out_i = np.zeros((len(prepared), 6), np.int64)
    kcap, tpb = kernels.shape_for(6)
    kernels.rerank_kernel(kcap, tpb)[len(prepared), tpb](
        prepared, copy.precise, copy.half_bits, copy.half_table, rows, copy.ids,
        engine.kernel_metric, 6, out_d, out_i)
    assert_same_results(expected, (out_d, out_i))


# ---------------------------------------------------------- whole searches
CONFIGS = [
    dict(quantizer="sq8", metric="sqeuclidean"),
    dict(quantizer="sq4", metric="inner_product"),
    dict(quantizer="sq8_uniform", metric="cosine", transform="rom"),
    dict(quantizer="sq4_uniform", metric="euclidean", by_residual=False),
    dict(quantizer="sq8", metric="sqeuclidean", reorder=True),
    dict(quantizer="sq4", metric="cosine", reorder=True, precise_dtype="float16"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_search_equals_the_cpu_backend(data, config):
    index = _index(data, **config)
    params = ivf_sq.SearchParams(n_probes=3)
    expected = ivf_sq.search(params, index, data[1], 7, resources=CPU)
    assert_same_results(expected, ivf_sq.search(params, index, data[1], 7, resources=GPU))


def test_one_query_over_many_rows_splits_its_rows_among_blocks(data):
    index = _index(data, n_lists=4)
    engine = index._engine
    _, tpb = kernels.shape_for(10)
    assert gpu_search.n_splits(1, len(index), tpb) > 1
    params = ivf_sq.SearchParams(n_probes=4)
    expected = ivf_sq.search(params, index, data[1][:1], 10, resources=CPU)
    assert_same_results(expected, ivf_sq.search(params, index, data[1][:1], 10, resources=GPU))
    assert engine is index._engine


def test_splits_give_each_query_enough_threads_but_not_too_few_rows():
    kcap, tpb = kernels.SHAPES[2]  # k up to 256: few threads per block
    # A big batch over many rows: split up to MIN_THREADS_PER_QUERY threads.
    assert gpu_search.n_splits(10_000, 1_000_000, tpb) * tpb >= gpu_search.MIN_THREADS_PER_QUERY
    # Few rows: no block gets fewer than MIN_ROWS_PER_THREAD rows a thread.
    rows = 3 * tpb * gpu_search.MIN_ROWS_PER_THREAD
    assert gpu_search.n_splits(10_000, rows, tpb) == 3
    assert gpu_search.n_splits(10_000, 10, tpb) == 1


@pytest.mark.parametrize("config", CONFIGS[:2] + CONFIGS[-1:],
                         ids=lambda c: "-".join(map(str, c.values())))
def test_range_search_equals_the_cpu_backend(data, config):
    index = _index(data, **config)
    params = ivf_sq.SearchParams(n_probes=3)
    queries = data[1]
    # A radius that keeps about 20 rows per query.
    distances = ivf_sq.search(params, index, queries, 20, resources=CPU)[0]
    radius = float(np.median(distances[:, -1]))
    keep = np.ones(len(index), bool)
    keep[::4] = False
    for filter in (None, filters.from_bitset(keep)):
        expected = ivf_sq.range_search(params, index, queries, radius, resources=CPU,
                                       filter=filter)
        found = ivf_sq.range_search(params, index, queries, radius, resources=GPU, filter=filter)
        assert expected[0][-1] > 0
        assert_same_ranges(expected, found, radius, config["metric"] == "inner_product")


def test_filters_equal_the_cpu_backend(data):
    index = _index(data)
    params = ivf_sq.SearchParams(n_probes=4)
    queries = data[1]
    keep = np.zeros(len(index), bool)
    keep[::3] = True
    shared = filters.from_bitset(keep)
    per_query = np.zeros((len(queries), len(index)), bool)
    for row in range(len(queries)):
        per_query[row, row::2] = True
    bitmap = filters.from_bitmap(per_query)
    for filter in (shared, bitmap):
        expected = ivf_sq.search(params, index, queries, 6, resources=CPU, filter=filter)
        found = ivf_sq.search(params, index, queries, 6, resources=GPU, filter=filter)
        assert_same_results(expected, found)
    # A rare filter: few ids pass, the search walks lists until it finds them.
    rare = np.zeros(len(index), bool)
    rare[[3, 400, 650]] = True
    found = ivf_sq.search(params, index, queries, 3, resources=GPU,
                          filter=filters.from_bitset(rare))
    assert sorted(found[1][0].tolist()) == [3, 400, 650]


def test_device_queries_give_device_results_of_their_kind(data):
    index = _index(data)
    params = ivf_sq.SearchParams(n_probes=3)
    expected = ivf_sq.search(params, index, data[1], 5)
    distances, neighbors = ivf_sq.search(params, index, cuda.to_device(data[1]), 5)
    assert cuda.devicearray.is_cuda_ndarray(distances)
    assert cuda.devicearray.is_cuda_ndarray(neighbors)
    assert_same_results(expected, (distances, neighbors))
    # Device output buffers are written in place and returned.
    out_d = cuda.device_array((len(data[1]), 5), np.float32)
    out_i = cuda.device_array((len(data[1]), 5), np.int64)
    found = ivf_sq.search(params, index, data[1], 5, neighbors=out_i, distances=out_d)
    assert found[0] is out_d and found[1] is out_i
    assert_same_results(expected, (out_d, out_i))
    with pytest.raises(ValueError, match=r"neighbors must have shape \(4, 5\), got shape \(4, 6\)"):
        ivf_sq.search(params, index, data[1], 5,
                      neighbors=cuda.device_array((4, 6), np.int64))
    with pytest.raises(TypeError, match="distances must have dtype float32, got dtype float64"):
        ivf_sq.search(params, index, data[1], 5,
                      distances=cuda.device_array((4, 5), np.float64))
    # Range search follows its queries too.
    found = ivf_sq.range_search(params, index, cuda.to_device(data[1]), 5.0)
    assert all(cuda.devicearray.is_cuda_ndarray(array) for array in found)
    assert_same_ranges(ivf_sq.range_search(params, index, data[1], 5.0, resources=CPU),
                       [array.copy_to_host() for array in found], 5.0)


@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product", "cosine", "euclidean"])
def test_refine_on_the_device_equals_the_cpu(data, metric):
    from ivfsq.neighbors import refine

    base, queries = data
    queries = queries.copy()
    queries[0] = 0.0  # a zero query: cosine distance 1 to every row
    rng = np.random.default_rng(1)
    candidates = rng.choice(len(base), size=(len(queries), 25)).astype(np.int64)
    candidates[:, -2:] = -1
    expected = refine(base, queries, candidates, 6, metric=metric)
    assert_same_results(expected, refine(base, queries, candidates, 6, metric=metric,
                                         resources=GPU))
    found = refine(base, cuda.to_device(queries), candidates, 6, metric=metric)
    assert cuda.devicearray.is_cuda_ndarray(found[1])
    assert_same_results(expected, found)
    out_i = cuda.device_array((len(queries), 6), np.int64)
    assert refine(base, queries, candidates, 6, metric=metric, indices=out_i)[1] is out_i
    np.testing.assert_array_equal(out_i.copy_to_host(), expected[1])


def test_index_moves_between_host_and_device(data, tmp_path):
    index = _index(data, reorder=True)
    params = ivf_sq.SearchParams(n_probes=3)
    queries = data[1]
    assert index.device_memory_bytes == 0
    assert index.to_device() is index and index.device == "cuda"
    assert index.device_memory_bytes == gpu_search.device_nbytes(index._engine)
    assert index.device_memory_bytes >= index.memory_bytes - index.memory_breakdown[
        "list_metadata"]
    on_device = ivf_sq.search(params, index, queries, 5)
    assert isinstance(on_device[0], np.ndarray)  # NumPy in, NumPy out
    # extend and remove replace the lists: the new ones go to the device.
    extra = data[0][:20] + np.float32(0.01)
    ivf_sq.extend(index, extra, np.arange(1000, 1020))
    assert ivf_sq.remove(index, np.arange(0, 700, 2)) == 350
    assert gpu_search.device_nbytes(index._engine) > 0
    expected = ivf_sq.search(params, index, queries, 5, resources=CPU)
    assert_same_results(expected, ivf_sq.search(params, index, queries, 5))
    # Saved from the device, loaded onto it again.
    ivf_sq.save(tmp_path / "index.ivfsq", index)
    loaded = ivf_sq.load(tmp_path / "index.ivfsq", resources=GPU)
    assert loaded.device == "cuda"
    assert_same_results(expected, ivf_sq.search(params, loaded, queries, 5))
    assert ivf_sq.from_bytes(index.to_bytes(), resources=GPU).device == "cuda"
    merged = ivf_sq.merge([index, _index(data, reorder=True, add_data_on_build=False)])
    assert merged.device == "cuda" and merged.device_memory_bytes > 0
    assert index.to_host() is index and index.device == "cpu"
    assert index.device_memory_bytes == 0
    np.testing.assert_array_equal(ivf_sq.search(params, index, queries, 5)[1], expected[1])


def test_single_queries_follow_the_index_to_the_device(data, monkeypatch):
    index = _index(data)
    params = ivf_sq.SearchParams(n_probes=3)
    query = data[1][:1]
    expected = ivf_sq.search(params, index, query, 5)  # makes the CPU's one-query runner
    calls = []
    search_block = gpu_search.search_block
    monkeypatch.setattr(gpu_search, "search_block",
                        lambda *args: calls.append(1) or search_block(*args))
    index.to_device()
    assert_same_results(expected, ivf_sq.search(params, index, query, 5))
    assert calls
    index.to_host()
    calls.clear()
    np.testing.assert_array_equal(ivf_sq.search(params, index, query, 5)[1], expected[1])
    assert not calls


def test_extend_with_device_vectors_encodes_them_there(data):
    host = _index(data, add_data_on_build=False)
    device = _index(data, add_data_on_build=False)
    ivf_sq.extend(host, data[0], None)
    ivf_sq.extend(device, cuda.to_device(data[0]), cuda.to_device(np.arange(len(data[0]))))
    np.testing.assert_array_equal(device._engine.lists.codes, host._engine.lists.codes)
    assert device.device == "cpu"  # the index did not move


def test_more_candidates_than_the_kernels_select_run_on_the_cpu_backend(data):
    index = _index(data, n_lists=2, reorder=True)
    params = ivf_sq.SearchParams(n_probes=2, refine_ratio=2.0)
    k = kernels.MAX_K // 2 + 1  # 2k candidates: more than MAX_K
    expected = ivf_sq.search(params, index, data[1][:1], k, resources=CPU)
    for found, wanted in zip(ivf_sq.search(params, index, data[1][:1], k, resources=GPU),
                             expected):
        np.testing.assert_array_equal(found, wanted)


def test_cuda_device_is_refused_clearly_where_it_cannot_run(monkeypatch, data, capsys):
    from ivfsq import cli

    monkeypatch.setattr(cuda_backend, "_unavailable_reason", lambda: "numba-cuda is not installed")
    with pytest.raises(RuntimeError, match=r'device="cuda" needs a CUDA GPU: numba-cuda is not '
                                           r'installed; install the GPU extra'):
        ivf_sq.search(ivf_sq.SearchParams(), _index(data), data[1], 3, resources=GPU)
    with pytest.raises(cuda_backend.DeviceUnavailableError, match="needs a CUDA GPU"):
        _index(data).to_device()
    assert cli.main(["bench", "--n-rows", "600", "--device", "cuda", "--quiet"]) == cli.EXIT_ERROR
    assert 'error: device="cuda" needs a CUDA GPU' in capsys.readouterr().err


def test_cli_bench_runs_on_the_device(tmp_path, capsys):
    import json

    from ivfsq import cli

    out = tmp_path / "bench.jsonl"
    assert cli.main(["bench", "--n-rows", "600", "--dim", "8", "--n-queries", "4",
                     "--n-probes", "2", "--latency-queries", "2", "--kmeans-n-iters", "2",
                     "--device", "cuda", "--quiet", "--out", str(out), "--plot", ""]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["device"] == "cuda" and 0.0 <= record["recall"] <= 1.0
    assert "device cuda" in capsys.readouterr().out


def test_warm_up_on_the_device_is_refused_clearly_where_it_cannot_run(monkeypatch):
    import ivfsq

    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cuda', got 'gpu'"):
        ivfsq.warm_up(device="gpu")
    monkeypatch.setattr(cuda_backend, "_unavailable_reason", lambda: "no CUDA GPU was found")
    with pytest.raises(cuda_backend.DeviceUnavailableError, match="no CUDA GPU was found"):
        ivfsq.warm_up(device="cuda")


@pytest.mark.skipif(SIMULATED, reason="the simulator compiles nothing, and k=1024 is slow there")
def test_nothing_compiles_on_the_device_after_a_warm_up(data):
    import ivfsq

    ivfsq.warm_up(device="cuda")

    def compiled():
        shaped = [factory(kcap, tpb) for factory in (kernels.scan_kernel, kernels.select_kernel,
                                                     kernels.rerank_kernel)
                  for kcap, tpb in kernels.SHAPES]
        plain = [kernels.coarse_scores, kernels.scores_from_dots, kernels.nearest_centers,
                 kernels.list_constants, kernels.encode_rows, kernels.range_rows]
        return sum(len(kernel.overloads) for kernel in shaped + plain)

    before = compiled()
    index = _index(data, reorder=True, quantizer="sq4", metric="cosine")
    index.to_device()
    for k in (1, 10, 100, 500):
        ivf_sq.search(ivf_sq.SearchParams(n_probes=5), index, data[1], k)
    ivf_sq.range_search(ivf_sq.SearchParams(n_probes=5), index, data[1], 0.5)
    assert compiled() == before
