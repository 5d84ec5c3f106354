"""Quantizer comparison: ivfsq SQ8/SQ4 variants against FAISS at one n_probes.

For every residual quantizer (``sq8``, ``sq4``, ``sq8_uniform``,
``sq4_uniform``) ivfsq is built without and with a random orthogonal rotation
(``transform="rom"``) and without and with reorder (exact re-ranking of
``ceil(2 * k)`` candidates against float32 vectors). FAISS runs the same codes
(``IndexIVFScalarQuantizer`` with ``QT_8bit``, ``QT_4bit``,
``QT_8bit_uniform``, ``QT_4bit_uniform``, by residual), each also wrapped in
``IndexRefineFlat`` with ``k_factor=2``, plus ``IndexIVFFlat`` as the recall
bar. All indexes share ``n_lists``, the training rows, 20 k-means iterations,
``n_probes`` and the thread count. Each row reports bytes per vector, recall@k
against the exact ground truth, batch QPS (warm) and build time.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_quantizers.py --dataset siftsmall \\
        --n-lists 64 --n-probes 8

See benchmarks/README.md for the options.
"""

import argparse
import dataclasses
import pathlib

import faiss
import numpy as np

# common puts the source tree on sys.path when ivfsq is not installed, so it
# (and peers, which imports it) are imported before the ivfsq modules below.
from common import (
    RESULTS_DIR,
    default_n_lists,
    format_table,
    hardware_info,
    load_benchmark_data,
    measure_batch_qps,
    time_call,
    utc_timestamp,
    warn_if_busy,
    write_jsonl,
)
from peers import (
    KMEANS_N_ITERS,
    TRAIN_POINTS_PER_LIST,
    TRAIN_SEED,
    normalized,
    training_rows,
)

from ivfsq.common import Resources
from ivfsq.datasets import recall_at_k
from ivfsq.neighbors import ivf_sq

QUANTIZERS = ("sq8", "sq4", "sq8_uniform", "sq4_uniform")
FAISS_QUANTIZER_TYPES = {
    "sq8": "QT_8bit",
    "sq4": "QT_4bit",
    "sq8_uniform": "QT_8bit_uniform",
    "sq4_uniform": "QT_4bit_uniform",
}
TRANSFORMS = (None, "rom")
REFINE_RATIO = 2            # ivfsq refine_ratio and FAISS IndexRefineFlat k_factor
PRECISE_DTYPE = "float32"   # ivfsq precise_dtype of reorder indexes
RANGE_STATS = ("minmax", "quantile", "mse")
RANGE_QUANTILES = (0.0001, 0.001, 0.01)
RANGE_SWEEP_QUANTIZERS = ("sq4", "sq4_uniform")
IVF_FLAT = "flat"           # the quantizer name of the FAISS IndexIVFFlat row
RECALL_BAR_TOLERANCE = 0.01  # "SQ4 with reorder within 0.01 of IVF-Flat"
# Errors that mean "this ivfsq does not have that parameter (value) yet" (an
# AttributeError comes from a half-landed feature); the message is printed.
UNSUPPORTED_ERRORS = (TypeError, ValueError, NotImplementedError, AttributeError)


# --------------------------------------------------------------------------
# command line and configurations
# --------------------------------------------------------------------------

def parse_name_list(allowed):
    """An argparse type: a comma-separated list of names from ``allowed``."""
    def parse(text):
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown name(s) {unknown}; expected some of {list(allowed)}")
        return names
    return parse


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="siftsmall",
                        help="as in bench_faiss.py: a shared data set name, a data set "
                             "folder, or 'synthetic' (default: siftsmall)")
    parser.add_argument("--n-lists", type=int, default=None,
                        help="inverted lists, the same for every index (default: about "
                             "4*sqrt(N), a power of two)")
    parser.add_argument("--n-probes", type=int, default=16,
                        help="lists probed per query, one value for all rows (default: 16)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for build and batch search (default: 2)")
    parser.add_argument("--max-queries", type=int, default=2000,
                        help="use only the first N queries (default: 2000)")
    parser.add_argument("--min-seconds", type=float, default=0.5,
                        help="minimum total time of the repeated batch searches (default: 0.5)")
    parser.add_argument("--quantizers", type=parse_name_list(QUANTIZERS),
                        default=list(QUANTIZERS),
                        help="comma-separated quantizers (default: " + ",".join(QUANTIZERS) + ")")
    parser.add_argument("--range-stats", type=parse_name_list(RANGE_STATS), default=[],
                        help="extra sweep for sq4 and sq4_uniform (no rotation, no reorder): "
                             "comma-separated range statistics among minmax,quantile,mse; "
                             "quantile runs range_quantile " +
                             ",".join(map(str, RANGE_QUANTILES)) + " (default: no sweep)")
    parser.add_argument("--no-faiss", action="store_true", help="run ivfsq only")
    parser.add_argument("--out", default=None,
                        help="JSON lines output (default: results/quantizers_<dataset>.jsonl)")
    parser.add_argument("--plot", default=None,
                        help="recall plots (default: results/quantizers_<dataset>.png)")
    return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Config:
    """One index configuration (one row of the table)."""

    library: str                   # "ivfsq" or "faiss"
    quantizer: str                 # a QUANTIZERS name, or IVF_FLAT (FAISS only)
    transform: str = None          # None or "rom" (ivfsq only)
    reorder: bool = False          # exact re-ranking of REFINE_RATIO * k candidates
    range_stat: str = None         # None: the quantizer's default range statistic
    range_quantile: float = None   # only with range_stat == "quantile"

    def range_label(self):
        """``default``, ``minmax``, ``quantile 0.001``, ..."""
        if self.range_stat is None:
            return "default"
        if self.range_stat == "quantile":
            return f"quantile {self.range_quantile:g}"
        return self.range_stat

    def reorder_label(self):
        """``off``, or the candidate factor and the dtype of the re-ranking vectors."""
        return f"x{REFINE_RATIO} f32" if self.reorder else "off"

    def label(self):
        """A short name for notes and plot annotations."""
        parts = [self.library, self.quantizer]
        if self.transform:
            parts.append(self.transform)
        if self.reorder:
            parts.append("reorder")
        if self.range_stat:
            parts.append(self.range_label())
        return " ".join(parts)


def ivfsq_configs(quantizers):
    """Every quantizer x transform x reorder for ivfsq."""
    return [Config("ivfsq", quantizer, transform, reorder)
            for quantizer in quantizers
            for transform in TRANSFORMS
            for reorder in (False, True)]


def range_stat_configs(range_stats):
    """The optional range-statistic sweep: sq4 and sq4_uniform, no rotation or reorder."""
    configs = []
    for quantizer in RANGE_SWEEP_QUANTIZERS:
        for stat in range_stats:
            quantiles = RANGE_QUANTILES if stat == "quantile" else (None,)
            configs += [Config("ivfsq", quantizer, range_stat=stat, range_quantile=quantile)
                        for quantile in quantiles]
    return configs


def faiss_configs(quantizers):
    """FAISS IVF-SQ with and without IndexRefineFlat, then IndexIVFFlat."""
    configs = [Config("faiss", quantizer, reorder=reorder)
               for quantizer in quantizers for reorder in (False, True)]
    return configs + [Config("faiss", IVF_FLAT)]


# --------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------

def measure_search(search_batch, data, args):
    """Recall@k and batch QPS of ``search_batch()`` (returns ids of all queries).

    One untimed search first (warm-up; its ids give the recall), then
    repeated timed searches as in ``common.measure_batch_qps``.
    """
    k = args.k
    neighbors = np.asarray(search_batch())
    result = {"recall": recall_at_k(neighbors[:, :k], data["gt"][:, :k])}
    result.update(measure_batch_qps(search_batch, data["queries"].shape[0], args.min_seconds))
    return result


def ivfsq_index_params(config, metric, n_lists, kmeans_n_iters=KMEANS_N_ITERS):
    """``ivf_sq.IndexParams`` for ``config``.

    Options at their defaults are left out, so the plain ``sq8`` row also
    runs on an ivfsq that lacks the newer parameters; raises TypeError or
    ValueError where this ivfsq lacks a parameter or value.
    """
    options = {"quantizer": config.quantizer}
    if config.transform is not None:
        options["transform"] = config.transform
    if config.reorder:
        options.update(reorder=True, precise_dtype=PRECISE_DTYPE)
    if config.range_stat is not None:
        options["range_stat"] = config.range_stat
    if config.range_quantile is not None:
        options["range_quantile"] = config.range_quantile
    return ivf_sq.IndexParams(
        n_lists=n_lists,
        metric=metric,
        kmeans_n_iters=kmeans_n_iters,
        max_train_points_per_cluster=TRAIN_POINTS_PER_LIST,
        seed=TRAIN_SEED,
        **options,
    )


def ivfsq_search_params(config, n_probes):
    """``ivf_sq.SearchParams``: ``refine_ratio`` only for reorder indexes."""
    if config.reorder:
        return ivf_sq.SearchParams(n_probes=n_probes, refine_ratio=REFINE_RATIO)
    return ivf_sq.SearchParams(n_probes=n_probes)


def warm_up_ivfsq(config, data, resources, n_probes):
    """A small throwaway build and search of ``config``, so numba compiles
    this configuration's kernels before anything is timed."""
    sample = data["base"][:2000]
    params = ivfsq_index_params(config, data["metric"], n_lists=8, kmeans_n_iters=2)
    index = ivf_sq.build(params, sample, resources=resources)
    ivf_sq.search(ivfsq_search_params(config, min(n_probes, 8)), index, sample[:10],
                  k=5, resources=resources)


def run_ivfsq(config, data, n_lists, args):
    """Build and measure one ivfsq configuration; None if this ivfsq lacks it."""
    resources = Resources(n_threads=args.threads)
    try:
        index_params = ivfsq_index_params(config, data["metric"], n_lists)
        search_params = ivfsq_search_params(config, args.n_probes)
        warm_up_ivfsq(config, data, resources, args.n_probes)
    except UNSUPPORTED_ERRORS as error:
        print(f"note: skipping {config.label()}: {type(error).__name__}: {error}")
        return None
    index, build_seconds = time_call(
        lambda: ivf_sq.build(index_params, data["base"], resources=resources))

    def search_batch():
        return ivf_sq.search(search_params, index, data["queries"], args.k,
                             resources=resources)[1]

    result = measure_search(search_batch, data, args)
    result.update({
        "index": repr(index_params),
        "search_params": repr(search_params),
        "range_stat_resolved": getattr(index_params, "range_stat", None),
        "precise_dtype": PRECISE_DTYPE if config.reorder else None,
        "refine_ratio": REFINE_RATIO if config.reorder else None,
        "build_seconds": build_seconds,
        "bytes_per_vector": index.memory_bytes / len(index),
        "bytes_per_vector_method": "index.memory_bytes / N",
        "memory_breakdown": index.memory_breakdown,
    })
    return result


def faiss_index(config, metric, dim, n_lists):
    """An untrained FAISS index for ``config`` and its description.

    IVF-SQ by residual (or IVF-Flat), wrapped in ``IndexRefineFlat`` with
    ``k_factor = REFINE_RATIO`` for reorder. Cosine data is searched as inner
    product on normalised vectors.
    """
    if metric == "sqeuclidean":
        faiss_metric, coarse = faiss.METRIC_L2, faiss.IndexFlatL2(dim)
    else:  # cosine (on normalised vectors) and inner_product
        faiss_metric, coarse = faiss.METRIC_INNER_PRODUCT, faiss.IndexFlatIP(dim)
    if config.quantizer == IVF_FLAT:
        ivf = faiss.IndexIVFFlat(coarse, dim, n_lists, faiss_metric)
        description = "IndexIVFFlat"
    else:
        qtype = FAISS_QUANTIZER_TYPES[config.quantizer]
        ivf = faiss.IndexIVFScalarQuantizer(
            coarse, dim, n_lists, getattr(faiss.ScalarQuantizer, qtype), faiss_metric)
        ivf.by_residual = True
        description = f"IndexIVFScalarQuantizer({qtype}, by_residual=True)"
    ivf.cp.niter = KMEANS_N_ITERS
    ivf.cp.max_points_per_centroid = 1 << 30  # we already sampled: no subsampling
    if not config.reorder:
        return ivf, description
    refine = faiss.IndexRefineFlat(ivf)
    refine.k_factor = REFINE_RATIO
    return refine, f"IndexRefineFlat({description}, k_factor={REFINE_RATIO})"


def run_faiss(config, data, n_lists, args):
    """Build and measure one FAISS configuration.

    Timed build: normalising the base (cosine only), ``train`` on the same
    rows ivfsq samples, and ``add``. For cosine, normalising the queries is
    part of each timed search.
    """
    faiss.omp_set_num_threads(args.threads)
    base, queries, metric = data["base"], data["queries"], data["metric"]
    index, description = faiss_index(config, metric, base.shape[1], n_lists)
    faiss.extract_index_ivf(index).nprobe = min(args.n_probes, n_lists)
    rows = training_rows(base.shape[0], n_lists)

    def prepare(vectors):
        return normalized(vectors) if metric == "cosine" else vectors

    def build():
        vectors = prepare(base)
        index.train(np.ascontiguousarray(vectors[rows]))
        index.add(vectors)

    _, build_seconds = time_call(build)

    def search_batch():
        return index.search(prepare(queries), args.k)[1]

    result = measure_search(search_batch, data, args)
    result.update({
        "index": description,
        "k_factor": REFINE_RATIO if config.reorder else None,
        "build_seconds": build_seconds,
        "bytes_per_vector": len(faiss.serialize_index(index)) / index.ntotal,
        "bytes_per_vector_method": "len(faiss.serialize_index(index)) / N",
    })
    return result


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------

def range_cell(config, result):
    """The range statistic; for the default, also what ivfsq resolved it to."""
    resolved = result.get("range_stat_resolved")
    if config.range_stat is None and resolved is not None:
        return f"default ({resolved})"
    return config.range_label()


def print_results_table(rows, k):
    """One line per measured configuration."""
    headers = ["library", "quantizer", "transform", "reorder", "range", "bytes/vec",
               f"recall@{k}", "QPS", "build s"]
    cells = [[
        config.library,
        config.quantizer,
        config.transform or "none",
        config.reorder_label(),
        range_cell(config, result),
        f"{result['bytes_per_vector']:.1f}",
        f"{result['recall']:.4f}",
        f"{result['qps']:,.0f}",
        f"{result['build_seconds']:.2f}",
    ] for config, result in rows]
    print(format_table(headers, cells))


def print_recall_bar(rows):
    """How far each ivfsq SQ4 reorder row is from FAISS IVF-Flat's recall."""
    flat = [result for config, result in rows if config.quantizer == IVF_FLAT]
    if not flat:
        return
    bar = flat[0]["recall"]
    print(f"recall bar: FAISS IVF-Flat {bar:.4f}; SQ4 with reorder should be within "
          f"{RECALL_BAR_TOLERANCE} of it")
    sq4_reorder = [(config, result) for config, result in rows
                   if config.library == "ivfsq" and config.reorder
                   and config.quantizer.startswith("sq4")]
    if not sq4_reorder:
        print("  (no ivfsq SQ4 reorder configuration was measured)")
    for config, result in sq4_reorder:
        gap = result["recall"] - bar
        verdict = "within" if gap >= -RECALL_BAR_TOLERANCE else "NOT within"
        print(f"  {config.label()}: {result['recall']:.4f} ({gap:+.4f}, {verdict})")


def write_plot(path, rows, title):
    """Recall vs bytes/vector and recall vs QPS scatter plots; skipped without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed; no plot (pip install -e '.[bench]')")
        return
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (by_size, by_speed) = pyplot.subplots(1, 2, figsize=(13, 5.5))
    markers = {("ivfsq", False): "o", ("ivfsq", True): "s",
               ("faiss", False): "^", ("faiss", True): "v"}
    for (library, reorder), marker in markers.items():
        group = [(c, r) for c, r in rows if c.library == library and c.reorder == reorder]
        if not group:
            continue
        label = f"{library}{' + reorder' if reorder else ''}"
        recalls = [r["recall"] for _, r in group]
        by_size.scatter([r["bytes_per_vector"] for _, r in group], recalls,
                        marker=marker, label=label)
        by_speed.scatter(recalls, [r["qps"] for _, r in group], marker=marker, label=label)
        for config, result in group:
            name = config.label().split(" ", 1)[1]
            by_size.annotate(name, (result["bytes_per_vector"], result["recall"]), fontsize=6,
                             textcoords="offset points", xytext=(3, 3))
            by_speed.annotate(name, (result["recall"], result["qps"]), fontsize=6,
                              textcoords="offset points", xytext=(3, 3))
    by_size.set_xscale("log")
    by_size.set_xlabel("bytes per vector (log scale)")
    by_size.set_ylabel("recall@k")
    by_speed.set_yscale("log")
    by_speed.set_xlabel("recall@k")
    by_speed.set_ylabel("queries per second (batch, log scale)")
    for axes in (by_size, by_speed):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    print(f"plot written to {path}")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def run_setup(args, data):
    """The settings every row shares: printed once, stored in every record."""
    n_rows, dim = data["base"].shape
    n_lists = args.n_lists or default_n_lists(n_rows)
    return dict(
        benchmark="bench_quantizers", timestamp=utc_timestamp(),
        dataset=data["name"], n_rows=n_rows, dim=dim, source_dtype=data["source_dtype"],
        n_queries=int(data["queries"].shape[0]), metric=data["metric"], k=args.k,
        n_lists=n_lists, n_probes=args.n_probes, threads=args.threads,
        train_rows=len(training_rows(n_rows, n_lists)), kmeans_n_iters=KMEANS_N_ITERS,
        hardware=hardware_info(),  # library versions; load average before the run
    )


def run_configurations(plan, data, setup, args):
    """Build and measure every configuration of ``plan``, skipping the ones
    this ivfsq lacks; returns ``(config, result)`` pairs."""
    rows = []
    for config in plan:
        run = run_ivfsq if config.library == "ivfsq" else run_faiss
        result = run(config, data, setup["n_lists"], args)
        if result is not None:
            print(f"  {config.label()}: recall {result['recall']:.4f}, "
                  f"{result['qps']:,.0f} QPS, build {result['build_seconds']:.2f} s")
            rows.append((config, result))
    return rows


def main(argv=None):
    args = parse_args(argv)
    warn_if_busy()
    data = load_benchmark_data(args.dataset, args.max_queries)
    if args.k > data["gt"].shape[1]:
        raise SystemExit(f"--k {args.k} exceeds the ground truth depth {data['gt'].shape[1]}")
    setup = run_setup(args, data)
    print(f"dataset {setup['dataset']}: base {setup['n_rows']} x {setup['dim']} "
          f"({setup['source_dtype']}, given as float32), {setup['n_queries']} queries, "
          f"metric {setup['metric']}")
    print(f"n_lists {setup['n_lists']}, n_probes {args.n_probes}, training rows "
          f"{setup['train_rows']}, kmeans {KMEANS_N_ITERS} iters, k {args.k}, threads "
          f"{args.threads}, reorder = {REFINE_RATIO}*k candidates re-ranked exactly "
          f"({PRECISE_DTYPE})")

    plan = ivfsq_configs(args.quantizers) + range_stat_configs(args.range_stats)
    if not args.no_faiss:
        plan += faiss_configs(args.quantizers)
    rows = run_configurations(plan, data, setup, args)

    print()
    print(f"recall@{args.k} at n_probes {args.n_probes}; batch QPS = best of >= 2 warm runs "
          f"over >= {args.min_seconds:g} s with {args.threads} thread(s); bytes/vec: ivfsq "
          f"index.memory_bytes / N, faiss len(serialize_index) / N")
    print_results_table(rows, args.k)
    print()
    print_recall_bar(rows)

    records = [{**setup, **dataclasses.asdict(config), **result} for config, result in rows]
    out_path = args.out or RESULTS_DIR / f"quantizers_{setup['dataset']}.jsonl"
    write_jsonl(out_path, records)
    print()
    print(f"{len(records)} records written to {out_path}")

    plot_path = args.plot or RESULTS_DIR / f"quantizers_{setup['dataset']}.png"
    write_plot(plot_path, rows,
               f"{setup['dataset']} ({setup['n_rows']} x {setup['dim']}, {setup['metric']}), "
               f"n_lists={setup['n_lists']}, n_probes={args.n_probes}, "
               f"{args.threads} thread(s)")


if __name__ == "__main__":
    main()
