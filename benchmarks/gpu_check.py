"""The GPU backend's device check: one command, a few minutes on one GPU.

    python benchmarks/gpu_check.py [--rows 1000000] [--dim 96] [--queries 10000]
                                   [--out gpu_check.json]

1. Correctness on real-sized data: for several codecs and metrics, the GPU
   backend's results against the CPU backend's on the same index of up to
   200,000 rows (share of equal ids, largest distance difference).
2. Build: the index built on the CPU and built with
   ``Resources(device="cuda")`` (k-means assignments and encoding on the
   GPU), and the recall of each.
3. Search: batch QPS and single-query p50 over an ``n_probes`` sweep with
   recall@10 against exact neighbours; exact search on the GPU (ivfsq's own
   kernels: every row scored, CuPy's GEMM when CuPy is installed) for
   comparison, and cuVS ``ivf_sq`` when cuVS is installed.
4. Bandwidth: the scan kernel's bytes read (codes, ids and side values of
   every probed row) per second, as a fraction of the GPU's peak memory
   bandwidth (memory clock x bus width x 2).

First it times ``ivfsq.warm_up(device="cuda")``, which compiles every GPU
kernel (what a process's first GPU call would wait for).

``--tiny`` runs the same steps on tiny data, without the warm-up: on numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) that checks the script itself
without a GPU.
Prints one JSON object per measurement and writes them all to ``--out``.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from numba import config, cuda  # noqa: E402

from ivfsq.backends.cuda import kernels  # noqa: E402
from ivfsq.backends.cuda import search as gpu_search  # noqa: E402
from ivfsq.common import Resources  # noqa: E402
from ivfsq.data.groundtruth import recall_at_k  # noqa: E402
from ivfsq.datasets import make_blobs_lowrank  # noqa: E402
from ivfsq.neighbors import ivf_sq  # noqa: E402

CPU = Resources(device="cpu")
GPU = Resources(device="cuda")
RESULTS = []


def emit(**record):
    RESULTS.append(record)
    print(json.dumps(record), flush=True)


def timed(function, repeat=1):
    """Best wall time of ``repeat`` calls (each synchronised), and the last result."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        cuda.synchronize()
        start = time.perf_counter()
        result = function()
        cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def device_info():
    device = cuda.get_current_device()
    info = {"simulator": bool(config.ENABLE_CUDASIM), "python": platform.python_version()}
    if not config.ENABLE_CUDASIM:
        clock_khz = device.MEMORY_CLOCK_RATE
        bus_bits = device.GLOBAL_MEMORY_BUS_WIDTH
        info.update(
            name=device.name.decode() if isinstance(device.name, bytes) else str(device.name),
            compute_capability=list(device.compute_capability),
            sms=device.MULTIPROCESSOR_COUNT,
            peak_bandwidth_gbs=2 * clock_khz * 1e3 * bus_bits / 8 / 1e9,
        )
    try:
        import cupy

        info["cupy"] = cupy.__version__
    except ImportError:
        info["cupy"] = None
    return info


def exact_on_gpu(base, queries, k, metric):
    """Exact top-k with ivfsq's kernels (every row a "center"): l2 or ip."""
    base_d = cuda.to_device(base)
    norms = cuda.to_device(np.einsum("ij,ij->i", base, base).astype(np.float32))
    out_i = np.empty((len(queries), k), np.int64)
    kcap, tpb = kernels.shape_for(k)
    step = max(1, (1 << 28) // (4 * len(base)))  # a score block of at most 1 GiB
    for start in range(0, len(queries), step):
        rows = queries[start:start + step]
        scores = cuda.device_array((len(rows), len(base)), np.float32)
        blocks, threads = kernels.grid_2d(len(rows), len(base))
        kernels.coarse_scores[blocks, threads](cuda.to_device(rows), base_d, norms,
                                               metric == "sqeuclidean", scores)
        best_d = cuda.device_array((len(rows), k), np.float32)
        best_i = cuda.device_array((len(rows), k), np.int64)
        kernels.select_kernel(kcap, tpb)[len(rows), tpb](
            scores, cuda.to_device(np.zeros((0, 0), np.int64)), k, best_d, best_i)
        out_i[start:start + len(rows)] = best_i.copy_to_host()
    return out_i


def check_correctness(base, queries, n_lists, n_probes):
    configs = [
        dict(quantizer="sq8", metric="sqeuclidean"),
        dict(quantizer="sq4", metric="inner_product"),
        dict(quantizer="sq8", metric="cosine", reorder=True, precise_dtype="float16"),
    ]
    params = ivf_sq.SearchParams(n_probes=n_probes)
    for config_ in configs:
        index = ivf_sq.build(ivf_sq.IndexParams(n_lists=n_lists, **config_), base)
        d0, i0 = ivf_sq.search(params, index, queries, 10, resources=CPU)
        d1, i1 = ivf_sq.search(params, index, queries, 10, resources=GPU)
        emit(step="correctness", **config_, n_probes=n_probes, queries=len(queries),
             equal_ids=float((i0 == i1).mean()),
             max_distance_difference=float(np.abs(d0 - d1).max()))


def check_build(base, queries, truth, n_lists, n_probes):
    params = ivf_sq.IndexParams(n_lists=n_lists)
    cpu_s, cpu_index = timed(lambda: ivf_sq.build(params, base, resources=CPU))
    gpu_s, gpu_index = timed(lambda: ivf_sq.build(params, base, resources=GPU))
    search = ivf_sq.SearchParams(n_probes=n_probes)
    # k-means on the two devices rounds its sums differently, so the two
    # indexes may differ a little: their recall says whether it matters.
    recalls = {name: recall_at_k(ivf_sq.search(search, index, queries, 10, resources=GPU)[1],
                                 truth, 10)
               for name, index in (("cpu_built", cpu_index), ("gpu_built", gpu_index))}
    emit(step="build", rows=len(base), n_lists=n_lists, cpu_build_s=cpu_s, gpu_build_s=gpu_s,
         n_probes=n_probes, recall_at_10_cpu_built=recalls["cpu_built"],
         recall_at_10_gpu_built=recalls["gpu_built"],
         device_bytes=gpu_search.device_nbytes(gpu_index._engine))
    return gpu_index


def check_search(index, queries, truth, probes_sweep, peak_gbs, repeat):
    engine = index._engine
    copy = gpu_search.device_lists(engine)
    code_bytes = engine.quantizer.code_size + 8 + 4  # codes, id, side value per row
    for n_probes in probes_sweep:
        params = ivf_sq.SearchParams(n_probes=n_probes)
        ivf_sq.search(params, index, queries[:2], 10)  # compiled before the clock
        batch_s, (_, found) = timed(lambda: ivf_sq.search(params, index, queries, 10), repeat)
        singles = []
        for row in range(min(50, len(queries))):
            seconds, _ = timed(lambda: ivf_sq.search(params, index, queries[row:row + 1], 10))
            singles.append(seconds)
        # The scan kernel alone, on the whole batch.
        prepared = engine.prepare("queries", queries)[0]
        block = gpu_search.prepare_block(engine, copy, prepared, n_probes, 1)
        scan_s, _ = timed(lambda: gpu_search.scan_block(engine, copy, block, None, 10, False),
                          repeat)
        rows = int(engine.lists.list_sizes[block.probes.copy_to_host()].sum())
        gbs = rows * code_bytes / scan_s / 1e9
        emit(step="search", n_probes=n_probes, queries=len(queries),
             recall_at_10=recall_at_k(found, truth, 10), batch_qps=len(queries) / batch_s,
             p50_ms=1e3 * float(np.median(singles)), scan_s=scan_s, scan_gbs=gbs,
             scan_bandwidth_fraction=None if peak_gbs is None else gbs / peak_gbs)


def check_exact(base, queries, repeat):
    seconds, _ = timed(lambda: exact_on_gpu(base, queries, 10, "sqeuclidean"), repeat)
    emit(step="exact_gpu_ivfsq_kernels", queries=len(queries), batch_qps=len(queries) / seconds)
    try:
        import cupy
    except ImportError:
        emit(step="exact_gpu_cupy", skipped="CuPy is not installed")
        return
    if config.ENABLE_CUDASIM:
        emit(step="exact_gpu_cupy", skipped="the simulator")
        return
    base_c = cupy.asarray(base)
    norms = (base_c * base_c).sum(1)

    def cupy_exact():
        q = cupy.asarray(queries)
        scores = norms[None, :] - 2 * q @ base_c.T
        part = cupy.argpartition(scores, 10, axis=1)[:, :10]
        return cupy.asnumpy(part)

    cupy_exact()
    seconds, _ = timed(cupy_exact, repeat)
    emit(step="exact_gpu_cupy", queries=len(queries), batch_qps=len(queries) / seconds)


def check_cuvs(base, queries, truth, n_lists, probes_sweep, repeat):
    try:
        from cuvs.neighbors import ivf_sq as cuvs_ivf_sq
    except ImportError as error:
        emit(step="cuvs_ivf_sq", skipped=f"cuVS ivf_sq is not installed ({error})")
        return
    import cupy

    base_c = cupy.asarray(base)
    build_s, index = timed(lambda: cuvs_ivf_sq.build(cuvs_ivf_sq.IndexParams(n_lists=n_lists),
                                                     base_c))
    queries_c = cupy.asarray(queries)
    for n_probes in probes_sweep:
        params = cuvs_ivf_sq.SearchParams(n_probes=n_probes)
        cuvs_ivf_sq.search(params, index, queries_c, 10)
        seconds, (_, found) = timed(lambda: cuvs_ivf_sq.search(params, index, queries_c, 10),
                                    repeat)
        emit(step="cuvs_ivf_sq", n_probes=n_probes, build_s=build_s,
             recall_at_10=recall_at_k(cupy.asnumpy(cupy.asarray(found)), truth, 10),
             batch_qps=len(queries) / seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--n-lists", type=int, default=1024)
    parser.add_argument("--probes", default="8,16,32,64")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny data (600 rows, 4 queries): checks the script on the simulator")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.dim, args.queries, args.n_lists = 600, 12, 4, 8
        args.probes, args.repeat = "2,4", 1
    probes_sweep = [int(p) for p in args.probes.split(",")]
    info = device_info()
    emit(step="device", **info)
    if not args.tiny:
        # Compiling every GPU kernel: what the first GPU call of a process
        # would otherwise wait for (the simulator compiles nothing).
        import ivfsq

        start = time.perf_counter()
        ivfsq.warm_up(device="cuda")
        emit(step="warm_up", seconds=time.perf_counter() - start)
    base, queries = make_blobs_lowrank(args.rows, args.dim, n_queries=args.queries, seed=0)
    start = time.perf_counter()
    truth = exact_on_gpu(base, queries, 10, "sqeuclidean")
    emit(step="ground_truth", seconds=time.perf_counter() - start)
    # Three extra builds: on at most 200,000 rows, to leave time for the rest.
    check_correctness(base[:200_000], queries[:1000], min(args.n_lists, 256),
                      probes_sweep[1 % len(probes_sweep)])
    index = check_build(base, queries, truth, args.n_lists, probes_sweep[-1])
    check_search(index, queries, truth, probes_sweep, info.get("peak_bandwidth_gbs"),
                 args.repeat)
    check_exact(base, queries, args.repeat)
    check_cuvs(base, queries, truth, args.n_lists, probes_sweep, args.repeat)
    with open(args.out, "w") as out:
        json.dump(RESULTS, out, indent=1)


if __name__ == "__main__":
    main()
