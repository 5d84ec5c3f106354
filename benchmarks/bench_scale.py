"""Scale run: build and search an index over a memory-mapped dataset larger
than the index, reporting peak memory at each stage.

The synthetic base (``make_blobs_lowrank``) is written block by block to a
``.npy`` file, then a fresh process maps it read-only, builds the index from
the mapping (k-means on a sample, then encoding in batches), saves it, and
searches it. Memory is reported two ways, sampled every 50 ms:

- peak anonymous memory (``RssAnon`` in ``/proc/self/status``): what the
  process itself allocated; pages of the mapped file are not in it, since
  the kernel can drop them at any time;
- peak resident set (``VmHWM``), which also counts mapped file pages that
  happened to be resident.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_scale.py --rows 10000000 --dim 96

Writes JSON lines (``results/scale.jsonl`` or ``--out``). Needs Linux (for
``/proc``) and about rows x dim x 4 bytes of free disk.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from common import RESULTS_DIR, hardware_info, utc_timestamp, write_jsonl


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class MemoryPeak:
    """Samples RssAnon every 50 ms; ``peak_gib`` since the last reset."""

    def __init__(self):
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, _status_kib("RssAnon"))

    def reset(self):
        self._peak = _status_kib("RssAnon")

    def peak_gib(self):
        self._peak = max(self._peak, _status_kib("RssAnon"))
        return self._peak / 2**20

    def stop(self):
        self._stop.set()
        self._thread.join()


def generate(path, rows, dim, n_queries, seed):
    """Write the base to ``path`` (.npy) block by block; return the queries."""
    from ivfsq.datasets import make_blobs_lowrank

    base = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    _, queries = make_blobs_lowrank(rows, dim, n_queries=n_queries, seed=seed, out=base)
    base.flush()
    del base
    return queries


def run_stages(args):
    """Build, save, load and search in this process (the child)."""
    from ivfsq.common import Resources
    from ivfsq.datasets import brute_force_knn, recall_at_k
    from ivfsq.neighbors import ivf_sq

    memory = MemoryPeak()
    record = {}
    base = np.load(args.data, mmap_mode="r")
    queries = np.load(args.queries_path)
    resources = Resources(n_threads=args.threads)

    memory.reset()
    start = time.perf_counter()
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=args.n_lists), base, resources=resources)
    record["build_seconds"] = time.perf_counter() - start
    record["build_peak_anon_gib"] = memory.peak_gib()
    record["index_bytes"] = index.memory_bytes
    record["bytes_per_vector"] = index.memory_bytes / base.shape[0]
    record["imbalance_factor"] = index.imbalance_factor

    with tempfile.TemporaryDirectory(dir=os.path.dirname(args.data)) as folder:
        path = os.path.join(folder, "scale.ivfsq")
        start = time.perf_counter()
        ivf_sq.save(path, index, resources=resources)
        record["save_seconds"] = time.perf_counter() - start
        record["file_bytes"] = os.path.getsize(path)
        del index
        memory.reset()
        start = time.perf_counter()
        index = ivf_sq.load(path, mmap=True)
        record["mmap_load_seconds"] = time.perf_counter() - start

        start = time.perf_counter()
        _, truth = brute_force_knn(base, queries, 10)
        record["ground_truth_seconds"] = time.perf_counter() - start
        record["searches"] = []
        for n_probes in args.n_probes:
            params = ivf_sq.SearchParams(n_probes=n_probes)
            ivf_sq.search(params, index, queries[:10], 10, resources=resources)
            start = time.perf_counter()
            _, neighbors = ivf_sq.search(params, index, queries, 10, resources=resources)
            seconds = time.perf_counter() - start
            one = Resources(n_threads=1)
            latencies = []
            for row in range(min(100, queries.shape[0])):
                tick = time.perf_counter()
                ivf_sq.search(params, index, queries[row:row + 1], 10, resources=one)
                latencies.append(time.perf_counter() - tick)
            record["searches"].append({
                "n_probes": n_probes,
                "recall": recall_at_k(neighbors, truth),
                "qps": queries.shape[0] / seconds,
                "latency_p50_ms": float(np.median(latencies) * 1e3),
            })
        record["search_peak_anon_gib"] = memory.peak_gib()
        del index
    record["peak_rss_gib"] = _status_kib("VmHWM") / 2**20
    memory.stop()
    print(json.dumps(record))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--n-lists", type=int, default=2048)
    parser.add_argument("--n-probes", type=lambda text: [int(x) for x in text.split(",")],
                        default=[4, 8, 16, 32])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", default=None,
                        help="where to write the dataset (default: a temporary folder)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--queries-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_stages(args)

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        data = os.path.join(folder, "base.npy")
        queries_path = os.path.join(folder, "queries.npy")
        start = time.perf_counter()
        np.save(queries_path, generate(data, args.rows, args.dim, args.queries, seed=0))
        generate_seconds = time.perf_counter() - start
        print(f"generated {args.rows:,} x {args.dim} float32 "
              f"({args.rows * args.dim * 4 / 2**30:.2f} GiB) in {generate_seconds:.1f} s",
              flush=True)
        command = [sys.executable, __file__, "--child", "--data", data,
                   "--queries-path", queries_path, "--n-lists", str(args.n_lists),
                   "--n-probes", ",".join(map(str, args.n_probes)),
                   "--threads", str(args.threads)]
        child = subprocess.run(command, capture_output=True, text=True, check=False)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            return child.returncode
        record = json.loads(child.stdout.strip().splitlines()[-1])
    record.update({
        "benchmark": "bench_scale", "timestamp": utc_timestamp(), "rows": args.rows,
        "dim": args.dim, "n_lists": args.n_lists, "threads": args.threads,
        "dataset_gib": args.rows * args.dim * 4 / 2**30, "generate_seconds": generate_seconds,
        "hardware": hardware_info(),
    })
    print(json.dumps(record, indent=2))
    write_jsonl(args.out or RESULTS_DIR / "scale.jsonl", [record])
    return 0


if __name__ == "__main__":
    sys.exit(main())
