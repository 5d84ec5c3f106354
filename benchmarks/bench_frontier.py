"""The side-by-side comparison of ivfsq against the best CPU indexes, in one run.

For each data set, every library is built and swept over its search knob:
ivfsq (the configurations of ``IVFSQ_CONFIGS``, over ``n_probes``), FAISS
``IndexIVFScalarQuantizer`` (8 bits, the same lists), ScaNN (a tree of the
same number of leaves, 4-bit anisotropic hashing, exact re-ranking of 40 or
100 candidates, over ``leaves_to_search``), hnswlib, FAISS ``IndexHNSWSQ``
and usearch (over ef). Each point is recall@10 against the exact ground
truth, batch QPS with ``--threads`` threads and single-query p50/p90 with
one thread (``common.measure``). The report gives, at recall@10 0.90, 0.95
and 0.99, each library's best configuration (interpolated QPS, its p50,
build time, bytes per vector) and the ratios ivfsq / best peer.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_frontier.py
    PYTHONPATH=src python benchmarks/bench_frontier.py --quick --datasets siftsmall

See benchmarks/README.md for what is measured and how long it takes.
"""

import argparse
import dataclasses
import importlib
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable

import peers
from bench_faiss import sweep_ivfsq
from common import (
    REPO_ROOT,
    DatasetNotFoundError,
    at_recall,
    best_of_rounds,
    format_table,
    hardware_info,
    load_benchmark_data,
    pareto_frontier,
    utc_timestamp,
    warn_if_busy,
    write_jsonl,
    write_plot,
)

from ivfsq.common import Resources
from ivfsq.neighbors import ivf_sq


def compact_n_lists(n_rows, dim, n_lists):
    """The lists of the compact configuration: the largest power of two whose
    float32 centers take at most 4 bytes a vector (with the 8-byte id and
    the 4-byte norm term, d + 16 in all), or None where ``n_lists`` already
    does."""
    limit = max(1, n_rows // dim)
    compact = 1 << (limit.bit_length() - 1)
    return compact if compact < n_lists else None


# The ivfsq configurations: one index per entry, built with
# IndexParams(n_lists=..., metric=..., **index), and one curve per entry of
# "search", swept as SearchParams(n_probes=p, **search) for p in "n_probes"
# (values above n_lists * "max_probe_share" are left out; 1/4 unless given:
# the configurations with re-ranking go further, since only they climb past
# the 8-bit codes' recall ceiling).
N_PROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
IVFSQ_CONFIGS = [
    {"name": "sq8", "index": {}, "search": [{}, {"first_pass_candidates": 20},
                                           {"first_pass_candidates": 40}], "n_probes": N_PROBES},
    # float16 re-ranking: 2.5 dim bytes per vector, under ScaNN's 4.25 dim.
    {"name": "sq4+reorder16", "index": {"quantizer": "sq4", "reorder": True,
                                        "precise_dtype": "float16"},
     "search": [{"refine_ratio": 2}, {"refine_ratio": 4}], "n_probes": N_PROBES,
     "max_probe_share": 0.5},
    {"name": "sq8+reorder", "index": {"quantizer": "sq8", "reorder": True},
     "search": [{"refine_ratio": 2}, {"refine_ratio": 2, "first_pass_candidates": 40}],
     "n_probes": N_PROBES, "max_probe_share": 0.5},
    # A quick build: k-means on 32 rows a list for 6 iterations (the
    # defaults, 256 and 20, are the API's).
    {"name": "sq8 fast build", "index": {"kmeans_n_iters": 6, "max_train_points_per_cluster": 32},
     "search": [{}, {"first_pass_candidates": 20}], "n_probes": N_PROBES},
    # Within d + 16 bytes a vector: fewer lists (see compact_n_lists), where
    # the run's lists' float32 centers take more than 4 bytes a vector.
    {"name": "sq8 compact", "index": {}, "search": [{}], "n_probes": N_PROBES,
     "n_lists": compact_n_lists},
]
EF_VALUES = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
SCANN_PRE_REORDER = (40, 100)
TARGETS = (0.90, 0.95, 0.99)
# The plots' recall axis starts here (the targets are above it).
PLOT_MIN_RECALL = 0.5
K = 10
DATASETS = ("fashion-mnist", "pypi-minilm", "siftsmall", "synthetic:1000000:128",
            "pypi-minilm-pca48")
# Library name -> the module it needs.
LIBRARIES = {
    "ivfsq": "ivfsq",
    "faiss-ivf": "faiss",
    "scann": "scann",
    "hnswlib": "hnswlib",
    "faiss-hnsw": "faiss",
    "usearch": "usearch",
}
GRAPH_LIBRARIES = ("hnswlib", "faiss-hnsw", "usearch")
# Quick mode: every other sweep point (and the last) and these defaults
# (unless given).
QUICK_DEFAULTS = {"max_queries": 200, "min_seconds": 0.2, "latency_queries": 50}
FULL_DEFAULTS = {"max_queries": 2000, "min_seconds": 1.0, "latency_queries": 200}
OUT_DIR = REPO_ROOT / "benchmarks" / "results" / "frontier"


@dataclasses.dataclass
class Build:
    """One built index: its library, name, build seconds and size."""

    library: str
    name: str
    seconds: float
    seconds_rounds: list
    bytes_per_vector: float
    bytes_method: str
    details: dict


@dataclasses.dataclass
class Curve:
    """One configuration's sweep: ``sweep()`` measures every point once
    (one round); the rounds' results are merged by ``best_of_rounds``."""

    library: str
    config: str
    knob: str
    build: Build
    sweep: Callable[[], list]
    details: dict
    index: object = None  # kept for ivf_sq.search_plan (ivfsq only)
    rounds: list = dataclasses.field(default_factory=list)
    results: list = dataclasses.field(default_factory=list)
    # Numba specializations of ivfsq added during the measured rounds.
    compiled_during_sweep: int = 0
    # What the configuration holds per vector when it searches: its build's,
    # unless given (the first pass adds its copy of the lists).
    bytes_per_vector: float = None

    def __post_init__(self):
        if self.bytes_per_vector is None:
            self.bytes_per_vector = self.build.bytes_per_vector


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

def frontier_n_lists(n_rows):
    """The lists (ScaNN's leaves) of every IVF index of a run: the power of
    two nearest ``sqrt(n_rows)`` (at least 16), ScaNN's rule of thumb, so
    lists hold ~100-200 rows on the small shared sets (``4 sqrt(N)``, FAISS's,
    leaves them at 30-60 rows, where per-list work dominates every IVF
    library's search)."""
    return max(16, 1 << int(round(math.log2(math.sqrt(n_rows)))))


def parse_n_lists(text):
    """``"1024"`` (every data set) or ``"fashion-mnist=1024,siftsmall=64"``."""
    if "=" not in text:
        return {None: int(text)}
    values = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        values[name.strip()] = int(value)
    return values


def parse_args(argv=None):
    """Parse the command line; quick mode fills the options left unset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="comma-separated data sets (names as in bench_faiss.py, plus "
                             "'<name>-pca<dim>'; default: %(default)s)")
    parser.add_argument("--libraries", default=",".join(LIBRARIES),
                        help="comma-separated libraries (default: %(default)s)")
    parser.add_argument("--n-lists", type=parse_n_lists, default={},
                        help="inverted lists (and ScaNN leaves): one number for every data "
                             "set, or NAME=N,NAME=N (default: about 4*sqrt(N), a power of two)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for builds and batch searches (default: 2)")
    parser.add_argument("--max-queries", type=int, default=None,
                        help=f"use only the first N queries (default: "
                             f"{FULL_DEFAULTS['max_queries']}; quick: "
                             f"{QUICK_DEFAULTS['max_queries']})")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help=f"minimum total time of the repeated batch searches of a point "
                             f"(default: {FULL_DEFAULTS['min_seconds']}; quick: "
                             f"{QUICK_DEFAULTS['min_seconds']})")
    parser.add_argument("--latency-queries", type=int, default=None,
                        help=f"queries timed one at a time for p50/p90 (default: "
                             f"{FULL_DEFAULTS['latency_queries']}; quick: "
                             f"{QUICK_DEFAULTS['latency_queries']})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="sweeps of every configuration, the libraries taking turns; the "
                             "best QPS and lowest p50 of the rounds are kept (default: 1)")
    parser.add_argument("--build-rounds", type=int, default=1,
                        help="builds of each index; the fastest is reported (default: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: every other sweep point and the quick defaults above")
    parser.add_argument("--replot", type=pathlib.Path, default=None, metavar="JSONL",
                        help="only redraw the plots of an earlier run's frontier.jsonl into "
                             "--out-dir (nothing is measured)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=OUT_DIR,
                        help="where frontier.md, frontier.jsonl and the plots go "
                             "(default: benchmarks/results/frontier)")
    parser.set_defaults(k=K)
    args = parser.parse_args(argv)
    for name, value in (QUICK_DEFAULTS if args.quick else FULL_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    args.libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    unknown = sorted(set(args.libraries) - set(LIBRARIES))
    if unknown:
        parser.error(f"unknown libraries {unknown}; choose from {', '.join(LIBRARIES)}")
    return args


def sweep_values(values, args, limit=None):
    """``values`` up to ``limit``; in quick mode every other one, and the
    last (the high-recall end)."""
    values = [value for value in values if limit is None or value <= limit]
    if not args.quick:
        return values
    return values[::2] + values[-1:] if len(values) % 2 == 0 else values[::2]


def available_libraries(names):
    """The libraries of ``names`` whose module imports; a note for the others."""
    available = []
    for name in names:
        try:
            importlib.import_module(LIBRARIES[name])
        except ImportError:
            print(f"note: {name} skipped: the module {LIBRARIES[name]!r} is not installed "
                  f"(pip install -e '.[bench]')")
        else:
            available.append(name)
    return available


# --------------------------------------------------------------------------
# ivfsq
# --------------------------------------------------------------------------

def jit_specializations():
    """How many specializations ivfsq's module-level numba functions hold
    (compiled or loaded from numba's cache); a rise across a measurement
    means something compiled inside it."""
    from numba.core.dispatcher import Dispatcher

    dispatchers = {}
    for name, module in list(sys.modules.items()):
        if name == "ivfsq" or name.startswith("ivfsq."):
            for value in vars(module).values():
                if isinstance(value, Dispatcher):
                    dispatchers[id(value)] = value
    return sum(len(dispatcher.signatures) for dispatcher in dispatchers.values())


def label(name, search_kwargs):
    """A curve's name: the configuration's ``name`` and its search keywords."""
    return " ".join([name] + [f"{key}={value}" for key, value in search_kwargs.items()])


def warm_up_ivfsq_build(config, base, metric, n_lists, threads):
    """A throwaway build (and search) of ``config`` on a few rows, with up to
    256 lists so the hierarchical k-means of L2 builds compiles too."""
    warm_lists = min(n_lists, 256)
    sample = base[:min(base.shape[0], 16 * warm_lists)]
    params = ivf_sq.IndexParams(n_lists=warm_lists, metric=metric,
                                **{**config["index"], "kmeans_n_iters": 2})
    index = ivf_sq.build(params, sample, resources=Resources(n_threads=threads))
    for search_kwargs in config["search"]:
        ivf_sq.search(ivf_sq.SearchParams(n_probes=2, **search_kwargs), index, sample[:10], K)


def warm_up_ivfsq_searches(index, search_kwargs, queries, n_probes_values, threads):
    """At every ``n_probes``, the whole batch on ``threads`` threads and one
    query on one thread and on ``threads`` threads, so each search path that
    the sweep times compiles before it. (A batch on one thread is never
    timed; on a large data set it would cost seconds per ``n_probes``.)"""
    for n_probes in n_probes_values:
        params = ivf_sq.SearchParams(n_probes=n_probes, **search_kwargs)
        ivf_sq.search(params, index, queries, K, resources=Resources(n_threads=threads))
        for n_threads in sorted({1, threads}):
            ivf_sq.search(params, index, queries[:1], K, resources=Resources(n_threads=n_threads))


def build_ivfsq_curves(data, n_lists, args):
    """Build every ivfsq configuration; return its builds and curves."""
    base, queries, gt, metric = data["base"], data["queries"], data["gt"], data["metric"]
    resources = Resources(n_threads=args.threads)
    builds, curves = [], []
    run_lists = n_lists
    for config in IVFSQ_CONFIGS:
        n_lists, name = run_lists, config["name"]
        if "n_lists" in config:
            n_lists = config["n_lists"](*base.shape, run_lists)
            if n_lists is None:
                continue
            name = f"{name} ({n_lists} lists)"
        warm_up_ivfsq_build(config, base, metric, n_lists, args.threads)
        params = ivf_sq.IndexParams(n_lists=n_lists, metric=metric, **config["index"])
        before = jit_specializations()
        index, seconds_rounds = None, []
        for _ in range(max(1, args.build_rounds)):
            start = time.perf_counter()
            index = ivf_sq.build(params, base, resources=resources)
            seconds_rounds.append(time.perf_counter() - start)
        compiled = jit_specializations() - before
        if compiled:
            print(f"note: ivfsq {name}: {compiled} numba specialization(s) compiled "
                  f"during the timed build")
        build = Build("ivfsq", name, min(seconds_rounds), seconds_rounds,
                      index.memory_bytes / base.shape[0], "index.memory_bytes / N",
                      {"index_params": repr(params), "memory_breakdown": index.memory_breakdown,
                       "imbalance_factor": index.imbalance_factor,
                       "compiled_during_build": compiled})
        builds.append(build)
        n_probes_values = sweep_values(config["n_probes"], args,
                                       max(1, int(n_lists * config.get("max_probe_share", 0.25))))
        for search_kwargs in config["search"]:
            warm_up_ivfsq_searches(index, search_kwargs, queries, n_probes_values, args.threads)
            # The first pass's copy of the lists exists once such a search ran.
            extra = index.memory_breakdown.get("first_pass", 0) \
                if search_kwargs.get("first_pass_candidates") else 0
            curves.append(Curve(
                "ivfsq", label(name, search_kwargs), "n_probes", build,
                lambda index=index, search_kwargs=search_kwargs, values=n_probes_values:
                    sweep_ivfsq(index, queries, gt, args, values, search_kwargs),
                {"index_params": config["index"], "search_params": search_kwargs}, index,
                bytes_per_vector=build.bytes_per_vector + extra / base.shape[0]))
    return builds, curves


def representative_plans(curves, n_queries, threads):
    """``ivf_sq.search_plan`` of each ivfsq curve at its first ``n_probes``
    that reaches recall 0.95 (else its last): a batch of ``n_queries`` on
    ``threads`` threads and one query on one thread, as measured."""
    plans = []
    for curve in curves:
        if curve.library != "ivfsq":
            continue
        point = next((r for r in curve.results if r["recall"] >= 0.95), curve.results[-1])
        params = ivf_sq.SearchParams(n_probes=point["n_probes"], **curve.details["search_params"])
        for what, n, n_threads in (("batch", n_queries, threads), ("single query", 1, 1)):
            plan = ivf_sq.search_plan(params, curve.index, n,
                                      resources=Resources(n_threads=n_threads))
            plans.append({"config": curve.config, "n_probes": point["n_probes"], "search": what,
                          "n_queries": n, "threads": n_threads,
                          **dataclasses.asdict(plan)})
    return plans


# --------------------------------------------------------------------------
# the peers
# --------------------------------------------------------------------------

def repeat_build(build_once, rounds):
    """Call ``build_once()`` (returning ``(index, seconds)``) ``rounds``
    times; return the last index and every build's seconds."""
    index, seconds_rounds = None, []
    for _ in range(max(1, rounds)):
        index, seconds = build_once()
        seconds_rounds.append(seconds)
    return index, seconds_rounds


def faiss_ivf_curves(data, n_lists, args):
    """FAISS IndexIVFScalarQuantizer (QT_8bit) over the same lists, swept
    over ``n_probes``."""
    base, queries, gt, metric = data["base"], data["queries"], data["gt"], data["metric"]
    index, rounds = repeat_build(lambda: peers.build_faiss(base, metric, n_lists, args.threads),
                                 args.build_rounds)
    build = Build("faiss-ivf", "IVF-SQ8", min(rounds), rounds,
                  peers.faiss_serialized_bytes_per_vector(index),
                  "len(faiss.serialize_index(index)) / N",
                  {"index": "IndexIVFScalarQuantizer(QT_8bit, by_residual=True)",
                   "n_lists": n_lists})
    values = sweep_values(N_PROBES, args, max(1, n_lists // 4))
    return build, [Curve("faiss-ivf", build.name, "n_probes", build,
                         lambda: peers.sweep_faiss(index, queries, gt, metric, args, values), {})]


def scann_curves(data, n_lists, args):
    """ScaNN with ``n_lists`` leaves, swept over ``leaves_to_search`` (the
    ``n_probes`` values), one curve per re-ranked candidate count."""
    base, queries, gt, metric = data["base"], data["queries"], data["gt"], data["metric"]
    index, rounds = repeat_build(
        lambda: peers.build_scann(base, metric, n_lists, args.threads, args.k), args.build_rounds)
    build = Build("scann", f"AH{peers.SCANN_DIMS_PER_BLOCK}", min(rounds), rounds,
                  peers.scann_bytes_per_vector(index, base.shape[0]),
                  "sum of the serialized files / N", {"config": index.config()})
    values = sweep_values(N_PROBES, args, max(1, n_lists // 4))
    return build, [
        Curve("scann", f"{build.name} R{pre_reorder}", "leaves", build,
              lambda pre_reorder=pre_reorder: peers.sweep_scann(
                  index, queries, gt, metric, args, values, pre_reorder),
              {"pre_reorder_num_neighbors": pre_reorder})
        for pre_reorder in SCANN_PRE_REORDER]


def hnswlib_curves(data, n_lists, args):
    """hnswlib (M=16, ef_construction=200), swept over ef."""
    import hnswlib

    base, queries, gt = data["base"], data["queries"], data["gt"]
    index, rounds = repeat_build(
        lambda: peers.build_hnswlib(hnswlib, base, data["metric"], args.threads),
        args.build_rounds)
    build = Build("hnswlib", f"M{peers.HNSW_M}", min(rounds), rounds,
                  peers.hnswlib_bytes_per_vector(index, base.shape[0]), "serialized size / N",
                  {"M": peers.HNSW_M, "ef_construction": peers.HNSW_EF_CONSTRUCTION})
    values = sweep_values(EF_VALUES, args)
    return build, [Curve("hnswlib", build.name, "ef", build,
                         lambda: peers.sweep_hnswlib(index, queries, gt, args, values), {})]


def faiss_hnsw_curves(data, n_lists, args):
    """FAISS IndexHNSWSQ (QT_8bit, M=32, efConstruction=80), swept over efSearch."""
    base, queries, gt, metric = data["base"], data["queries"], data["gt"], data["metric"]
    index, rounds = repeat_build(lambda: peers.build_faiss_hnsw_sq(base, metric, args.threads),
                                 args.build_rounds)
    build = Build("faiss-hnsw", f"HNSW{peers.FAISS_HNSW_M}-SQ8", min(rounds), rounds,
                  peers.faiss_serialized_bytes_per_vector(index),
                  "len(faiss.serialize_index(index)) / N",
                  {"index": f"IndexHNSWSQ(QT_8bit, M={peers.FAISS_HNSW_M})",
                   "ef_construction": peers.FAISS_HNSW_EF_CONSTRUCTION})
    values = sweep_values(EF_VALUES, args)
    return build, [Curve("faiss-hnsw", build.name, "ef", build,
                         lambda: peers.sweep_faiss_hnsw(index, queries, gt, metric, args, values),
                         {})]


def usearch_curves(data, n_lists, args):
    """usearch (connectivity 16, expansion_add 200; int8 vectors for cosine,
    float16 otherwise), swept over expansion_search."""
    base, queries, gt, metric = data["base"], data["queries"], data["gt"], data["metric"]
    index, rounds = repeat_build(lambda: peers.build_usearch(base, metric, args.threads),
                                 args.build_rounds)
    build = Build("usearch", peers.usearch_dtype(metric), min(rounds), rounds,
                  index.memory_usage / base.shape[0], "index.memory_usage / N",
                  {"connectivity": peers.HNSW_M, "expansion_add": peers.HNSW_EF_CONSTRUCTION})
    values = sweep_values(EF_VALUES, args)
    return build, [Curve("usearch", build.name, "ef", build,
                         lambda: peers.sweep_usearch(index, queries, gt, args, values), {})]


# Peer library -> function(data, n_lists, args) returning its build and curves.
PEER_CURVES = {
    "faiss-ivf": faiss_ivf_curves,
    "scann": scann_curves,
    "hnswlib": hnswlib_curves,
    "faiss-hnsw": faiss_hnsw_curves,
    "usearch": usearch_curves,
}


# --------------------------------------------------------------------------
# one data set
# --------------------------------------------------------------------------

def run_dataset(name, data, libraries, args):
    """Build and sweep every library on data set ``name`` (as asked for on
    the command line); return its n_lists, builds and (merged) curves."""
    n_rows = data["base"].shape[0]
    n_lists = args.n_lists.get(name, args.n_lists.get(None, frontier_n_lists(n_rows)))
    builds, curves = [], []
    for library in libraries:
        start = time.perf_counter()
        if library == "ivfsq":
            new_builds, new_curves = build_ivfsq_curves(data, n_lists, args)
        else:
            build, new_curves = PEER_CURVES[library](data, n_lists, args)
            new_builds = [build]
        builds += new_builds
        curves += new_curves
        print(f"  {library}: built in {time.perf_counter() - start:.1f} s "
              f"({', '.join(f'{b.name} {b.seconds:.2f} s' for b in new_builds)})")
    for round_number in range(max(1, args.rounds)):
        for curve in curves:
            start = time.perf_counter()
            before = jit_specializations() if curve.library == "ivfsq" else 0
            curve.rounds.append(curve.sweep())
            if curve.library == "ivfsq":
                compiled = jit_specializations() - before
                curve.compiled_during_sweep += compiled
                if compiled:
                    print(f"note: ivfsq {curve.config}: {compiled} numba specialization(s) "
                          f"compiled during the measured sweep (round {round_number + 1})")
            print(f"  round {round_number + 1}: {curve.library} {curve.config} swept in "
                  f"{time.perf_counter() - start:.1f} s")
    for curve in curves:
        curve.results = best_of_rounds(curve.rounds)
    return n_lists, builds, curves


def best_at(curves, library, target):
    """``library``'s best configurations at recall ``target``: a dict with
    the curve of highest QPS there and that QPS, and the curve of lowest p50
    there and that p50 (a user tuning for latency picks its own), or None
    when no configuration reaches it.

    QPS and p50 are interpolated (log scale) along each curve's Pareto
    frontier (highest QPS, lowest p50), so a plateau or a noisy point of the
    sweep does not pull them down."""
    best = None
    for curve in curves:
        if curve.library != library:
            continue
        qps = at_recall(pareto_frontier(curve.results, "qps"), target, "qps")
        if qps is None:
            continue
        p50_points = pareto_frontier(curve.results, "latency_p50_ms", larger_is_better=False)
        p50 = at_recall(p50_points, target, "latency_p50_ms")
        if best is None:
            best = {"curve": curve, "qps": qps, "p50_curve": curve, "p50_ms": p50}
            continue
        if qps > best["qps"]:
            best.update(curve=curve, qps=qps)
        if p50 is not None and (best["p50_ms"] is None or p50 < best["p50_ms"]):
            best.update(p50_curve=curve, p50_ms=p50)
    return best


def target_rows(curves, libraries, target):
    """Per library at ``target``: (library, best or None), and the ratios
    ivfsq / best peer (QPS: highest peer QPS; p50: lowest peer p50)."""
    rows = [(library, best_at(curves, library, target)) for library in libraries]
    ours = dict(rows).get("ivfsq")
    peer_rows = [(library, best) for library, best in rows if library != "ivfsq" and best]
    ratios = {"qps_ratio": None, "qps_peer": None, "p50_ratio": None, "p50_peer": None}
    if ours and peer_rows:
        qps_peer, qps_best = max(peer_rows, key=lambda row: row[1]["qps"])
        p50_peer, p50_best = min(peer_rows, key=lambda row: row[1]["p50_ms"])
        ratios = {"qps_ratio": ours["qps"] / qps_best["qps"], "qps_peer": qps_peer,
                  "p50_ratio": ours["p50_ms"] / p50_best["p50_ms"], "p50_peer": p50_peer}
    return rows, ratios


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------

def fmt(value, spec, missing="—"):
    """``format(value, spec)``, or ``missing`` for None."""
    return missing if value is None else format(value, spec)


def ratio(numerator, denominator):
    """``numerator / denominator``, or None when either is missing."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def markdown_table(headers, rows):
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


class Report:
    """Collects headings, paragraphs and tables; prints them as text and
    renders them as markdown."""

    def __init__(self):
        self.parts = []

    def heading(self, text, level=2):
        print(f"\n{text}")
        self.parts.append("#" * level + " " + text)

    def text(self, text):
        print(text)
        self.parts.append(text)

    def table(self, headers, rows):
        print(format_table(headers, rows))
        self.parts.append(markdown_table(headers, rows))

    def markdown(self):
        return "\n\n".join(self.parts) + "\n"


def report_dataset(report, data, n_lists, builds, curves, libraries, plans, args):
    """The per-target tables, the build table and the plans of one data set;
    returns the summary rows (one per target) for the final table."""
    n_rows, dim = data["base"].shape
    report.heading(f"{data['name']} ({n_rows:,} x {dim}, {data['metric']}), n_lists {n_lists}, "
                   f"{data['queries'].shape[0]} queries")
    summary = []
    for target in TARGETS:
        rows, ratios = target_rows(curves, libraries, target)
        report.text(f"recall@{K} {target:.2f}: each library's configuration with the highest "
                    f"batch QPS there and the one with the lowest single-query p50 "
                    f"(interpolated between sweep points):")
        table = []
        for library, best in rows:
            if best is None:
                table.append([library, "—", "—", "—", "—", "—", "—"])
                continue
            build = best["curve"].build
            table.append([library, best["curve"].config, f"{best['qps']:,.0f}",
                          f"{build.seconds:.2f}", f"{best['curve'].bytes_per_vector:.1f}",
                          best["p50_curve"].config, fmt(best["p50_ms"], ".3f")])
        report.table(["library", "config (QPS)", "QPS", "build s", "bytes/vec", "config (p50)",
                      "p50 ms"], table)
        report.text(f"ivfsq / best peer: QPS {fmt(ratios['qps_ratio'], '.2f')} "
                    f"(against {ratios['qps_peer'] or '—'}; above 1: ivfsq is faster), p50 "
                    f"{fmt(ratios['p50_ratio'], '.2f')} (against {ratios['p50_peer'] or '—'}; "
                    f"below 1: ivfsq answers sooner)")
        ours = dict(rows).get("ivfsq")
        summary.append({"dataset": data["name"], "target": target, **ratios,
                        "ivfsq_qps": ours and ours["qps"], "ivfsq_p50_ms": ours and ours["p50_ms"],
                        "ivfsq_config": ours and ours["curve"].config,
                        "ivfsq_p50_config": ours and ours["p50_curve"].config,
                        "libraries": {library: best and {"config": best["curve"].config,
                                                         "qps": best["qps"],
                                                         "p50_config": best["p50_curve"].config,
                                                         "p50_ms": best["p50_ms"]}
                                      for library, best in rows}})
    reaching = [c for c in curves if c.library == "ivfsq"
                and max((r["recall"] for r in c.results), default=0.0) >= 0.95]
    if reaching:
        smallest = min(reaching, key=lambda c: c.bytes_per_vector)
        report.text(f"ivfsq's smallest configuration reaching recall@{K} 0.95: {smallest.config}, "
                    f"{smallest.bytes_per_vector:.1f} bytes a vector (d + "
                    f"{smallest.bytes_per_vector - dim:.1f})")
    faiss_ivf = next((b.seconds for b in builds if b.library == "faiss-ivf"), None)
    graph = min(((b.seconds, b.library) for b in builds if b.library in GRAPH_LIBRARIES),
                default=(None, None))
    report.text(f"builds (best of {max(1, args.build_rounds)}, {args.threads} threads); ratios "
                f"for ivfsq: build / FAISS IVF-SQ8 build, build / fastest graph build "
                f"({graph[1] or '—'}):")
    rows = []
    for b in builds:
        ours = b.library == "ivfsq"
        rows.append([b.library, b.name, f"{b.seconds:.2f}", f"{b.bytes_per_vector:.1f}",
                     fmt(ratio(b.seconds, faiss_ivf) if ours else None, ".2f"),
                     fmt(ratio(b.seconds, graph[0]) if ours else None, ".2f")])
    report.table(["library", "index", "build s", "bytes/vec", "/ FAISS IVF-SQ8",
                  "/ fastest graph"], rows)
    if plans:
        report.text("ivfsq search plans (ivf_sq.search_plan) at each configuration's first "
                    "n_probes with recall >= 0.95:")
        report.table(["config", "n_probes", "search", "threads", "path", "int_filter",
                      "block_queries", "coarse_in_kernel"],
                     [[p["config"], str(p["n_probes"]), f"{p['search']} ({p['n_queries']})",
                       str(p["threads"]), p["path"], p["int_filter"], str(p["block_queries"]),
                       str(p["coarse_in_kernel"])] for p in plans])
    compiled = [c for c in curves if c.compiled_during_sweep]
    if compiled:
        report.text("note: numba compiled during the measured sweeps of: " + ", ".join(
            f"{c.config} ({c.compiled_during_sweep})" for c in compiled))
    return summary


def report_summary(report, summary):
    """The final table: ivfsq against the best peer, per data set and target."""
    report.heading("summary: ivfsq against the best peer at each target")
    report.table(
        ["data set", "recall@10", "ivfsq QPS", "ivfsq config", "QPS ratio", "best QPS peer",
         "ivfsq p50 ms", "ivfsq p50 config", "p50 ratio", "best p50 peer"],
        [[row["dataset"], f"{row['target']:.2f}", fmt(row["ivfsq_qps"], ",.0f"),
          row["ivfsq_config"] or "—", fmt(row["qps_ratio"], ".2f"), row["qps_peer"] or "—",
          fmt(row["ivfsq_p50_ms"], ".3f"), row["ivfsq_p50_config"] or "—",
          fmt(row["p50_ratio"], ".2f"), row["p50_peer"] or "—"]
         for row in summary])


def dataset_records(data, n_lists, builds, curves, plans, args, hardware):
    """The JSON records of one data set: one per build (``"record":
    "build"``, with the index's parameters), per measured point (``"point"``)
    and per search plan (``"plan"``)."""
    n_rows, dim = data["base"].shape
    fields = {"benchmark": "bench_frontier", "timestamp": utc_timestamp(),
              "dataset": data["name"], "n_rows": n_rows, "dim": dim, "metric": data["metric"],
              "n_queries": int(data["queries"].shape[0]), "k": args.k,
              "threads": args.threads, "n_lists": n_lists}
    records = [{**fields, "record": "build", "hardware": hardware, "library": b.library,
                "index": b.name, "build_seconds": b.seconds,
                "build_seconds_rounds": b.seconds_rounds, "bytes_per_vector": b.bytes_per_vector,
                "bytes_per_vector_method": b.bytes_method, **b.details} for b in builds]
    for curve in curves:
        for result in curve.results:
            records.append({**fields, "record": "point", "library": curve.library,
                            "config": curve.config, "index": curve.build.name,
                            "knob": curve.knob, "knob_value": result[curve.knob], **curve.details,
                            "build_seconds": curve.build.seconds,
                            "bytes_per_vector": curve.bytes_per_vector,
                            "compiled_during_sweep": curve.compiled_during_sweep, **result})
    records += [{**fields, "record": "plan", **plan} for plan in plans]
    return records


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def plot_dataset(out_dir, name, n_rows, dim, metric, n_lists, threads, curves):
    write_plot(out_dir / f"frontier_{name}.png", curves,
               f"{name} ({n_rows} x {dim}, {metric}), n_lists={n_lists}, {threads} thread(s)",
               figsize=(10, 7), min_recall=PLOT_MIN_RECALL)


def replot(jsonl, out_dir):
    """Redraw each data set's plot from the ``point`` records of a run's
    JSON lines, curves in the order the run measured them."""
    datasets = {}
    with open(jsonl) as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("record") != "point":
                continue
            dataset = datasets.setdefault(record["dataset"], {"first": record, "curves": {}})
            label = f"{record['library']} {record['config']}"
            dataset["curves"].setdefault(label, (label, [], record["knob"]))[1].append(record)
    if not datasets:
        raise SystemExit(f"no point records in {jsonl}")
    for name, dataset in datasets.items():
        first = dataset["first"]
        plot_dataset(out_dir, name, first["n_rows"], first["dim"], first["metric"],
                     first["n_lists"], first["threads"], list(dataset["curves"].values()))


def benchmark_dataset(name, libraries, report, args, hardware):
    """Load, build, sweep and report one data set; returns its summary rows
    and JSON records (none when the data set is missing). Its indexes are
    freed on return."""
    print(f"\n== {name}")
    try:
        data = load_benchmark_data(name, args.max_queries)
    except DatasetNotFoundError as missing:
        print(f"note: {name} skipped: {missing}")
        return [], []
    n_rows, dim = data["base"].shape
    print(f"  {n_rows} x {dim}, {data['queries'].shape[0]} queries, metric {data['metric']}")
    n_lists, builds, curves = run_dataset(name, data, libraries, args)
    plans = representative_plans(curves, data["queries"].shape[0], args.threads)
    summary = report_dataset(report, data, n_lists, builds, curves, libraries, plans, args)
    plot_dataset(args.out_dir, data["name"], n_rows, dim, data["metric"], n_lists, args.threads,
                 [(f"{c.library} {c.config}", c.results, c.knob) for c in curves])
    return summary, dataset_records(data, n_lists, builds, curves, plans, args, hardware)


def machine_line(hardware, libraries):
    """The machine, the library versions and FAISS's SIMD level, in a line."""
    line = (f"machine: {hardware['cpu_model']}, {hardware['usable_cores']} usable cores, "
            f"{hardware['platform']}, Python {hardware['python']}; versions: "
            + ", ".join(f"{name} {version}" for name, version in hardware["versions"].items()
                        if version is not None))
    if "faiss-ivf" in libraries or "faiss-hnsw" in libraries:
        import faiss

        line += f"; FAISS compile options: {faiss.get_compile_options().strip()}"
    return line


def main(argv=None):
    args = parse_args(argv)
    if args.replot is not None:
        replot(args.replot, args.out_dir)
        return
    warn_if_busy()
    hardware = hardware_info(("numpy", "numba", "ivfsq", "faiss", "hnswlib", "usearch", "scann"))
    libraries = available_libraries(args.libraries)
    report = Report()
    report.heading("ivfsq against the best CPU indexes", level=1)
    report.text(machine_line(hardware, libraries))
    report.text(f"recall@{K}; batch QPS with {args.threads} thread(s), best run of >= 2 over "
                f">= {args.min_seconds:g} s; p50/p90 on {args.latency_queries} single queries "
                f"with 1 thread; up to {args.max_queries} queries; best of {args.rounds} "
                f"round(s){'; quick mode' if args.quick else ''}. Command: "
                f"`{' '.join(['python', 'benchmarks/bench_frontier.py'] + sys.argv[1:])}`")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary, records = [], []
    for name in args.datasets:
        rows, new_records = benchmark_dataset(name, libraries, report, args, hardware)
        summary += rows
        records += new_records
    if not summary:
        raise SystemExit("no data set could be run")
    report_summary(report, summary)
    records += [{"benchmark": "bench_frontier", "record": "target", **row} for row in summary]
    write_jsonl(args.out_dir / "frontier.jsonl", records)
    (args.out_dir / "frontier.md").write_text(report.markdown())
    print(f"\n{len(records)} records written to {args.out_dir / 'frontier.jsonl'}; report in "
          f"{args.out_dir / 'frontier.md'}")


if __name__ == "__main__":
    main()
