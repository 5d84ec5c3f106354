"""Cost of the lifecycle calls on a shared data set: reconstruct, remove,
range_search, tune and merge (and FAISS's range_search beside ours).

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_lifecycle.py --dataset fashion-mnist --n-lists 1024

Prints a table and writes JSON lines (``results/lifecycle_<dataset>.jsonl``
or ``--out``).
"""

import argparse
import time

import numpy as np
from common import RESULTS_DIR, hardware_info, utc_timestamp, write_jsonl

from ivfsq.common import Resources
from ivfsq.datasets import find_shared_dataset, load_dataset_dir
from ivfsq.neighbors import ivf_sq


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--n-lists", type=int, default=1024)
    parser.add_argument("--n-probes", type=int, default=8)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = load_dataset_dir(find_shared_dataset(args.dataset))
    base = np.ascontiguousarray(data["base"], dtype=np.float32)
    queries = np.ascontiguousarray(data["queries"][: args.queries], dtype=np.float32)
    metric = data["metric"]
    resources = Resources(n_threads=args.threads)
    n_rows = base.shape[0]
    records = []

    def record(call, seconds, **fields):
        records.append({"call": call, "seconds": seconds, **fields})
        extra = ", ".join(f"{key} {value:,.4g}" if isinstance(value, float) else
                          f"{key} {value}" for key, value in fields.items())
        print(f"{call:<14} {seconds * 1e3:10.1f} ms   {extra}", flush=True)

    params = ivf_sq.IndexParams(n_lists=args.n_lists, metric=metric)
    index, seconds = timed(lambda: ivf_sq.build(params, base, resources=resources))
    record("build", seconds, rows=n_rows)
    search = ivf_sq.SearchParams(n_probes=args.n_probes)

    ids = np.random.default_rng(0).choice(n_rows, size=10_000, replace=False)
    ivf_sq.reconstruct(index, ids[:10])
    _, seconds = timed(lambda: ivf_sq.reconstruct(index, ids))
    record("reconstruct", seconds, ids=ids.shape[0], us_per_id=seconds / ids.shape[0] * 1e6)

    # The radius: the median distance of the 10th neighbour, so that about
    # ten vectors per query are within it.
    distances, _ = ivf_sq.search(search, index, queries, 10, resources=resources)
    radius = float(np.median(distances[:, -1]))
    ivf_sq.range_search(search, index, queries[:10], radius, resources=resources)
    (offsets, _, _), seconds = timed(
        lambda: ivf_sq.range_search(search, index, queries, radius, resources=resources))
    record("range_search", seconds, queries=queries.shape[0], radius=radius,
           results_per_query=float(offsets[-1] / queries.shape[0]),
           qps=queries.shape[0] / seconds)
    _, seconds = timed(lambda: ivf_sq.search(search, index, queries, 10, resources=resources))
    record("search k=10", seconds, queries=queries.shape[0], qps=queries.shape[0] / seconds)
    try:
        import faiss

        quantizer = faiss.IndexFlatL2(base.shape[1])
        faiss_index = faiss.IndexIVFScalarQuantizer(quantizer, base.shape[1], args.n_lists,
                                                    faiss.ScalarQuantizer.QT_8bit)
        faiss.omp_set_num_threads(args.threads)
        if metric == "sqeuclidean":
            faiss_index.train(base)
            faiss_index.add(base)
            faiss_index.nprobe = args.n_probes
            faiss_index.range_search(queries[:10], radius)
            result, seconds = timed(lambda: faiss_index.range_search(queries, radius))
            record("faiss range", seconds, queries=queries.shape[0],
                   results_per_query=float(result[0][-1] / queries.shape[0]),
                   qps=queries.shape[0] / seconds)
    except ImportError:
        pass

    tune_queries = queries[:200]
    (tuned, points), seconds = timed(
        lambda: ivf_sq.tune(index, tune_queries, target_recall=0.95, k=10,
                            resources=resources))
    record("tune", seconds, queries=tune_queries.shape[0], target=0.95,
           n_probes=tuned.n_probes, points=len(points))

    removed = np.random.default_rng(1).choice(n_rows, size=1000, replace=False)
    count, seconds = timed(lambda: ivf_sq.remove(index, removed))
    record("remove", seconds, ids=int(count), us_per_id=seconds / count * 1e6)
    one = np.setdiff1d(np.arange(n_rows), removed)[:1]
    count, seconds = timed(lambda: ivf_sq.remove(index, one))
    record("remove 1 id", seconds, ids=int(count))

    halves = []
    for start, stop in ((0, n_rows // 2), (n_rows // 2, n_rows)):
        shard = ivf_sq.build(ivf_sq.IndexParams(n_lists=args.n_lists, metric=metric,
                                                add_data_on_build=False), base,
                             resources=resources)
        ivf_sq.extend(shard, base[start:stop], np.arange(start, stop), resources=resources)
        halves.append(shard)
    merged, seconds = timed(lambda: ivf_sq.merge(halves))
    record("merge", seconds, rows=len(merged))

    common = {"benchmark": "bench_lifecycle", "timestamp": utc_timestamp(),
              "dataset": args.dataset, "n_lists": args.n_lists, "n_probes": args.n_probes,
              "threads": args.threads, "hardware": hardware_info()}
    write_jsonl(args.out or RESULTS_DIR / f"lifecycle_{args.dataset}.jsonl",
                [{**common, **entry} for entry in records])


if __name__ == "__main__":
    main()
