"""The ``ivfsq`` command line: build, search, bench, info and gt.

Every command reads vectors from ``.npy`` (memory-mapped), TEXMEX
``.fvecs``/``.bvecs``/``.ivecs``, ann-benchmarks ``.hdf5`` (with h5py) or a
data set folder (``base.npy``, ``query.npy``, ``gt_<metric>.npy``). Errors are
one line on stderr and a non-zero exit status; ``--debug`` shows the
traceback instead.
"""

import argparse
import json
import math
import pathlib
import platform
import sys
import time

import numpy as np

from ivfsq import __version__, codecs
from ivfsq.backends.cuda import DeviceUnavailableError
from ivfsq.metrics import NAMES as METRIC_CHOICES

# Exit statuses.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DATA_HELP = (
    "a .npy, .fvecs, .bvecs or .ivecs file, an ann-benchmarks .hdf5 file, or a data set "
    "folder (base.npy, query.npy, gt_<metric>.npy)"
)

MAIN_EXAMPLES = """examples:
  ivfsq bench                                      # built-in synthetic data
  ivfsq build base.fvecs -o sift.ivfsq --n-lists 1024
  ivfsq search sift.ivfsq queries.fvecs -k 10 --n-probes 16 --gt gt.ivecs
  ivfsq info sift.ivfsq
  ivfsq gt base.fvecs queries.fvecs -k 100 -o gt.npy
  ivfsq warmup                                     # compile every kernel variant now

run 'ivfsq COMMAND --help' for the options of each command.
"""
BUILD_EXAMPLES = """examples:
  ivfsq build base.npy -o index.ivfsq
  ivfsq build ../shared/data/fashion-mnist -o fmnist.ivfsq --n-lists 1024
  ivfsq build emb.npy -o emb.ivfsq --metric cosine --quantizer sq4 --transform rom --reorder
"""
SEARCH_EXAMPLES = """examples:
  ivfsq search index.ivfsq query.npy -k 10 -o result.npy    # also writes result_dist.npy
  ivfsq search index.ivfsq ../shared/data/siftsmall --n-probes 8 --gt ../shared/data/siftsmall
  ivfsq search index.ivfsq test.hdf5 --gt test.hdf5          # ann-benchmarks file
  ivfsq search index.ivfsq query.npy --keep allowed_ids.npy   # only these ids
"""
BENCH_EXAMPLES = """examples:
  ivfsq bench                                   # built-in synthetic data (100,000 x 96)
  ivfsq bench ../shared/data/siftsmall --n-lists 64 --n-probes 1,2,4,8,16
  ivfsq bench --n-rows 200000 --dim 128 --out run.jsonl --plot run.png
"""
INFO_EXAMPLES = """examples:
  ivfsq info index.ivfsq
  ivfsq info index.ivfsq --json
"""
GT_EXAMPLES = """examples:
  ivfsq gt base.npy query.npy -k 100 -o gt.npy                # also writes gt_dist.npy
  ivfsq gt base.bvecs query.bvecs -k 100 --metric sqeuclidean -o gt.ivecs
"""
WARMUP_EXAMPLES = """examples:
  ivfsq warmup                                   # into numba's cache folder
  NUMBA_CACHE_DIR=/cache ivfsq warmup            # e.g. in a container image's build
"""


# Queries searched untimed before `ivfsq search` times its batch.
WARMUP_QUERIES = 10_000


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


# ------------------------------------------------------------------ parsing
def _int_list(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _subcommand(commands, name, help_text, examples):
    return commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_common(parser):
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads (default: every CPU this process may use)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to build and search: cpu (default) or cuda (an NVIDIA GPU; "
                             "needs the gpu extra)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_index_params(parser):
    group = parser.add_argument_group("index parameters (ivf_sq.IndexParams)")
    group.add_argument("--n-lists", type=_positive_int, default=None,
                       help="inverted lists (default: about 4*sqrt(rows), a power of two)")
    group.add_argument("--metric", choices=METRIC_CHOICES, default=None,
                       help="distance (default: the data set's, else sqeuclidean)")
    group.add_argument("--quantizer", default="sq8",
                       choices=codecs.NAMES,
                       help="scalar quantizer (default sq8)")
    group.add_argument("--transform", choices=("rom",), default=None,
                       help="random orthogonal rotation before quantization")
    group.add_argument("--no-residual", action="store_true",
                       help="quantize the vectors, not their residuals to the list center")
    group.add_argument("--range-stat", choices=("minmax", "quantile", "mse"), default=None,
                       help="range statistic (default: minmax for 8 bits, quantile for 4)")
    group.add_argument("--reorder", action="store_true",
                       help="keep a precise copy of the vectors for exact re-ranking")
    group.add_argument("--precise-dtype", choices=("float32", "float16"), default="float32",
                       help="dtype of the precise copy (default float32)")
    group.add_argument("--kmeans-n-iters", type=_positive_int, default=20,
                       help="k-means iterations (default 20)")
    group.add_argument("--max-train-points-per-cluster", type=_positive_int, default=256,
                       help="training rows per list (default 256)")
    group.add_argument("--seed", type=int, default=0, help="seed of sampling and k-means")


def _parser():
    parser = argparse.ArgumentParser(
        prog="ivfsq",
        description="IVF-SQ approximate nearest-neighbour search: build an index from "
                    "vectors, search it, and measure recall, speed and memory.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ivfsq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    build = _subcommand(commands, "build", "build an index from vectors and save it",
                        BUILD_EXAMPLES)
    build.add_argument("data", help=f"the vectors to index: {DATA_HELP}")
    build.add_argument("-o", "--output", required=True, help="index file to write")
    _add_index_params(build)
    _add_common(build)

    search = _subcommand(commands, "search", "search an index; write or check the results",
                         SEARCH_EXAMPLES)
    search.add_argument("index", help="index file written by 'ivfsq build'")
    search.add_argument("queries", help=f"query vectors: {DATA_HELP}")
    search.add_argument("-k", type=_positive_int, default=10, help="neighbours (default 10)")
    search.add_argument("--n-probes", type=_positive_int, default=20,
                        help="lists probed per query (default 20)")
    search.add_argument("--refine-ratio", type=float, default=None,
                        help="candidates per neighbour re-ranked exactly (indexes built "
                             "with --reorder; default 2)")
    search.add_argument("--first-pass-candidates", type=_positive_int, default=None,
                        help="score the probed vectors on 4-bit codes first and keep this "
                             "many per query for the 8-bit codes (8-bit indexes; default: "
                             "no first pass)")
    search.add_argument("-o", "--output", default=None,
                        help="write neighbour ids to this .npy file and distances next to "
                             "it (<name>_dist.npy)")
    search.add_argument("--gt", default=None,
                        help="ground-truth ids (.npy, .ivecs, an .hdf5 file or a data set "
                             "folder): print recall@k")
    search.add_argument("--mmap", action="store_true",
                        help="memory-map the index instead of reading it into memory")
    search.add_argument("--keep", default=None,
                        help="a .npy file of the ids every query may return (integers), or "
                             "a boolean keep-mask over the ids: 1-D for every query, 2-D "
                             "(n_queries, n_ids) per query")
    _add_common(search)

    bench = _subcommand(commands, "bench",
                        "build once, sweep n_probes, report recall, QPS and latency",
                        BENCH_EXAMPLES)
    bench.add_argument("data", nargs="?",
                       help=f"{DATA_HELP}; with none, built-in synthetic data")
    bench.add_argument("--n-rows", type=_positive_int, default=100_000,
                       help="synthetic rows (default 100000)")
    bench.add_argument("--dim", type=_positive_int, default=96,
                       help="synthetic dimension (default 96)")
    bench.add_argument("--n-queries", type=_positive_int, default=1000,
                       help="queries (default 1000)")
    bench.add_argument("--n-probes", type=_int_list, default=[1, 2, 4, 8, 16, 32],
                       help="comma-separated sweep (default 1,2,4,8,16,32)")
    bench.add_argument("-k", type=_positive_int, default=10, help="neighbours (default 10)")
    bench.add_argument("--latency-queries", type=int, default=200,
                       help="queries timed one at a time on one thread (default 200; 0: skip)")
    bench.add_argument("--out", default="ivfsq_bench.jsonl",
                       help="JSON lines to write (default ivfsq_bench.jsonl)")
    bench.add_argument("--plot", default="ivfsq_bench.png",
                       help="recall-vs-QPS plot to write (default ivfsq_bench.png)")
    _add_index_params(bench)
    _add_common(bench)

    info = _subcommand(commands, "info", "describe an index file", INFO_EXAMPLES)
    info.add_argument("index", help="index file written by 'ivfsq build'")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    gt = _subcommand(commands, "gt", "exact k nearest neighbours by brute force",
                     GT_EXAMPLES)
    gt.add_argument("base", help=f"base vectors: {DATA_HELP}")
    gt.add_argument("queries", help=f"query vectors: {DATA_HELP}")
    gt.add_argument("-k", type=_positive_int, default=100, help="neighbours (default 100)")
    gt.add_argument("--metric", choices=METRIC_CHOICES, default="sqeuclidean",
                    help="distance (default sqeuclidean)")
    gt.add_argument("-o", "--output", required=True,
                    help="ids to write: .npy (distances go to <name>_dist.npy) or .ivecs")
    gt.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    gt.add_argument("--quiet", action="store_true", help="no progress output")

    warmup = _subcommand(
        commands, "warmup",
        "compile every kernel variant into numba's cache, so that no later call waits for "
        "compilation (an installed package has them already, for the CPU and numba it "
        "was built with)", WARMUP_EXAMPLES)
    warmup.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    warmup.add_argument("--quiet", action="store_true", help="no progress output")
    # For the package build (setup.py): list the compiled files beside the
    # sources, for caches kept elsewhere (see ivfsq._numba_cache).
    warmup.add_argument("--manifest", action="store_true", help=argparse.SUPPRESS)
    # For the package build: part I of N of the work, for N processes.
    warmup.add_argument("--part", default="0/1", help=argparse.SUPPRESS)
    return parser


# ----------------------------------------------------------------- helpers
def _resources(args):
    from ivfsq.common import Resources

    return Resources(n_threads=args.threads, device=args.device)


def default_n_lists(n_rows):
    """About ``4 * sqrt(n_rows)`` lists, a power of two, with >= 39 rows per list."""
    return int(max(1, min(n_rows // 39, 2 ** round(math.log2(4 * math.sqrt(n_rows))))))


def _load(path, role):
    """A data set dict (see ivfsq.datasets.load_data) for a command argument."""
    from ivfsq.datasets import load_data

    if not pathlib.Path(path).exists():
        raise UserError(f"{role}: no such file or folder: {path}")
    return load_data(path)


def _base_of(path):
    data = _load(path, "data")
    return data["base"], data["metric"], data["name"]


def _queries_of(path):
    data = _load(path, "queries")
    if data["queries"] is not None:
        return data["queries"]
    return data["base"]  # a plain vector file holds the queries themselves


def _ground_truth_of(path):
    from ivfsq.datasets import load_vectors, read_texmex

    target = pathlib.Path(path)
    if not target.exists():
        raise UserError(f"--gt: no such file or folder: {path}")
    if target.is_dir() or target.suffix.lower() in (".hdf5", ".h5"):
        data = _load(path, "--gt")
        if data["gt"] is None:
            raise UserError(f"--gt: {path} holds no ground truth")
        return np.asarray(data["gt"])
    if target.suffix.lower() == ".ivecs":
        return np.asarray(read_texmex(target))
    ids = np.asarray(load_vectors(target))
    if ids.dtype.kind not in "iu":
        raise UserError(f"--gt: {path} must hold integer ids, got dtype {ids.dtype}")
    return ids


def _index_params(args, metric):
    """IndexParams keywords from the command-line options."""
    return dict(
        n_lists=args.n_lists,
        metric=metric,
        quantizer=args.quantizer,
        transform=args.transform,
        by_residual=not args.no_residual,
        range_stat=args.range_stat,
        reorder=args.reorder,
        precise_dtype=args.precise_dtype,
        kmeans_n_iters=args.kmeans_n_iters,
        max_train_points_per_cluster=args.max_train_points_per_cluster,
        seed=args.seed,
    )


def _optional(module, purpose):
    """``module``, which only the command line uses (the ``cli`` extra), or
    None after a note on stderr naming the extra when it is not installed."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"ivfsq: {purpose} needs {module.split('.')[0]}, which is not installed "
              f"(pip install 'ivfsq[cli]'); going on without", file=sys.stderr)
        return None


class _ProgressBars:
    """rich progress bars fed by ivfsq's progress reports (one bar per stage)."""

    def __init__(self, enabled):
        self.enabled = enabled and sys.stderr.isatty()
        self.progress = None
        self.tasks = {}

    def __enter__(self):
        if not self.enabled:
            return self
        progress = _optional("rich.progress", "showing progress bars")
        if progress is None:
            return self
        self.progress = progress.Progress(
            progress.TextColumn("{task.description:<32}"), progress.BarColumn(),
            progress.TextColumn("{task.percentage:>5.1f} %"), progress.TimeElapsedColumn(),
            transient=False,
        )
        self.progress.start()
        return self

    def __call__(self, stage, done, total):
        if self.progress is None:
            return
        task = self.tasks.get(stage)
        if task is None:
            task = self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False

    def reporting(self):
        from ivfsq._progress import reporting

        return reporting(self)


def _build_index(args, base, metric):
    from ivfsq.neighbors import ivf_sq

    fields = _index_params(args, metric)
    if fields["n_lists"] is None:
        fields["n_lists"] = default_n_lists(base.shape[0])
    params = ivf_sq.IndexParams(**fields)
    resources = _resources(args)
    bars = _ProgressBars(not args.quiet)
    start = time.perf_counter()
    with bars, bars.reporting():
        index = ivf_sq.build(params, base, resources=resources)
    return index, time.perf_counter() - start


def _summary_lines(index, seconds):
    n_rows = len(index)
    return [
        f"vectors          {n_rows:,}",
        f"dimension        {index.dim}",
        f"lists            {index.n_lists} (imbalance factor {index.imbalance_factor:.3f})",
        f"quantizer        {index.quantizer}, metric {index.metric}",
        f"bytes per vector {index.memory_bytes / max(1, n_rows):.1f} "
        f"({index.memory_bytes / 2**20:.1f} MiB in all)",
        f"build time       {seconds:.2f} s",
    ]


# ----------------------------------------------------------------- commands
def _cmd_build(args):
    from ivfsq.neighbors import ivf_sq

    base, data_metric, name = _base_of(args.data)
    metric = args.metric or data_metric or "sqeuclidean"
    print(f"building from {name}: {base.shape[0]:,} x {base.shape[1]} ({base.dtype}), "
          f"metric {metric}", file=sys.stderr)
    index, seconds = _build_index(args, base, metric)
    bars = _ProgressBars(not args.quiet)
    start = time.perf_counter()
    with bars, bars.reporting():
        ivf_sq.save(args.output, index)
    write_seconds = time.perf_counter() - start
    for line in _summary_lines(index, seconds):
        print(line)
    print(f"written          {args.output} ({pathlib.Path(args.output).stat().st_size:,} "
          f"bytes, {write_seconds:.2f} s)")
    return EXIT_OK


def _cmd_search(args):
    from ivfsq.datasets import recall_at_k
    from ivfsq.neighbors import ivf_sq

    index = _load_index(args.index, mmap=args.mmap)
    queries = _queries_of(args.queries)
    if queries.ndim != 2 or queries.shape[1] != index.dim:
        raise UserError(f"queries have dimension {queries.shape[-1]} but the index has "
                        f"dimension {index.dim}")
    params = ivf_sq.SearchParams(n_probes=args.n_probes, refine_ratio=args.refine_ratio,
                                 first_pass_candidates=args.first_pass_candidates)
    truth = None
    if args.gt is not None:
        truth = _ground_truth_of(args.gt)
        if truth.ndim != 2 or truth.shape[0] < queries.shape[0] or truth.shape[1] < args.k:
            raise UserError(f"--gt must hold at least ({queries.shape[0]}, {args.k}) ids, got "
                            f"shape {truth.shape}")
    resources = _resources(args)
    queries = np.asarray(queries)
    keep = None if args.keep is None else _keep_filter(args.keep, index, queries.shape[0])
    # An untimed search first loads the compiled kernels of the path this batch
    # takes (it depends on the batch size), so the timing is of the search.
    if keep is None or not keep.per_query:
        ivf_sq.search(params, index, queries[:WARMUP_QUERIES], args.k, resources=resources,
                      filter=keep)
    start = time.perf_counter()
    distances, neighbors = ivf_sq.search(params, index, queries, args.k, resources=resources,
                                         filter=keep)
    seconds = time.perf_counter() - start
    n_queries = queries.shape[0]
    print(f"searched {n_queries:,} queries, k={args.k}, n_probes={args.n_probes}: "
          f"{seconds:.3f} s ({n_queries / max(seconds, 1e-9):,.0f} QPS)")
    if truth is not None:
        value = recall_at_k(neighbors, truth[:n_queries], args.k)
        print(f"recall@{args.k} {value:.4f}")
    if args.output is not None:
        ids_path, dist_path = _output_paths(args.output)
        np.save(ids_path, neighbors)
        np.save(dist_path, distances)
        print(f"written {ids_path} (ids) and {dist_path} (distances)")
    return EXIT_OK


def _keep_filter(path, index, n_queries):
    """The filter of ``--keep``: ids (integers), or a 1-D or 2-D keep-mask."""
    from ivfsq.neighbors import filters

    if not pathlib.Path(path).is_file() or pathlib.Path(path).suffix.lower() != ".npy":
        raise UserError(f"--keep must name a .npy file, got {path}")
    try:
        keep = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise UserError(f"--keep: cannot read {path}: {error}") from None
    if keep.dtype == np.bool_:
        if keep.ndim == 2:
            if keep.shape[0] != n_queries:
                raise UserError(f"--keep: a 2-D mask needs one row per query ({n_queries}), "
                                f"got shape {keep.shape}")
            return filters.from_bitmap(keep)
        if keep.ndim == 1:
            return filters.from_bitset(keep)
    elif keep.dtype.kind in "iu" and keep.ndim == 1:
        if keep.size and (int(keep.min()) < 0 or int(keep.max()) >= index.next_id):
            raise UserError(f"--keep: ids must be in [0, {index.next_id}), got "
                            f"{int(keep.min())} to {int(keep.max())}")
        mask = np.zeros(index.next_id, dtype=bool)
        mask[keep] = True
        return filters.from_bitset(mask)
    raise UserError(f"--keep must hold 1-D integer ids or a 1-D or 2-D boolean mask, got "
                    f"dtype {keep.dtype} and shape {keep.shape}")


def _output_paths(output):
    path = pathlib.Path(output)
    if path.suffix.lower() != ".npy":
        raise UserError(f"-o must name a .npy file, got {output}")
    return path, path.with_name(path.stem + "_dist.npy")


def _load_index(path, mmap=False):
    from ivfsq.neighbors import ivf_sq

    if not pathlib.Path(path).is_file():
        raise UserError(f"index: no such file: {path}")
    return ivf_sq.load(path, mmap=mmap)


def _cmd_info(args):
    from ivfsq.io import format as _format
    from ivfsq.neighbors import ivf_sq

    if not pathlib.Path(args.index).is_file():
        raise UserError(f"index: no such file: {args.index}")
    header, arrays = _format.read_index_file(args.index, mmap=True)
    index = ivf_sq.index_from_file_contents(args.index, header, arrays)
    sizes = np.asarray(index.list_sizes)
    params = {name: getattr(index.index_params, name) for name in _param_names()}
    description = {
        "file": str(args.index),
        "file_bytes": pathlib.Path(args.index).stat().st_size,
        "container_format_version": _format.FORMAT_VERSION,
        "index_layout_version": header.get("index_version", 1),
        "size": len(index),
        "dim": index.dim,
        "n_lists": index.n_lists,
        "metric": index.metric,
        "quantizer": index.quantizer,
        "params": params,
        "imbalance_factor": index.imbalance_factor,
        "bytes_per_vector": index.memory_bytes / max(1, len(index)),
        "memory_bytes": index.memory_bytes,
        "memory_breakdown": index.memory_breakdown,
        "list_sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                       "mean": float(sizes.mean()), "max": int(sizes.max()),
                       "empty": int(np.count_nonzero(sizes == 0))},
    }
    if args.json:
        print(json.dumps(description, indent=2, default=_json_default))
        return EXIT_OK
    print(f"file               {description['file']} ({description['file_bytes']:,} bytes)")
    print(f"format             container v{_format.FORMAT_VERSION}, index layout "
          f"v{description['index_layout_version']}")
    print(f"vectors            {len(index):,} x {index.dim}, metric {index.metric}, "
          f"quantizer {index.quantizer}")
    print(f"lists              {index.n_lists}, imbalance factor {index.imbalance_factor:.3f}")
    print("parameters         " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
    print(f"memory             {index.memory_bytes:,} bytes "
          f"({description['bytes_per_vector']:.1f} per vector)")
    for part, nbytes in index.memory_breakdown.items():
        print(f"  {part:<16} {nbytes:>14,}")
    stats = description["list_sizes"]
    print(f"list sizes         min {stats['min']}, median {stats['median']:g}, mean "
          f"{stats['mean']:.1f}, max {stats['max']}, empty {stats['empty']}")
    for line in _histogram(sizes):
        print("  " + line)
    return EXIT_OK


def _param_names():
    return ("n_lists", "metric", "kmeans_n_iters", "max_train_points_per_cluster",
            "quantizer", "by_residual", "range_stat", "transform", "reorder",
            "precise_dtype", "seed")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _histogram(sizes, bins=10, width=40):
    """Text histogram of list sizes."""
    if sizes.size == 0:
        return []
    counts, edges = np.histogram(sizes, bins=min(bins, max(1, int(sizes.max()) + 1)))
    peak = max(1, int(counts.max()))
    lines = []
    for count, low, high in zip(counts, edges[:-1], edges[1:]):
        bar = "#" * max(1 if count else 0, round(width * count / peak))
        lines.append(f"{low:>9.0f} - {high:<9.0f} {count:>7} {bar}")
    return lines


def _cmd_gt(args):
    from ivfsq.datasets import brute_force_knn

    base, _, _ = _base_of(args.base)
    queries = _queries_of(args.queries)
    if queries.shape[1] != base.shape[1]:
        raise UserError(f"queries have dimension {queries.shape[1]} but the base has "
                        f"dimension {base.shape[1]}")
    if args.k > base.shape[0]:
        raise UserError(f"-k must be at most the number of base vectors ({base.shape[0]}), "
                        f"got {args.k}")
    output = pathlib.Path(args.output)
    if output.suffix.lower() not in (".npy", ".ivecs"):
        raise UserError(f"-o must name a .npy or .ivecs file, got {args.output}")
    start = time.perf_counter()
    distances, ids = brute_force_knn(base, np.asarray(queries), args.k, args.metric)
    seconds = time.perf_counter() - start
    if output.suffix.lower() == ".ivecs":
        if base.shape[0] > np.iinfo(np.int32).max:
            raise UserError("-o .ivecs holds int32 ids; the base has too many rows, use .npy")
        record = np.empty((ids.shape[0], ids.shape[1] + 1), dtype="<i4")
        record[:, 0] = ids.shape[1]
        record[:, 1:] = ids
        record.tofile(output)
        print(f"written {output} ({ids.shape[0]} x {ids.shape[1]} ids)")
    else:
        np.save(output, ids)
        dist_path = output.with_name(output.stem + "_dist.npy")
        np.save(dist_path, distances)
        print(f"written {output} (ids) and {dist_path} (distances)")
    if not args.quiet:
        print(f"exact {args.k}-NN of {queries.shape[0]:,} queries over {base.shape[0]:,} "
              f"vectors ({args.metric}) in {seconds:.2f} s")
    return EXIT_OK


def _cmd_bench(args):
    from ivfsq.datasets import brute_force_knn, make_blobs_lowrank, recall_at_k
    from ivfsq.neighbors import ivf_sq

    truth = None
    if args.data:
        data = _load(args.data, "data")
        base, metric, name = data["base"], args.metric or data["metric"], data["name"]
        metric = metric or "sqeuclidean"
        if data["queries"] is None:
            raise UserError(f"bench needs queries: {args.data} holds only base vectors (use a "
                            f"data set folder or an .hdf5 file)")
        queries = np.asarray(data["queries"][: args.n_queries])
        gt = data["gt"]
        same_metric = args.metric is None or args.metric == data["metric"]
        if gt is not None and gt.shape[1] >= args.k and same_metric:
            truth = np.asarray(gt[: args.n_queries, : args.k])
    else:
        metric = args.metric or "sqeuclidean"
        base, queries = make_blobs_lowrank(args.n_rows, args.dim, n_queries=args.n_queries,
                                           seed=args.seed)
        name = f"synthetic-{args.n_rows}x{args.dim}"
    n_rows, dim = base.shape
    resources = _resources(args)
    print(f"ivfsq {__version__}: {name}, {n_rows:,} x {dim}, {queries.shape[0]:,} queries, "
          f"metric {metric}, {resources.n_threads} threads, device {args.device}")
    if truth is None:
        start = time.perf_counter()
        _, truth = brute_force_knn(base, queries, args.k, metric)
        print(f"exact ground truth by brute force: {time.perf_counter() - start:.2f} s")
    index, build_seconds = _build_index(args, base, metric)
    for line in _summary_lines(index, build_seconds):
        print(line)
    single = _resources_single(args)
    rows = []
    print(f"{'n_probes':>8} {'recall@' + str(args.k):>10} {'QPS':>12} {'p50 ms':>10}")
    for n_probes in args.n_probes:
        params = ivf_sq.SearchParams(n_probes=n_probes)
        # Untimed first: loads the compiled kernels of the path this batch size
        # takes (with 8 queries instead, a fresh install timed 1 and 4 probes
        # at a few hundred QPS, kernel loading included).
        ivf_sq.search(params, index, queries[:WARMUP_QUERIES], args.k, resources=resources)
        runs, elapsed = 0, 0.0
        while runs < 2 or elapsed < 0.5:
            start = time.perf_counter()
            _, neighbors = ivf_sq.search(params, index, queries, args.k, resources=resources)
            elapsed += time.perf_counter() - start
            runs += 1
        qps = runs * queries.shape[0] / elapsed
        p50 = None
        if args.latency_queries > 0:
            latencies = []
            for query in queries[: args.latency_queries]:
                start = time.perf_counter()
                ivf_sq.search(params, index, query[None], args.k, resources=single)
                latencies.append(time.perf_counter() - start)
            p50 = 1000.0 * float(np.median(latencies))
        value = recall_at_k(neighbors, truth, args.k)
        rows.append({"n_probes": n_probes, "recall": value, "qps": qps, "latency_p50_ms": p50})
        p50_text = "-" if p50 is None else f"{p50:.3f}"
        print(f"{n_probes:>8} {value:>10.4f} {qps:>12,.0f} {p50_text:>10}")
    record_base = {
        "tool": "ivfsq bench", "version": __version__, "dataset": name, "n_rows": n_rows,
        "dim": dim, "n_queries": int(queries.shape[0]), "metric": metric, "k": args.k,
        "threads": resources.n_threads, "device": args.device, "build_seconds": build_seconds,
        "bytes_per_vector": index.memory_bytes / n_rows,
        "index_params": {key: getattr(index.index_params, key) for key in _param_names()},
        "imbalance_factor": index.imbalance_factor,
        "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                     "python": platform.python_version()},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps({**record_base, **row}, default=_json_default) + "\n")
        print(f"written {args.out} ({len(rows)} JSON lines)")
    if args.plot:
        _plot(args.plot, rows, f"ivfsq on {name} ({n_rows:,} x {dim}, {metric}), "
                               f"n_lists={index.n_lists}")
    return EXIT_OK


def _resources_single(args):
    from ivfsq.common import Resources

    return Resources(n_threads=1, device=args.device)


def _plot(path, rows, title):
    matplotlib = _optional("matplotlib", f"writing the plot {path}")
    if matplotlib is None:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot([r["recall"] for r in rows], [r["qps"] for r in rows], marker="o", label="ivfsq")
    for row in rows:
        axes.annotate(str(row["n_probes"]), (row["recall"], row["qps"]), fontsize=7,
                      textcoords="offset points", xytext=(3, 3))
    axes.set_yscale("log")
    axes.set_xlabel("recall@k")
    axes.set_ylabel("queries per second (batch, log scale)")
    axes.set_title(title, fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"written {path} (recall against QPS; labels are n_probes)")


def _cmd_warmup(args):
    from ivfsq.warmup import warm_up

    start = time.perf_counter()

    def progress(step):
        if not args.quiet:
            print(f"[{time.perf_counter() - start:6.1f} s] {step}", flush=True)

    try:
        part, parts = (int(number) for number in args.part.split("/"))
    except ValueError:
        part, parts = -1, 0
    if not 0 <= part < parts:
        raise UserError(f"--part must be I/N with 0 <= I < N, got {args.part!r}")
    warm_up(progress=progress, _part=(part, parts))
    if parts > 1:
        print(f"part {part} of {parts} is compiled ({time.perf_counter() - start:.1f} s)")
        return 0
    print(f"every kernel variant is compiled ({time.perf_counter() - start:.1f} s)")
    if args.manifest:
        from ivfsq import _numba_cache

        listed = _numba_cache.write_manifests(*_numba_cache.ivfsq_sources())
        print(f"the manifests list {listed} compiled files")
    return 0


COMMANDS = {
    "build": _cmd_build,
    "search": _cmd_search,
    "bench": _cmd_bench,
    "info": _cmd_info,
    "gt": _cmd_gt,
    "warmup": _cmd_warmup,
}


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("ivfsq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ValueError, TypeError, OSError, ImportError,
            DeviceUnavailableError) as error:
        if args.debug:
            raise
        message = str(error) or type(error).__name__
        print(f"ivfsq {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
