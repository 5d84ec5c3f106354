"""k-nearest-neighbour graphs for scikit-learn: IVFSQTransformer against
KNeighborsTransformer (exact) and an hnswlib graph, in one run.

For each data set, the graph of every base vector over the base
(``fit_transform``, ``n_neighbors`` + 1 entries per row in "distance" mode):

- **KNeighborsTransformer** (``n_jobs=-1``): the exact graph, the truth;
- **IVFSQTransformer** at a few ``n_probes`` (default settings otherwise,
  and ``reorder=True`` for exact distances);
- **hnswlib** (M=16, ef_construction=200; ``knn_query`` of the base at a
  few ef, on every thread), as scikit-learn-ann's hnswlib transformer does.

Reported: seconds for the whole graph (fit and transform), and its recall:
the share of each row's true ``n_neighbors + 1`` nearest that the row holds.

    PYTHONPATH=src python benchmarks/bench_sklearn.py
    PYTHONPATH=src python benchmarks/bench_sklearn.py --datasets fashion-mnist --n-neighbors 30
"""

import argparse
import time

import numpy as np

import common  # the source tree when ivfsq is not installed

from sklearn.neighbors import KNeighborsTransformer

from ivfsq._threads import default_n_threads
from ivfsq.sklearn import IVFSQTransformer

METRICS = {"fashion-mnist": "euclidean", "pypi-minilm": "cosine", "siftsmall": "euclidean"}


def graph_recall(found, truth):
    """Share of each row's true neighbours (``truth``, a CSR graph) that the
    row of ``found`` (ids, one row per sample) holds."""
    want = truth.indices.reshape(truth.shape[0], -1)
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, want))
    return hits / want.size


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def hnswlib_graph(X, k, metric, ef):
    import hnswlib

    space = "cosine" if metric == "cosine" else "l2"
    index = hnswlib.Index(space=space, dim=X.shape[1])
    index.init_index(max_elements=X.shape[0], M=16, ef_construction=200)
    index.set_num_threads(default_n_threads())
    index.add_items(X)
    index.set_ef(max(ef, k))
    labels, _ = index.knn_query(X, k=k)
    return labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="fashion-mnist,pypi-minilm")
    parser.add_argument("--n-neighbors", type=int, default=10)
    parser.add_argument("--n-probes", default="auto,8,20,40",
                        help="IVFSQTransformer n_probes values ('auto': target_recall 0.95)")
    parser.add_argument("--ef", default="20,40,80")
    args = parser.parse_args()
    k = args.n_neighbors
    rows = []

    def report(*row):
        rows.append(row)
        print(f"  {row[1]:<40} {row[2]:8.2f} s   recall {row[3]:.4f}", flush=True)

    for name in args.datasets.split(","):
        X = np.load(common.dataset_dir(name) / "base.npy").astype(np.float32)
        metric = METRICS[name]
        print(f"{name}: {X.shape[0]} x {X.shape[1]}, {metric}, n_neighbors={k}", flush=True)
        truth, seconds = timed(lambda: KNeighborsTransformer(
            n_neighbors=k, metric=metric, n_jobs=-1).fit_transform(X))
        report(name, "KNeighborsTransformer (exact)", seconds, 1.0)
        for n_probes in [p if p == "auto" else int(p) for p in args.n_probes.split(",")]:
            for reorder in (False, True):
                transformer = IVFSQTransformer(n_neighbors=k, metric=metric, n_probes=n_probes,
                                               reorder=reorder)
                graph, seconds = timed(lambda: transformer.fit_transform(X))
                label = (f"IVFSQTransformer n_probes={n_probes}"
                         + (f" ({transformer.n_probes_})" if n_probes == "auto" else "")
                         + (" reorder" if reorder else ""))
                ids = graph.indices.reshape(X.shape[0], -1)
                report(name, label, seconds, graph_recall(ids, truth))
        for ef in common.parse_int_list(args.ef):
            labels, seconds = timed(lambda: hnswlib_graph(X, k + 1, metric, ef))
            report(name, f"hnswlib ef={ef}", seconds, graph_recall(labels, truth))
    print()
    print(common.format_table(["data set", "graph", "seconds", "recall"],
                              [(a, b, f"{c:.2f}", f"{d:.4f}") for a, b, c, d in rows]))


if __name__ == "__main__":
    main()
