"""Digests of search results over a grid of paths, metrics and codecs.

Run it at two commits and compare the JSON files: equal digests mean
bit-identical results (the index arrays, distances and ids). Only the public
API is used, and each search path is reached through the batch shape and
thread count that select it (one query on one thread, one query on two
threads with many probes, a mid-size batch, a big batch), so that commits
from before the planner existed can be compared too.

    PYTHONPATH=src python3 benchmarks/result_digests.py --out new.json
    python3 benchmarks/result_digests.py --compare old.json new.json
"""

import argparse
import hashlib
import json
import sys
import time

import numpy as np
from common import load_benchmark_data

from ivfsq.common import Resources
from ivfsq.neighbors import filters, ivf_sq

# (dataset, n_lists, queries, [(quantizer, metric, extra IndexParams)]).
GRID = {
    "siftsmall": (64, 100, [
        (quantizer, metric, {})
        for quantizer in ("sq8", "sq4", "sq8_uniform", "sq4_uniform")
        for metric in ("sqeuclidean", "euclidean", "inner_product", "cosine")
    ] + [("sq8", "sqeuclidean", {"reorder": True}), ("sq4", "cosine", {"transform": "rom"}),
         ("sq8", "inner_product", {"by_residual": False}),
         ("sq4", "sqeuclidean", {"reorder": True, "precise_dtype": "float16"})]),
    "fashion-mnist": (1024, 1000, [("sq8", "sqeuclidean", {}), ("sq4", "sqeuclidean", {}),
                                   ("sq8", "inner_product", {})]),
    "pypi-minilm": (512, 1000, [("sq8", "cosine", {}), ("sq4", "cosine", {}),
                                ("sq8_uniform", "inner_product", {})]),
    "synthetic:1000000:128": (1024, 1000, [("sq8", "sqeuclidean", {}), ("sq4", "sqeuclidean", {})]),
}
# (label, number of queries (None: all), threads, n_probes): one query on one
# thread, one query split over two threads, a batch per query, a big batch.
SHAPES = [("one", 1, 1, (1, 8, 64)), ("one-2t", 1, 2, (64,)), ("mid", 20, 2, (4, 16)),
          ("batch", None, 2, (1, 8, 32))]
KS = (1, 10, 100)


def digest(*arrays):
    sha = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        sha.update(str((array.dtype.str, array.shape)).encode())
        sha.update(array.tobytes())
    return sha.hexdigest()[:24]


def run_index(records, name, data, n_lists, n_queries, quantizer, metric, extra):
    base, queries = data["base"], data["queries"][:n_queries]
    params = ivf_sq.IndexParams(n_lists=n_lists, metric=metric, quantizer=quantizer, **extra)
    index = ivf_sq.build(params, base)
    tag = f"{name}/{quantizer}/{metric}" + "".join(f"/{k}={v}" for k, v in sorted(extra.items()))
    ids = np.arange(len(index))
    records[f"{tag}/reconstruct"] = digest(ivf_sq.reconstruct(index, ids[:: max(1, len(ids) // 5000)]))
    records[f"{tag}/centers"] = digest(index.centers)
    keep = np.random.default_rng(0).random(len(index)) < 0.3
    for label, count, n_threads, probes in SHAPES:
        rows = queries if count is None else queries[:count]
        resources = Resources(n_threads=n_threads)
        for n_probes in probes:
            search = ivf_sq.SearchParams(n_probes=n_probes)
            for k in KS:
                d, i = ivf_sq.search(search, index, rows, k, resources=resources)
                records[f"{tag}/{label}/p{n_probes}/k{k}"] = digest(d, i)
            d, i = ivf_sq.search(search, index, rows, 10, resources=resources,
                                 filter=filters.from_bitset(keep))
            records[f"{tag}/{label}/p{n_probes}/k10/filter"] = digest(d, i)
    # Range search at the median 10th distance of a mid batch.
    search = ivf_sq.SearchParams(n_probes=8)
    d, _ = ivf_sq.search(search, index, queries[:20], 10)
    radius = float(np.median(d[:, -1]))
    records[f"{tag}/range"] = digest(*ivf_sq.range_search(search, index, queries[:20], radius))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file of digests to write")
    parser.add_argument("--datasets", default=",".join(GRID),
                        help="comma-separated (default: all of " + ", ".join(GRID) + ")")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                        help="compare two digest files instead")
    args = parser.parse_args()
    if args.compare:
        old, new = (json.load(open(path)) for path in args.compare)
        common = sorted(set(old) & set(new))
        differ = [key for key in common if old[key] != new[key]]
        print(f"{len(common)} cases in both, {len(differ)} differ; "
              f"{len(set(old) ^ set(new))} in one file only")
        for key in differ:
            print("  differs:", key)
        return 1 if differ else 0
    records = {}
    for name in args.datasets.split(","):
        n_lists, n_queries, indexes = GRID[name]
        data = load_benchmark_data(name, None)
        for quantizer, metric, extra in indexes:
            start = time.perf_counter()
            run_index(records, name, data, n_lists, n_queries, quantizer, metric, extra)
            print(f"{name} {quantizer} {metric} {extra}: {time.perf_counter() - start:.1f} s",
                  file=sys.stderr)
    with open(args.out, "w") as file:
        json.dump(records, file, indent=0, sort_keys=True)
    print(f"{len(records)} digests written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
