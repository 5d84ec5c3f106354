"""Filtered search side by side: ivfsq, FAISS IVF-SQ8 (IDSelectorBitmap) and
hnswlib (a filter function), at the same selectivities, in one run.

For each data set and each filter (a random share of the ids kept: 100 %,
10 %, 1 %, 0.1 %, 0.01 %; and the ids nearest one stored vector, kept
together in one region): recall@k against the exact filtered neighbours,
the share of result slots padded although k ids pass, and batch QPS (2
threads; hnswlib's filter is a Python function, called per candidate, so it
runs on 1 thread, as its documentation advises, over the first 100 queries). Every library searches at
the setting that gives it about 0.95 recall@10 without a filter (ivfsq and
FAISS the same n_probes over the same number of lists; hnswlib the first ef
that reaches the unfiltered recall of ivfsq), so the columns show what the
filter costs each of them. ivfsq "fixed" is ivfsq scanning only the
n_probes lists an unfiltered search scans (the behaviour before the
per-query strategy), for reference.

    PYTHONPATH=src python benchmarks/bench_filters.py --datasets siftsmall,fashion-mnist,pypi-minilm
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import peers  # noqa: E402
from common import hardware_info, load_benchmark_data, measure_batch_qps  # noqa: E402

SHARES = (1.0, 0.1, 0.01, 0.001, 0.0001)
CLUSTERED_IDS = 500
HNSW_EF = (16, 24, 32, 48, 64, 96, 128, 192, 256)
# hnswlib calls its Python filter per candidate; a selective filter makes
# it visit most of the graph: it searches this many of the queries.
HNSW_QUERIES = 100
OUT = pathlib.Path(__file__).resolve().parent / "results" / "filters"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="siftsmall,fashion-mnist,pypi-minilm")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-queries", type=int, default=1000)
    parser.add_argument("--target", type=float, default=0.95,
                        help="unfiltered recall@k each library is set to (default 0.95)")
    parser.add_argument("--min-seconds", type=float, default=0.3)
    parser.add_argument("--out-dir", type=pathlib.Path, default=OUT)
    return parser.parse_args(argv)


def filters_of(base, seed=0):
    """(name, keep-mask) pairs: random shares, then one region."""
    rng = np.random.default_rng(seed)
    n = base.shape[0]
    cases = []
    for share in SHARES:
        keep = rng.random(n) < share
        if keep.sum() == 0:
            keep[rng.integers(n)] = True
        cases.append((f"{share:.2%} random", keep))
    center = base[rng.integers(n)]
    keep = np.zeros(n, dtype=bool)
    keep[np.argsort(((base - center) ** 2).sum(1))[:CLUSTERED_IDS]] = True
    cases.append((f"{CLUSTERED_IDS} ids in one region", keep))
    return cases


def exact_filtered(base, queries, keep, metric, k):
    """Exact top-k ids among the kept rows (float64 scores)."""
    kept = np.flatnonzero(keep)
    sub = base[kept].astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        sub = sub / np.maximum(np.linalg.norm(sub, axis=1, keepdims=True), 1e-30)
        scores = -(q @ sub.T)
    elif metric == "inner_product":
        scores = -(q @ sub.T)
    else:
        scores = (sub**2).sum(1)[None, :] - 2.0 * q @ sub.T
    kk = min(k, kept.shape[0])
    part = np.argpartition(scores, kk - 1, axis=1)[:, :kk]
    return kept[part]


def recall_and_padding(found, truth, n_kept, k):
    found = np.asarray(found)
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth))
    recall = hits / (truth.shape[0] * truth.shape[1])
    padded = float(np.mean(found < 0)) if n_kept >= k else 0.0
    return recall, padded


def first_reaching(values, recall_of, target):
    for value in values:
        if recall_of(value) >= target:
            return value
    return values[-1]


def run_dataset(name, args):
    import faiss
    import hnswlib

    from ivfsq.common import Resources
    from ivfsq.neighbors import filters, ivf_sq

    data = load_benchmark_data(name, args.max_queries)
    base, queries, metric, k = data["base"], data["queries"], data["metric"], args.k
    n_lists = max(16, 1 << int(round(np.log2(np.sqrt(base.shape[0])))))
    resources = Resources(n_threads=args.threads)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=n_lists, metric=metric), base,
                         resources=resources)
    truth_all = exact_filtered(base, queries, np.ones(base.shape[0], bool), metric, k)

    def ivfsq_recall(n_probes):
        found = ivf_sq.search(ivf_sq.SearchParams(n_probes=n_probes), index, queries, k,
                              resources=resources)[1]
        return recall_and_padding(found, truth_all, base.shape[0], k)[0]

    probe_values = sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, n_lists // 4})
    n_probes = first_reaching([p for p in probe_values if p <= n_lists], ivfsq_recall,
                              args.target)
    params = ivf_sq.SearchParams(n_probes=n_probes)
    engine = index._engine
    prepared = engine.prepare("queries", queries)[0]

    faiss_index, _ = peers.build_faiss(base, metric, n_lists, args.threads)
    faiss_index.nprobe = n_probes
    faiss_queries = peers.normalized(queries) if metric == "cosine" else queries
    hnsw, _ = peers.build_hnswlib(hnswlib, base, metric, args.threads)

    def hnsw_recall(ef):
        hnsw.set_ef(ef)
        return recall_and_padding(hnsw.knn_query(queries, k=k)[0], truth_all,
                                  base.shape[0], k)[0]

    unfiltered_recall = ivfsq_recall(n_probes)
    ef = first_reaching(list(HNSW_EF), hnsw_recall, unfiltered_recall)
    hnsw.set_ef(ef)
    print(f"== {data['name']} ({base.shape[0]:,} x {base.shape[1]}, {metric}): {n_lists} lists, "
          f"n_probes {n_probes} (unfiltered recall {unfiltered_recall:.3f}), hnswlib ef {ef}",
          flush=True)
    rows = []
    for case, keep in filters_of(base):
        n_kept = int(keep.sum())
        truth = exact_filtered(base, queries, keep, metric, k)
        search_filter = filters.from_bitset(keep)
        words = search_filter.bitset.reshape(1, -1)
        bitmap = np.packbits(keep, bitorder="little")
        selector = faiss.IDSelectorBitmap(base.shape[0], faiss.swig_ptr(bitmap))
        faiss_params = faiss.SearchParametersIVF(nprobe=n_probes, sel=selector)
        kept_ids = keep  # hnswlib's filter reads the mask per candidate

        runs = {
            "ivfsq": (lambda: ivf_sq.search(params, index, queries, k, resources=resources,
                                            filter=search_filter)[1], args.threads),
            "ivfsq fixed": (lambda: engine._search_blocks(
                prepared, k, n_probes, words, args.threads, 1.0, "auto", "auto", "cpu", 0)[1],
                args.threads),
            "faiss-ivf": (lambda: faiss_index.search(faiss_queries, k, params=faiss_params)[1],
                          args.threads),
            "hnswlib": (lambda: hnsw.knn_query(queries[:HNSW_QUERIES], k=k, num_threads=1,
                                               filter=lambda i: bool(kept_ids[i]))[0], 1),
        }
        faiss.omp_set_num_threads(args.threads)
        for library, (call, threads) in runs.items():
            try:
                found = call()  # warm
            except RuntimeError as error:  # hnswlib: fewer than k pass
                print(f"  {case:>24} kept {n_kept:>6,}  {library:<12} failed: {error}")
                rows.append({"dataset": data["name"], "filter": case, "kept": n_kept,
                             "library": library, "error": str(error)})
                continue
            n_searched = found.shape[0]
            recall, padded = recall_and_padding(found, truth[:n_searched], n_kept, k)
            qps = measure_batch_qps(call, n_searched, min_seconds=args.min_seconds)["qps"]
            rows.append({"dataset": data["name"], "filter": case, "kept": n_kept,
                         "library": library, "threads": threads, "recall": recall,
                         "padded": padded, "qps": qps, "n_probes": n_probes,
                         "ef": ef if library == "hnswlib" else None,
                         "unfiltered_recall": unfiltered_recall})
            print(f"  {case:>24} kept {n_kept:>6,}  {library:<12} recall {recall:.3f}  "
                  f"padded {padded:6.1%}  {qps:>10,.0f} QPS ({threads} thr)", flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(hardware_info(("numpy", "numba", "ivfsq", "faiss", "hnswlib"))))
    rows = []
    started = time.time()
    for name in args.datasets.split(","):
        rows.extend(run_dataset(name, args))
    path = args.out_dir / "filters.jsonl"
    with open(path, "w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    print(f"{len(rows)} records written to {path} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
