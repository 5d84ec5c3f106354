"""Helpers shared by the benchmark scripts: timing, hardware info, data
sets and output.

Everything here is library-neutral: a search is passed in as a plain
function, so the same code times ivfsq, FAISS and hnswlib.
"""

import datetime
import importlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "results"
# Data sets derived from the shared ones (git-ignored, computed once).
DERIVED_DATA_DIR = REPO_ROOT / "benchmarks" / "results" / "datasets"
# "<data set>-pca<dim>": a data set projected to <dim> dimensions by PCA.
PCA_NAME = re.compile(r"^(?P<source>.+)-pca(?P<dim>[0-9]+)$")
# Ground truth depth of a derived data set, as in the shared ones.
DERIVED_GT_DEPTH = 100

# Every benchmark imports this module first: when ivfsq is not installed,
# the source tree next to this folder is used.
try:
    import ivfsq  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO_ROOT / "src"))


def default_n_lists(n_rows):
    """About ``4 * sqrt(n_rows)``, rounded to the nearest power of two."""
    target = 4.0 * math.sqrt(n_rows)
    n_lists = 2 ** round(math.log2(target))
    return int(max(1, min(n_lists, n_rows)))


def parse_int_list(text):
    """Parse ``"1,2,4"`` into ``[1, 2, 4]``."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise ValueError(f"expected a comma-separated list of positive integers, got {text!r}")
    return values


def time_call(function):
    """Run ``function()`` once; return ``(result, seconds)``."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def measure_batch_qps(search_batch, n_queries, min_seconds=1.0, min_runs=2):
    """Queries per second of a (warmed-up) batch search.

    ``search_batch()`` is called repeatedly until at least ``min_runs`` runs
    have been made and at least ``min_seconds`` have elapsed in total.

    Returns a dict with the best and median QPS, the number of runs and the
    best run's seconds.
    """
    run_seconds = []
    while len(run_seconds) < min_runs or sum(run_seconds) < min_seconds:
        _, seconds = time_call(search_batch)
        run_seconds.append(seconds)
    best = min(run_seconds)
    median = statistics.median(run_seconds)
    return {
        "qps": n_queries / best,
        "qps_median": n_queries / median,
        "n_runs": len(run_seconds),
        "best_run_seconds": best,
    }


def measure_latency(search_one, n_queries, n_warmup=5):
    """Single-query latency percentiles in milliseconds.

    ``search_one(i)`` searches query ``i`` alone. The first ``n_warmup``
    queries are searched once untimed; then queries ``0 .. n_queries-1`` are
    timed one at a time.
    """
    for i in range(min(n_warmup, n_queries)):
        search_one(i)
    latencies_ms = []
    for i in range(n_queries):
        _, seconds = time_call(lambda: search_one(i))
        latencies_ms.append(seconds * 1000.0)
    latencies_ms = np.asarray(latencies_ms)
    return {
        "latency_p50_ms": float(np.percentile(latencies_ms, 50)),
        "latency_p90_ms": float(np.percentile(latencies_ms, 90)),
        "latency_queries": int(n_queries),
    }


def cpu_model():
    """The CPU model name from /proc/cpuinfo, or platform.processor()."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_version(module_name):
    """``module.__version__`` of an importable module (else the version of
    the installed distribution of that name, or "unknown"), else None."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(module_name)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return version


def hardware_info(module_names=("numpy", "numba", "ivfsq", "faiss", "hnswlib", "usearch")):
    """Platform, CPU and library versions, for the result records."""
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0],
        "versions": {name: library_version(name) for name in module_names},
    }


def warn_if_busy():
    """Print a warning when other processes keep the CPUs busy (timings get noisy)."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.5 * cores:
        print(f"warning: 1-minute load average is {load:.2f} on {cores} cores before the "
              f"run; other processes are using the CPUs, so QPS and latency will be noisy")


def utc_timestamp():
    """The current time as an ISO 8601 UTC string."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_jsonl(path, records):
    """Write ``records`` (dicts) as JSON lines, creating the folder; overwrites."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        out.writelines(json.dumps(record, sort_keys=True) + "\n" for record in records)


def format_table(headers, rows):
    """Format rows of strings as an aligned, ``|``-separated text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells):
        return " | ".join(cell.rjust(width) for cell, width in zip(cells, widths))

    separator = "-+-".join("-" * width for width in widths)
    return "\n".join([line(headers), separator] + [line(row) for row in rows])


def at_recall(results, recall, key):
    """``key`` (e.g. "qps") of a sweep interpolated at ``recall``.

    ``results`` are one sweep's points (dicts with "recall" and ``key``).
    Between the two points that bracket ``recall`` the value is interpolated
    linearly in log scale; None when the sweep never reaches ``recall``.
    Points are taken in order of increasing recall; a point that reaches the
    recall outright (at or above it) with no lower neighbour is used as is.
    """
    points = sorted((r["recall"], r[key]) for r in results)
    below = [p for p in points if p[0] < recall]
    above = [p for p in points if p[0] >= recall]
    if not above:
        return None
    high = above[0]
    if not below or high[0] == recall:
        return high[1]
    low = below[-1]
    fraction = (recall - low[0]) / (high[0] - low[0])
    return float(math.exp(math.log(low[1]) + fraction * (math.log(high[1]) - math.log(low[1]))))


def pareto_frontier(results, key, larger_is_better=True):
    """The points of one sweep that no other point beats on both recall and
    ``key``, by increasing recall.

    Give them to :func:`at_recall` when a sweep is not monotone: where
    several points share a recall (a plateau) or a point of higher recall has
    the better value (noise), the dominated points are dropped, so the
    interpolation uses the best value reached at each recall.
    """
    sign = 1 if larger_is_better else -1
    frontier, best = [], None
    # By decreasing recall, the best value first among equal recalls.
    for result in sorted(results, key=lambda r: (-r["recall"], -sign * r[key])):
        if best is None or sign * result[key] > best:
            frontier.append(result)
            best = sign * result[key]
    return frontier[::-1]


def measure(search_batch, search_one, set_threads, queries, gt, args):
    """Recall, batch QPS and single-query latency of one configuration.

    ``search_batch()`` returns the ids of all queries; ``search_one(i)``
    searches query ``i`` alone; ``set_threads(n)`` sets the thread count of
    the library (batch search uses ``args.threads``, latency 1 thread).
    """
    from ivfsq.datasets import recall_at_k

    set_threads(args.threads)
    neighbors = search_batch()  # warm-up (and numba compilation for ivfsq)
    recall = recall_at_k(np.asarray(neighbors)[:, :args.k], gt[:, :args.k])
    result = {"recall": recall}
    result.update(measure_batch_qps(search_batch, queries.shape[0], args.min_seconds))
    set_threads(1)
    result.update(measure_latency(search_one, min(args.latency_queries, queries.shape[0])))
    set_threads(args.threads)
    return result


def best_of_rounds(rounds):
    """One result per n_probes from several sweeps: the round with the best
    QPS, with the lowest p50/p90 latency of all rounds and every round's QPS
    kept in ``qps_rounds``. Recall is the same in every round."""
    merged = []
    for per_round in zip(*rounds):
        best = dict(max(per_round, key=lambda result: result["qps"]))
        for key in ("latency_p50_ms", "latency_p90_ms"):
            best[key] = min(result[key] for result in per_round)
        best["qps_rounds"] = [result["qps"] for result in per_round]
        merged.append(best)
    return merged


def write_plot(path, curves, title, figsize=(7, 5), min_recall=None):
    """Recall-vs-QPS plot (log y) with one curve per library; skipped without matplotlib.

    ``curves`` are ``(label, results, param)``: each point is annotated with
    its ``param`` value. ``min_recall`` starts the recall axis there (the
    points below it are left out of view).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping the plot "
              "(pip install matplotlib, or pip install -e '.[bench]')")
        return
    figure, axes = plt.subplots(figsize=figsize)
    # Ten colours repeat past ten curves: past that, twenty, and ivfsq's
    # curves solid with circles, the others dashed with other markers, so that
    # no two curves look alike.
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
    other_markers = "s^vD<>ph*X"
    for i, (label, results, param) in enumerate(curves):
        recalls = [r["recall"] for r in results]
        qps = [r["qps"] for r in results]
        ours = label.startswith("ivfsq")
        axes.plot(recalls, qps, label=label, color=colours[i % len(colours)],
                  marker="o" if ours else other_markers[i % len(other_markers)],
                  linestyle="-" if ours else "--")
        for r in results:
            axes.annotate(str(r[param]), (r["recall"], r["qps"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axes.set_yscale("log")
    if min_recall is not None:
        axes.set_xlim(left=min_recall)
    axes.set_xlabel("recall@k")
    axes.set_ylabel("queries per second (batch, log scale)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"plot written to {path}")


class DatasetNotFoundError(SystemExit):
    """A data set name that is not a folder, a shared data set or a set
    derived from one. A ``SystemExit``: scripts that do not catch it exit
    with its message."""


def pca_dataset_dir(source, dim):
    """The folder of ``source`` (a shared data set's name or a folder)
    projected to ``dim`` dimensions by PCA, computed on first use.

    The principal directions are the top ``dim`` eigenvectors of the base's
    covariance (float64, the base mean-centred); the base and the queries
    are centred with the base's mean and projected onto them. The metric is
    the source's, and the exact top-100 ground truth is recomputed by
    blocked brute force (:func:`ivfsq.datasets.brute_force_knn`). The result
    is written under ``DERIVED_DATA_DIR/<source>-pca<dim>`` as a data set
    folder (``base.npy``, ``query.npy``, ``gt_<tag>.npy``, ``pca.json``)
    and read from there afterwards.
    """
    from ivfsq.datasets import brute_force_knn, find_shared_dataset, load_dataset_dir

    source_folder = pathlib.Path(source) if os.path.isdir(source) else find_shared_dataset(source)
    if source_folder is None:
        raise DatasetNotFoundError(f"data set {source!r} not found (not a folder, and no "
                                   f"shared data set of that name), so no PCA projection of it")
    folder = DERIVED_DATA_DIR / f"{source_folder.resolve().name}-pca{dim}"
    if (folder / "base.npy").is_file():
        return folder
    data = load_dataset_dir(source_folder)
    base = np.array(data["base"], dtype=np.float64)  # a copy: centred in place
    n_rows, source_dim = base.shape
    if not 1 <= dim < source_dim:
        raise SystemExit(f"PCA dimension must be between 1 and {source_dim - 1} for "
                         f"{source!r}, got {dim}")
    print(f"deriving {folder.name}: PCA of {source_folder.name} ({n_rows} x {source_dim}) to "
          f"{dim} dimensions, exact top-{DERIVED_GT_DEPTH} ground truth ({data['metric']})")
    mean = base.mean(axis=0)
    base -= mean
    eigenvalues, eigenvectors = np.linalg.eigh(base.T @ base / max(1, n_rows - 1))
    top = np.argsort(eigenvalues)[::-1][:dim]
    directions = eigenvectors[:, top]
    projected_base = np.ascontiguousarray(base @ directions, dtype=np.float32)
    del base
    queries = np.asarray(data["queries"], dtype=np.float64) - mean
    projected_queries = np.ascontiguousarray(queries @ directions, dtype=np.float32)
    _, gt = brute_force_knn(projected_base, projected_queries, DERIVED_GT_DEPTH, data["metric"])
    tag = {"sqeuclidean": "l2", "cosine": "cosine", "inner_product": "ip"}[data["metric"]]
    # Written to a temporary folder and renamed, so an interrupted run leaves no half set.
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    np.save(partial / "base.npy", projected_base)
    np.save(partial / "query.npy", projected_queries)
    np.save(partial / f"gt_{tag}.npy", gt.astype(np.int32))
    with open(partial / "pca.json", "w") as out:
        json.dump({
            "source": str(source_folder.resolve()),
            "source_dim": int(source_dim),
            "dim": int(dim),
            "metric": data["metric"],
            "explained_variance_ratio": float(eigenvalues[top].sum() / eigenvalues.sum()),
            "created": utc_timestamp(),
        }, out, indent=2)
    partial.rename(folder)
    return folder


def dataset_dir(dataset):
    """The folder of a data set name: a folder, a shared data set, or
    ``<data set>-pca<dim>`` (:func:`pca_dataset_dir`); raises
    :class:`DatasetNotFoundError` otherwise."""
    from ivfsq.datasets import find_shared_dataset

    if os.path.isdir(dataset):
        return pathlib.Path(dataset)
    folder = find_shared_dataset(dataset)
    if folder is not None:
        return folder
    derived = PCA_NAME.match(dataset)
    if derived is not None:
        return pca_dataset_dir(derived["source"], int(derived["dim"]))
    raise DatasetNotFoundError(f"data set {dataset!r} not found (not a folder, and no shared "
                               f"data set of that name)")


def load_benchmark_data(dataset, max_queries):
    """Load base, queries, ground-truth ids and metric for ``--dataset``: a
    shared data set's name, a data set folder, ``<data set>-pca<dim>`` (a
    shared data set projected to ``dim`` dimensions, see
    :func:`pca_dataset_dir`), ``synthetic`` (100,000 x 96) or
    ``synthetic:ROWS:DIM`` (``make_blobs_lowrank``, exact ground truth).

    The base and queries are returned as float32 (both libraries get the
    same float32 arrays; the conversion is not timed). A name that is none
    of these raises :class:`DatasetNotFoundError`.
    """
    from ivfsq.datasets import brute_force_knn, load_dataset_dir, make_blobs_lowrank

    if dataset == "synthetic" or dataset.startswith("synthetic:"):
        # "synthetic" is 100,000 x 96; "synthetic:ROWS:DIM" sets both.
        parts = dataset.split(":")
        n_rows, dim = (int(parts[1]), int(parts[2])) if len(parts) == 3 else (100_000, 96)
        base, queries = make_blobs_lowrank(n_rows, dim, n_queries=1000)
        metric = "sqeuclidean"
        _, gt = brute_force_knn(base, queries, 100, metric)
        name = f"synthetic-{n_rows}x{dim}"
    else:
        folder = dataset_dir(dataset)
        data = load_dataset_dir(folder)
        if data["gt"] is None:
            raise SystemExit(f"data set folder {str(folder)!r} has no ground truth file")
        base, queries, gt, metric = data["base"], data["queries"], data["gt"], data["metric"]
        name = data["name"]
    if max_queries is not None:
        queries, gt = queries[:max_queries], gt[:max_queries]
    return {
        "name": name,
        "base": np.ascontiguousarray(base, dtype=np.float32),
        "queries": np.ascontiguousarray(queries, dtype=np.float32),
        "gt": np.asarray(gt),
        "metric": metric,
        "source_dtype": str(base.dtype),
    }
