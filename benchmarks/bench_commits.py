"""Two source trees of ivfsq side by side: build time, batch QPS and p50.

Each round runs one fresh process per tree (alternating, A B A B ...),
which builds an index on the data set, searches a batch at each n_probes
(the best of repeated timed runs) and times single queries on one thread;
the ratios B / A are taken round by round, so drift of the machine's speed
between rounds cancels. Compilation is excluded: a first untimed round per
tree fills numba's disk cache.

    python3 benchmarks/bench_commits.py --a /path/old/src --b src \\
        --dataset fashion-mnist --n-lists 1024 --n-probes 4,16,32 --rounds 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from common import REPO_ROOT, format_table, parse_int_list

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {bench!r})
from common import load_benchmark_data, measure_batch_qps, measure_latency
from ivfsq.common import Resources
from ivfsq.neighbors import ivf_sq

data = load_benchmark_data({dataset!r}, {max_queries!r})
base, queries = data["base"], data["queries"]
params = ivf_sq.IndexParams(n_lists={n_lists}, metric=data["metric"], quantizer={quantizer!r})
start = time.perf_counter()
index = ivf_sq.build(params, base, resources=Resources(n_threads={threads}))
out = {{"build_s": time.perf_counter() - start, "qps": {{}}, "p50_ms": {{}}}}
batch, one = Resources(n_threads={threads}), Resources(n_threads=1)
for n_probes in {n_probes!r}:
    search = ivf_sq.SearchParams(n_probes=n_probes, **{search_kwargs!r})
    ivf_sq.search(search, index, queries, 10, resources=batch)  # warm
    qps = measure_batch_qps(lambda: ivf_sq.search(search, index, queries, 10, resources=batch),
                            len(queries), min_seconds={min_seconds})
    out["qps"][n_probes] = qps["qps"]
    latency = measure_latency(
        lambda i: ivf_sq.search(search, index, queries[i:i + 1], 10, resources=one),
        min({latency_queries}, len(queries)))
    out["p50_ms"][n_probes] = latency["latency_p50_ms"]
print("RESULT " + json.dumps(out))
"""


def run_child(src, args):
    code = CHILD.format(bench=str(REPO_ROOT / "benchmarks"), dataset=args.dataset,
                        max_queries=args.max_queries, n_lists=args.n_lists,
                        quantizer=args.quantizer, threads=args.threads,
                        n_probes=args.n_probes, min_seconds=args.min_seconds,
                        latency_queries=args.latency_queries,
                        search_kwargs={"first_pass_candidates": args.first_pass}
                        if args.first_pass else {})
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{src}: {done.stderr[-2000:]}")
    line = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="source tree A (its src/ folder)")
    parser.add_argument("--b", required=True, help="source tree B (its src/ folder)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--quantizer", default="sq8")
    parser.add_argument("--n-lists", type=int, default=1024)
    parser.add_argument("--n-probes", type=parse_int_list, default=[4, 16, 32])
    parser.add_argument("--max-queries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--first-pass", type=int, default=0,
                        help="first_pass_candidates of the searches (0: no first pass)")
    parser.add_argument("--out", help="JSON lines of every round")
    args = parser.parse_args()
    for src in (args.a, args.b):  # fills the numba cache of each tree
        run_child(src, argparse.Namespace(**{**vars(args), "n_probes": args.n_probes[:1],
                                             "latency_queries": 5, "min_seconds": 0.05}))
    rounds = []
    for _ in range(args.rounds):
        rounds.append((run_child(args.a, args), run_child(args.b, args)))
    if args.out:
        with open(args.out, "a") as file:
            for a, b in rounds:
                file.write(json.dumps({"args": vars(args), "a": a, "b": b}) + "\n")

    def ratios(get):
        return [get(b) / get(a) for a, b in rounds]

    rows = []
    build = ratios(lambda r: r["build_s"])
    rows.append(["build s", f"{statistics.median(r['build_s'] for r, _ in rounds):.2f}",
                 f"{statistics.median(r['build_s'] for _, r in rounds):.2f}",
                 f"{statistics.median(build):.3f}", f"{min(build):.3f}-{max(build):.3f}"])
    for n_probes in args.n_probes:
        key = str(n_probes)
        for figure, unit in (("qps", "batch QPS"), ("p50_ms", "p50 ms")):
            values = ratios(lambda r, f=figure: r[f][key])
            a_med = statistics.median(r[figure][key] for r, _ in rounds)
            b_med = statistics.median(r[figure][key] for _, r in rounds)
            rows.append([f"{unit} @{n_probes}", f"{a_med:,.3f}" if figure == "p50_ms"
                         else f"{a_med:,.0f}", f"{b_med:,.3f}" if figure == "p50_ms"
                         else f"{b_med:,.0f}", f"{statistics.median(values):.3f}",
                         f"{min(values):.3f}-{max(values):.3f}"])
    first_pass = f", first pass {args.first_pass}" if args.first_pass else ""
    print(f"{args.dataset} {args.quantizer}{first_pass}, {args.n_lists} lists, {args.threads} threads, "
          f"{args.rounds} alternating rounds; A={args.a} B={args.b}")
    print(format_table(["figure", "A (median)", "B (median)", "B/A (median)", "B/A range"], rows))


if __name__ == "__main__":
    main()
