"""Side-by-side benchmark: ivfsq IVF-SQ against FAISS IndexIVFScalarQuantizer.

Both indexes use the same number of lists, the same training rows
(``n_lists * 256``, capped at N), 20 k-means iterations, 8-bit scalar
quantization of the residuals and the same thread count. For every
``n_probes`` the script reports recall@k against the data set's exact
ground truth, batch QPS (warm, best of repeated runs over >= ~1 s) and
single-query latency (p50, one thread). Optionally hnswlib is run too, as
context.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_faiss.py --dataset siftsmall

See benchmarks/README.md for the options.
"""

import argparse

from common import (
    RESULTS_DIR,
    at_recall,
    best_of_rounds,
    default_n_lists,
    format_table,
    hardware_info,
    load_benchmark_data,
    measure,
    parse_int_list,
    time_call,
    utc_timestamp,
    warn_if_busy,
    write_jsonl,
    write_plot,
)
from peers import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    KMEANS_N_ITERS,
    TRAIN_POINTS_PER_LIST,
    TRAIN_SEED,
    build_faiss,
    build_hnswlib,
    build_usearch,
    faiss_bytes_per_vector,
    hnswlib_bytes_per_vector,
    sweep_faiss,
    sweep_hnswlib,
    sweep_usearch,
    training_rows,
    usearch_dtype,
)

from ivfsq.common import Resources
from ivfsq.neighbors import ivf_sq

# --------------------------------------------------------------------------
# command line and data
# --------------------------------------------------------------------------

def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="siftsmall",
                        help="shared data set name (siftsmall, fashion-mnist, pypi-minilm), "
                             "a data set folder, 'synthetic' (100,000 x 96) or 'synthetic:ROWS:DIM' "
                             "(default: siftsmall)")
    parser.add_argument("--n-lists", type=int, default=None,
                        help="inverted lists (default: about 4*sqrt(N), a power of two)")
    parser.add_argument("--n-probes", type=parse_int_list, default=[1, 2, 4, 8, 16, 32, 64],
                        help="comma-separated n_probes values (default: 1,2,4,8,16,32,64)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for build and batch search (default: 2)")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="use only the first N queries (default: all)")
    parser.add_argument("--latency-queries", type=int, default=200,
                        help="queries timed one at a time for latency (default: 200)")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="minimum total time of the repeated batch searches (default: 1.0)")
    parser.add_argument("--out", default=None,
                        help="JSON lines output (default: results/bench_<dataset>.jsonl)")
    parser.add_argument("--plot", default=None,
                        help="recall-vs-QPS plot (default: results/bench_<dataset>.png)")
    parser.add_argument("--no-hnswlib", action="store_true", help="skip hnswlib even if installed")
    parser.add_argument("--no-usearch", action="store_true", help="skip usearch even if installed")
    parser.add_argument("--build-rounds", type=int, default=2,
                        help="builds of each index, alternating ivfsq and FAISS; the fastest of "
                             "each is reported (default: 2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="sweeps of each library, alternating ivfsq and FAISS; the best QPS "
                             "and lowest p50 of the rounds are kept, so a transient load on a "
                             "shared machine hits both libraries alike (default: 2)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------
# ivfsq (the other libraries are in peers.py)
# --------------------------------------------------------------------------

def warm_up_ivfsq(base, metric, threads):
    """A small throwaway build and search, so numba compiles before timing."""
    sample = base[:2000]
    resources = Resources(n_threads=threads)
    params = ivf_sq.IndexParams(n_lists=8, metric=metric, kmeans_n_iters=2)
    index = ivf_sq.build(params, sample, resources=resources)
    ivf_sq.search(ivf_sq.SearchParams(n_probes=2), index, sample[:10], k=5, resources=resources)


def build_ivfsq(base, metric, n_lists, threads):
    """Build the ivfsq index; return ``(index, seconds)``."""
    params = ivf_sq.IndexParams(
        n_lists=n_lists,
        metric=metric,
        kmeans_n_iters=KMEANS_N_ITERS,
        max_train_points_per_cluster=TRAIN_POINTS_PER_LIST,
        seed=TRAIN_SEED,
    )
    resources = Resources(n_threads=threads)
    return time_call(lambda: ivf_sq.build(params, base, resources=resources))


def sweep_ivfsq(index, queries, gt, args, n_probes_values, search_kwargs=None):
    """Measure ivfsq at every n_probes in ``n_probes_values``, with the
    ``SearchParams`` keywords ``search_kwargs`` besides ``n_probes``;
    returns a list of result dicts."""
    # The Resources of the current thread count, made outside the timed
    # calls (as an application keeps one).
    threads = {"resources": Resources(n_threads=args.threads)}
    results = []
    for n_probes in n_probes_values:
        params = ivf_sq.SearchParams(n_probes=n_probes, **(search_kwargs or {}))

        def search_batch():
            return ivf_sq.search(params, index, queries, args.k,
                                 resources=threads["resources"])[1]

        def search_one(i):
            return ivf_sq.search(params, index, queries[i:i + 1], args.k,
                                 resources=threads["resources"])

        def set_threads(n):
            threads["resources"] = Resources(n_threads=n)

        result = measure(search_batch, search_one, set_threads, queries, gt, args)
        result["n_probes"] = n_probes
        results.append(result)
    return results


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------

def print_main_table(ivfsq_results, faiss_results):
    """One row per n_probes comparing ivfsq and FAISS."""
    headers = ["n_probes", "ivfsq recall", "ivfsq QPS", "faiss recall", "faiss QPS",
               "QPS ratio (ivfsq/faiss)", "ivfsq p50 ms", "faiss p50 ms"]
    rows = []
    for ours, theirs in zip(ivfsq_results, faiss_results):
        rows.append([
            str(ours["n_probes"]),
            f"{ours['recall']:.4f}",
            f"{ours['qps']:,.0f}",
            f"{theirs['recall']:.4f}",
            f"{theirs['qps']:,.0f}",
            f"{ours['qps'] / theirs['qps']:.2f}",
            f"{ours['latency_p50_ms']:.3f}",
            f"{theirs['latency_p50_ms']:.3f}",
        ])
    print(format_table(headers, rows))


# The targets compare at every recall level of FAISS's curve from here on.
EQUAL_RECALL_FROM = 0.90


def equal_recall_rows(ivfsq_results, faiss_results):
    """ivfsq at each FAISS operating point's recall (>= EQUAL_RECALL_FROM).

    ivfsq's QPS and p50 latency are interpolated (log scale) between the two
    n_probes values whose recalls bracket FAISS's; None past ivfsq's sweep.
    """
    rows = []
    for theirs in faiss_results:
        if theirs["recall"] < EQUAL_RECALL_FROM:
            continue
        qps = at_recall(ivfsq_results, theirs["recall"], "qps")
        p50 = at_recall(ivfsq_results, theirs["recall"], "latency_p50_ms")
        rows.append({
            "faiss_n_probes": theirs["n_probes"],
            "recall": theirs["recall"],
            "faiss_qps": theirs["qps"],
            "ivfsq_qps": qps,
            "qps_ratio": None if qps is None else qps / theirs["qps"],
            "faiss_p50_ms": theirs["latency_p50_ms"],
            "ivfsq_p50_ms": p50,
            "p50_ratio": None if p50 is None else p50 / theirs["latency_p50_ms"],
        })
    return rows


def print_equal_recall_table(rows):
    headers = ["faiss n_probes", "recall", "faiss QPS", "ivfsq QPS", "QPS ratio",
               "faiss p50 ms", "ivfsq p50 ms", "p50 ratio"]

    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    print(format_table(headers, [[
        str(r["faiss_n_probes"]), f"{r['recall']:.4f}", f"{r['faiss_qps']:,.0f}",
        fmt(r["ivfsq_qps"], ",.0f"), fmt(r["qps_ratio"], ".2f"),
        f"{r['faiss_p50_ms']:.3f}", fmt(r["ivfsq_p50_ms"], ".3f"), fmt(r["p50_ratio"], ".2f"),
    ] for r in rows]))


def print_graph_table(results, name):
    """One row per ef for a graph index."""
    headers = ["ef", f"{name} recall", f"{name} QPS", f"{name} p50 ms"]
    rows = [[str(r["ef"]), f"{r['recall']:.4f}", f"{r['qps']:,.0f}",
             f"{r['latency_p50_ms']:.3f}"] for r in results]
    print(format_table(headers, rows))


def make_records(library, results, common_fields, extra_fields):
    """JSON records, one per result, with the shared fields added."""
    records = []
    for result in results:
        record = dict(common_fields)
        record.update(extra_fields)
        record["library"] = library
        record.update(result)
        records.append(record)
    return records


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    warn_if_busy()
    data = load_benchmark_data(args.dataset, args.max_queries)
    base, queries, gt, metric = data["base"], data["queries"], data["gt"], data["metric"]
    n_rows, dim = base.shape
    if args.k > gt.shape[1]:
        raise SystemExit(f"--k {args.k} exceeds the ground truth depth {gt.shape[1]}")
    n_lists = args.n_lists or default_n_lists(n_rows)
    n_train = len(training_rows(n_rows, n_lists))
    print(f"dataset {data['name']}: base {n_rows} x {dim} ({data['source_dtype']}, given to "
          f"both libraries as float32), {queries.shape[0]} queries, metric {metric}")
    print(f"n_lists {n_lists}, training rows {n_train} (same rows for both), kmeans "
          f"{KMEANS_N_ITERS} iters, k {args.k}, threads {args.threads}, latency on "
          f"{min(args.latency_queries, queries.shape[0])} queries with 1 thread")

    warm_up_ivfsq(base, metric, args.threads)
    # Builds alternate too; the fastest of each is kept (the indexes of the
    # rounds are the same: seeded training on the same rows).
    ivfsq_builds, faiss_builds = [], []
    for _ in range(max(1, args.build_rounds)):
        ivfsq_index, seconds = build_ivfsq(base, metric, n_lists, args.threads)
        ivfsq_builds.append(seconds)
        faiss_index, seconds = build_faiss(base, metric, n_lists, args.threads)
        faiss_builds.append(seconds)
    ivfsq_build_s, faiss_build_s = min(ivfsq_builds), min(faiss_builds)
    print(f"ivfsq build: {ivfsq_build_s:.2f} s, best of "
          f"{', '.join(f'{s:.2f}' for s in ivfsq_builds)} (imbalance "
          f"{ivfsq_index.imbalance_factor:.3f})")
    print(f"faiss build: {faiss_build_s:.2f} s, best of "
          f"{', '.join(f'{s:.2f}' for s in faiss_builds)} (imbalance "
          f"{faiss_index.invlists.imbalance_factor():.3f})")

    ivfsq_rounds, faiss_rounds = [], []
    for _ in range(max(1, args.rounds)):
        ivfsq_rounds.append(sweep_ivfsq(ivfsq_index, queries, gt, args, args.n_probes))
        faiss_rounds.append(sweep_faiss(faiss_index, queries, gt, metric, args,
                                        args.n_probes))
    ivfsq_results = best_of_rounds(ivfsq_rounds)
    faiss_results = best_of_rounds(faiss_rounds)

    hnswlib_results, hnswlib_build_s, hnswlib_bytes = [], None, None
    if args.no_hnswlib:
        print("note: hnswlib skipped (--no-hnswlib)")
    else:
        try:
            import hnswlib
        except ImportError:
            hnswlib = None
            print("note: hnswlib is not installed; skipping it (pip install hnswlib)")
        if hnswlib is not None:
            hnsw_index, hnswlib_build_s = build_hnswlib(hnswlib, base, metric, args.threads)
            hnswlib_results = sweep_hnswlib(hnsw_index, queries, gt, args)
            hnswlib_bytes = hnswlib_bytes_per_vector(hnsw_index, n_rows)
            del hnsw_index

    usearch_results, usearch_build_s, usearch_bytes = [], None, None
    usearch_name = f"usearch-{usearch_dtype(metric)}"
    if args.no_usearch:
        print("note: usearch skipped (--no-usearch)")
    else:
        try:
            import usearch  # noqa: F401
        except ImportError:
            print("note: usearch is not installed; skipping it (pip install usearch)")
        else:
            usearch_index, usearch_build_s = build_usearch(base, metric, args.threads)
            usearch_results = sweep_usearch(usearch_index, queries, gt, args)
            usearch_bytes = usearch_index.memory_usage / n_rows
            del usearch_index

    ivfsq_bytes = ivfsq_index.memory_bytes / n_rows
    faiss_serialized_bytes, faiss_list_bytes = faiss_bytes_per_vector(faiss_index)

    print()
    print(f"ivf-sq results: recall@{args.k}, batch QPS = best of >= 2 runs over >= "
          f"{args.min_seconds:g} s with {args.threads} thread(s), p50 = single-query latency "
          f"with 1 thread; best of {max(1, args.rounds)} alternating round(s)")
    print_main_table(ivfsq_results, faiss_results)
    equal_rows = equal_recall_rows(ivfsq_results, faiss_results)
    print()
    print(f"at equal recall (FAISS's points with recall >= {EQUAL_RECALL_FROM}; ivfsq "
          f"interpolated in log scale between its n_probes; ratios: QPS ivfsq/faiss, higher is "
          f"better; p50 ivfsq/faiss, lower is better):")
    print_equal_recall_table(equal_rows)
    print()
    print(f"build time (train + add): ivfsq {ivfsq_build_s:.2f} s | faiss {faiss_build_s:.2f} s")
    print(f"bytes per vector: ivfsq {ivfsq_bytes:.1f} (index.memory_bytes / N) | faiss "
          f"{faiss_serialized_bytes:.1f} (len(faiss.serialize_index) / N); faiss lists "
          f"only {faiss_list_bytes} (code_size + 8-byte id)")
    if hnswlib_results:
        print()
        print(f"hnswlib (M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}), "
              f"build {hnswlib_build_s:.2f} s, {hnswlib_bytes:.1f} bytes per vector "
              f"(serialized / N):")
        print_graph_table(hnswlib_results, "hnswlib")
    if usearch_results:
        print()
        print(f"{usearch_name} (connectivity={HNSW_M}, expansion_add="
              f"{HNSW_EF_CONSTRUCTION}), build {usearch_build_s:.2f} s, {usearch_bytes:.1f} "
              f"bytes per vector (memory_usage / N):")
        print_graph_table(usearch_results, usearch_name)

    common_fields = {
        "benchmark": "bench_faiss",
        "timestamp": utc_timestamp(),
        "dataset": data["name"],
        "n_rows": n_rows,
        "dim": dim,
        "n_queries": int(queries.shape[0]),
        "metric": metric,
        "k": args.k,
        "threads": args.threads,
        "hardware": hardware_info(),  # load_average_1min is taken at the end of the run
    }
    ivf_fields = {"n_lists": n_lists, "train_rows": n_train, "kmeans_n_iters": KMEANS_N_ITERS}
    records = make_records("ivfsq", ivfsq_results, common_fields, {
        **ivf_fields,
        "build_seconds": ivfsq_build_s,
        "build_seconds_rounds": ivfsq_builds,
        "bytes_per_vector": ivfsq_bytes,
        "bytes_per_vector_method": "index.memory_bytes / N",
        "memory_breakdown": ivfsq_index.memory_breakdown,
        "imbalance_factor": ivfsq_index.imbalance_factor,
        "train_sampling": "internal to ivf_sq.build (seed 0, same rows as faiss)",
    })
    records += make_records("faiss", faiss_results, common_fields, {
        **ivf_fields,
        "index": "IndexIVFScalarQuantizer(QT_8bit, by_residual=True)",
        "build_seconds": faiss_build_s,
        "build_seconds_rounds": faiss_builds,
        "bytes_per_vector": faiss_serialized_bytes,
        "bytes_per_vector_method": "len(faiss.serialize_index(index)) / N",
        "bytes_per_vector_lists_only": faiss_list_bytes,
        "imbalance_factor": faiss_index.invlists.imbalance_factor(),
    })
    records += make_records("hnswlib", hnswlib_results, common_fields, {
        "M": HNSW_M,
        "ef_construction": HNSW_EF_CONSTRUCTION,
        "build_seconds": hnswlib_build_s,
        "bytes_per_vector": hnswlib_bytes,
        "bytes_per_vector_method": "serialized size / N",
    })
    records += make_records(usearch_name, usearch_results, common_fields, {
        "connectivity": HNSW_M,
        "expansion_add": HNSW_EF_CONSTRUCTION,
        "build_seconds": usearch_build_s,
        "bytes_per_vector": usearch_bytes,
        "bytes_per_vector_method": "index.memory_usage / N",
    })
    records += [{**common_fields, "library": "ivfsq_vs_faiss_equal_recall", **row}
                for row in equal_rows]
    out_path = args.out or RESULTS_DIR / f"bench_{data['name']}.jsonl"
    write_jsonl(out_path, records)
    print()
    print(f"{len(records)} records written to {out_path}")

    curves = [("ivfsq", ivfsq_results, "n_probes"), ("faiss IVFSQ8", faiss_results, "n_probes")]
    if hnswlib_results:
        curves.append(("hnswlib", hnswlib_results, "ef"))
    if usearch_results:
        curves.append((usearch_name, usearch_results, "ef"))
    plot_path = args.plot or RESULTS_DIR / f"bench_{data['name']}.png"
    write_plot(plot_path, curves,
               f"{data['name']} ({n_rows} x {dim}, {metric}), n_lists={n_lists}, "
               f"{args.threads} thread(s)")


if __name__ == "__main__":
    main()
