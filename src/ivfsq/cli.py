"""The ``ivfsq`` command line.

``ivfsq bench`` builds an index, sweeps ``n_probes`` and prints recall@k
against exact brute force, batch QPS and build time. With no data argument it
runs on built-in synthetic data.
"""

import argparse
import sys
import time

import numpy as np

from ivfsq import __version__

EXAMPLES = """examples:
  ivfsq bench                                   # built-in synthetic data
  ivfsq bench ../shared/data/siftsmall --n-lists 64
  ivfsq bench --n-rows 200000 --dim 128 --n-probes 1,4,16,64
"""


def _int_list(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _parser():
    parser = argparse.ArgumentParser(
        prog="ivfsq",
        description="IVF-SQ approximate nearest-neighbour search.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ivfsq {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command")
    bench = commands.add_parser(
        "bench",
        help="build, search and report recall, QPS and build time",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "data",
        nargs="?",
        help="dataset folder (base.npy, query.npy, gt_<metric>.npy); default: synthetic data",
    )
    bench.add_argument("--n-rows", type=int, default=100_000, help="synthetic rows (default 100000)")
    bench.add_argument("--dim", type=int, default=96, help="synthetic dimension (default 96)")
    bench.add_argument("--n-queries", type=int, default=1000, help="queries (default 1000)")
    bench.add_argument("--metric", default=None, help="metric (default: the dataset's, else sqeuclidean)")
    bench.add_argument("--n-lists", type=int, default=None, help="lists (default ~4*sqrt(n_rows))")
    bench.add_argument(
        "--n-probes", type=_int_list, default=[1, 2, 4, 8, 16, 32], help="comma-separated sweep"
    )
    bench.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    bench.add_argument("--threads", type=int, default=None, help="threads (default: all CPUs)")
    bench.add_argument("--seed", type=int, default=0, help="seed of data and build (default 0)")
    return parser


def _default_n_lists(n_rows):
    return int(max(1, min(n_rows // 39, 2 ** round(np.log2(4 * np.sqrt(n_rows))))))


def _bench(args):
    from ivfsq.common import Resources
    from ivfsq.datasets import brute_force_knn, load_dataset_dir, make_blobs_lowrank, recall_at_k
    from ivfsq.neighbors import ivf_sq

    resources = Resources(n_threads=args.threads) if args.threads else Resources()
    truth = None
    if args.data:
        data = load_dataset_dir(args.data, args.metric)
        base, queries, metric = data["base"], data["queries"], data["metric"]
        queries = np.asarray(queries[: args.n_queries])
        if data["gt"] is not None and data["gt"].shape[1] >= args.k:
            truth = np.asarray(data["gt"][: args.n_queries, : args.k])
        source = f"{data['name']}"
    else:
        metric = args.metric or "sqeuclidean"
        base, queries = make_blobs_lowrank(
            args.n_rows, args.dim, n_queries=args.n_queries, seed=args.seed
        )
        source = "synthetic (low intrinsic dimension)"
    n_rows, dim = base.shape
    print(f"ivfsq {__version__}: {source}, {n_rows} x {dim}, {queries.shape[0]} queries, "
          f"metric {metric}, {resources.n_threads} threads")
    if truth is None:
        start = time.perf_counter()
        _, truth = brute_force_knn(base, queries, args.k, metric)
        print(f"exact ground truth by brute force: {time.perf_counter() - start:.2f} s")
    n_lists = args.n_lists or _default_n_lists(n_rows)
    params = ivf_sq.IndexParams(n_lists=n_lists, metric=metric, seed=args.seed)
    start = time.perf_counter()
    index = ivf_sq.build(params, base, resources=resources)
    build_seconds = time.perf_counter() - start
    print(f"build: {build_seconds:.2f} s, n_lists {n_lists}, imbalance factor "
          f"{index.imbalance_factor:.3f}, {index.memory_bytes / n_rows:.1f} bytes/vector")
    print(f"{'n_probes':>8} {'recall@' + str(args.k):>10} {'QPS':>12} {'ms/query':>10}")
    for n_probes in args.n_probes:
        search_params = ivf_sq.SearchParams(n_probes=n_probes)
        ivf_sq.search(search_params, index, queries[:8], args.k, resources=resources)  # warm
        runs, elapsed = 0, 0.0
        while runs < 2 or elapsed < 0.5:
            start = time.perf_counter()
            _, neighbors = ivf_sq.search(search_params, index, queries, args.k, resources=resources)
            elapsed += time.perf_counter() - start
            runs += 1
        qps = runs * queries.shape[0] / elapsed
        print(f"{n_probes:>8} {recall_at_k(neighbors, truth, args.k):>10.4f} {qps:>12.0f} "
              f"{1000.0 / qps:>10.4f}")
    return 0


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _bench(args)
    except (ValueError, TypeError, OSError) as error:
        if args.debug:
            raise
        print(f"ivfsq: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
