"""Sharded and replicated search on a local Ray cluster against one index.

Trains once, fills 1, 2, 4 shards (and 2 replicas) with the same vectors,
and reports for each: batch QPS, whether the results equal the single
index's, and the driver's peak traced memory during the search. On one
machine the shards share its cores, so this measures the overhead of the
fan-out and merge; across machines each shard brings its own cores and
memory.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_distributed.py --dataset fashion-mnist
"""

import argparse
import os
import tempfile
import time
import tracemalloc

import numpy as np
import ray
from common import RESULTS_DIR, hardware_info, utc_timestamp, write_jsonl

from ivfsq import distributed
from ivfsq.common import Resources
from ivfsq.datasets import find_shared_dataset, load_dataset_dir
from ivfsq.neighbors import ivf_sq


def best_time(call, runs=3):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--n-lists", type=int, default=1024)
    parser.add_argument("--n-probes", type=int, default=8)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = load_dataset_dir(find_shared_dataset(args.dataset))
    base = np.ascontiguousarray(data["base"], dtype=np.float32)
    queries = np.ascontiguousarray(data["queries"][: args.queries], dtype=np.float32)
    params = ivf_sq.IndexParams(n_lists=args.n_lists, metric=data["metric"])
    search = ivf_sq.SearchParams(n_probes=args.n_probes)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    trained = distributed.train(params, base)
    # The one-index baseline starts from the same trained codec: a copy
    # through the index file, instead of training again.
    with tempfile.TemporaryDirectory() as folder:
        ivf_sq.save(os.path.join(folder, "trained.ivfsq"), trained)
        single = ivf_sq.load(os.path.join(folder, "trained.ivfsq"))
    ivf_sq.extend(single, base, np.arange(base.shape[0]))
    resources = Resources(n_threads=args.cpus)
    expected = ivf_sq.search(search, single, queries, 10, resources=resources)
    seconds = best_time(lambda: ivf_sq.search(search, single, queries, 10, resources=resources))
    records = [{"setup": "one index", "shards": 1, "qps": queries.shape[0] / seconds,
                "same_as_one_index": True}]
    print(f"{'one index':<22} {queries.shape[0] / seconds:10,.0f} QPS")
    for mode, n_shards in (("sharded", 1), ("sharded", 2), ("sharded", 4), ("replicated", 2)):
        index = distributed.ShardedIndex.create(trained, n_shards=n_shards, mode=mode)
        parts = (np.array_split(base, n_shards) if mode == "sharded" else [base])
        distributed.extend(index, parts)
        got = distributed.search(search, index, queries, 10)
        same = bool(np.array_equal(got[1], expected[1]))
        seconds = best_time(lambda: distributed.search(search, index, queries, 10,
                                                       batch_size=500))
        tracemalloc.start()
        distributed.search(search, index, queries, 10, batch_size=500)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        name = f"{mode}, {n_shards} actor(s)"
        records.append({"setup": name, "mode": mode, "shards": n_shards,
                        "qps": queries.shape[0] / seconds, "same_as_one_index": same,
                        "driver_peak_mib": peak / 2**20})
        print(f"{name:<22} {queries.shape[0] / seconds:10,.0f} QPS   same ids as one index: "
              f"{same}   driver peak {peak / 2**20:.1f} MiB")
        for actor in index._actors:
            ray.kill(actor)
    ray.shutdown()
    common = {"benchmark": "bench_distributed", "timestamp": utc_timestamp(),
              "dataset": args.dataset, "n_lists": args.n_lists, "n_probes": args.n_probes,
              "queries": int(queries.shape[0]), "cpus": args.cpus, "hardware": hardware_info()}
    write_jsonl(args.out or RESULTS_DIR / f"distributed_{args.dataset}.jsonl",
                [{**common, **record} for record in records])


if __name__ == "__main__":
    main()
