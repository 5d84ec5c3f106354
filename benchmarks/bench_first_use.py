"""First use after ``pip install``: how long a fresh process waits, and
whether a later one ever compiles.

For each checkout given (default: this one), the script

1. creates a virtual environment in a temporary folder and runs
   ``pip install <checkout>`` in it (timed; ``--no-prebuild`` sets
   ``IVFSQ_PREBUILD=0``, which skips compiling the kernels while building);
2. **cold**: runs a fresh process that imports ivfsq, builds a 20,000 x 64
   index (``IndexParams()`` defaults but ``n_lists``), then searches one
   query and a batch of 1,000 (``SearchParams()``, k=10), and times each
   step and the whole process, first with ``NUMBA_CACHE_DIR`` set to an
   empty folder, then with numba's default cache (beside the installed
   package);
3. **warm**: runs a later process with the default cache that times every
   search of a sweep on that index (``n_probes`` 1 to all 256 lists, ``k``
   1 to 1,000, batches of 1 to 1,000 queries, with and without a filter;
   then 10,000 queries at 1, 16 and 256 probes) and the first 1,000-query
   batch on indexes of other codecs, metrics and shapes (among them 384-d
   SQ4 cosine), and counts numba compilations (``slowest_at``: n_probes,
   k, queries, filtered).

Each process is measured from outside (wall clock, interpreter start
included) and inside (per step). ``--peers`` also times the same cold
process with FAISS IVF-SQ8 and hnswlib, from the running interpreter's
environment (``pip install ".[bench]"``). Run it alone: compilation is
CPU-bound.

    PYTHONPATH=src python benchmarks/bench_first_use.py
    PYTHONPATH=src python benchmarks/bench_first_use.py --checkout /path/to/other/clone --no-prebuild
    PYTHONPATH=src python benchmarks/bench_first_use.py --peers
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

def first_process(imports, build, search):
    """The cold script: import (``imports``), build a 20,000 x 64 index
    (``build``, which defines ``search(rows)``), search one query and 1,000,
    each step timed; it prints a RESULT line."""
    return "\n".join([
        "import time",
        "start = time.perf_counter()",
        "import numpy as np",
        imports,
        "imported = time.perf_counter()",
        "rng = np.random.default_rng(0)",
        "dataset = rng.random((20_000, 64), dtype=np.float32)",
        "queries = rng.random((1_000, 64), dtype=np.float32)",
        textwrap.dedent(build),
        "built = time.perf_counter()",
        f"{search}(queries[:1])",
        "one = time.perf_counter()",
        f"{search}(queries)",
        "batch = time.perf_counter()",
        'print("RESULT", {"import": imported - start, "build": built - imported,',
        '                 "one_query": one - built, "batch_1000": batch - one})',
    ])


COLD = first_process(
    "from ivfsq.neighbors import ivf_sq",
    """
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=256), dataset)
    params = ivf_sq.SearchParams()
    """,
    "(lambda rows: ivf_sq.search(params, index, rows, 10))")

# The same first process for the peers (installed in the running
# interpreter's environment; they compile nothing at run time).
PEERS = {
    "faiss IVF256,SQ8": first_process(
        "import faiss",
        """
        index = faiss.index_factory(64, "IVF256,SQ8")
        index.train(dataset)
        index.add(dataset)
        index.nprobe = 20
        """,
        "(lambda rows: index.search(rows, 10))"),
    "hnswlib M16": first_process(
        "import hnswlib",
        """
        index = hnswlib.Index(space="l2", dim=64)
        index.init_index(max_elements=20_000, M=16, ef_construction=200)
        index.add_items(dataset)
        index.set_ef(50)
        """,
        "(lambda rows: index.knn_query(rows, k=10))"),
}

WARM = textwrap.dedent("""
    import gc, time
    import numpy as np
    from numba.core.dispatcher import Dispatcher
    from ivfsq.neighbors import filters, ivf_sq

    def compilations():
        # numba compilations (cache misses) of ivfsq's functions, by name.
        return {d.py_func.__qualname__: sum(d._cache_misses.values())
                for d in gc.get_objects()
                if isinstance(d, Dispatcher) and sum(d._cache_misses.values())
                and getattr(d.py_func, "__module__", "").startswith("ivfsq")}

    rng = np.random.default_rng(0)
    dataset = rng.random((20_000, 64), dtype=np.float32)
    queries = rng.random((10_000, 64), dtype=np.float32)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=256), dataset)
    keep = filters.from_bitset(rng.random(len(index)) < 0.05)
    slowest = (0.0, None)
    calls = 0
    for n_probes in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        for k in (1, 10, 100, 1000):
            for n_queries in (1, 2, 8, 9, 100, 1000):
                for filter in (None, keep):
                    start = time.perf_counter()
                    ivf_sq.search(ivf_sq.SearchParams(n_probes=n_probes), index,
                                  queries[:n_queries], k, filter=filter)
                    seconds = time.perf_counter() - start
                    calls += 1
                    key = (n_probes, k, n_queries, filter is not None)
                    slowest = max(slowest, (seconds, key))
    # The slowest call again: the same time means it was the search's work,
    # not compilation.
    n_probes, k, n_queries, filtered = slowest[1]
    start = time.perf_counter()
    ivf_sq.search(ivf_sq.SearchParams(n_probes=n_probes), index, queries[:n_queries], k,
                  filter=keep if filtered else None)
    slowest_again = time.perf_counter() - start
    # 10,000 queries: the list-major path at every n_probes (the time is
    # the scan's, up to 10,000 x 20,000 distances at 256 probes).
    big = {}
    for n_probes in (1, 16, 256):
        start = time.perf_counter()
        ivf_sq.search(ivf_sq.SearchParams(n_probes=n_probes), index, queries, 10)
        big[n_probes] = time.perf_counter() - start
    sweep_compilations = compilations()
    others = {}
    for name, dim, params in [
        ("384-d sq4 cosine", 384, dict(quantizer="sq4", metric="cosine")),
        ("96-d sq8 inner_product", 96, dict(metric="inner_product")),
        ("128-d sq4 reorder float16", 128,
         dict(quantizer="sq4", reorder=True, precise_dtype="float16")),
        ("200-d sq8_uniform rom euclidean", 200,
         dict(quantizer="sq8_uniform", transform="rom", metric="euclidean")),
    ]:
        data = rng.standard_normal((20_000, dim)).astype(np.float32)
        other = ivf_sq.build(ivf_sq.IndexParams(n_lists=128, **params), data)
        start = time.perf_counter()
        ivf_sq.search(ivf_sq.SearchParams(n_probes=16), other, data[:1000], 10)
        others[name] = time.perf_counter() - start
    print("RESULT", {"calls": calls, "slowest_call": slowest[0],
                     "slowest_at": slowest[1], "slowest_again": slowest_again,
                     "batch_10000_by_n_probes": big,
                     "compiled_in_sweep": sweep_compilations,
                     "first_batch_other_indexes": others,
                     "compiled_in_all": compilations()})
""")


def run(command, env=None, cwd=None, timeout=3600):
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout, seconds


def result_of(stdout):
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            import ast

            return ast.literal_eval(line[len("RESULT "):])
    raise ValueError(f"no RESULT line in:\n{stdout}")


def clean_env(**extra):
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("NUMBA_", "IVFSQ_")) and name != "PYTHONPATH"}
    env.update(extra)
    return env


def install(checkout, folder, prebuild):
    venv = os.path.join(folder, "venv")
    run([sys.executable, "-m", "venv", venv])
    python = os.path.join(venv, "bin", "python")
    env = clean_env() if prebuild else clean_env(IVFSQ_PREBUILD="0")
    _, seconds = run([python, "-m", "pip", "install", "--quiet", checkout], env=env,
                     cwd=folder)
    return python, seconds


def measure(checkout, prebuild, workdir):
    report = {"checkout": checkout, "prebuild": prebuild}
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report["commit"] = commit
    folder = tempfile.mkdtemp(dir=workdir)
    python, report["install_seconds"] = install(checkout, folder, prebuild)
    # First with an empty NUMBA_CACHE_DIR, before anything is cached beside
    # the installed package; then with numba's default cache.
    cache = os.path.join(folder, "numba-cache")
    os.mkdir(cache)
    stdout, seconds = run([python, "-c", COLD], env=clean_env(NUMBA_CACHE_DIR=cache),
                          cwd=folder)
    report["cold_empty_numba_cache_dir"] = dict(result_of(stdout), process=seconds)
    stdout, seconds = run([python, "-c", COLD], env=clean_env(), cwd=folder)
    report["cold"] = dict(result_of(stdout), process=seconds)
    stdout, seconds = run([python, "-c", WARM], env=clean_env(), cwd=folder)
    report["warm"] = dict(result_of(stdout), process=seconds)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", default=None,
                        help="a checkout to install (repeatable; default: this one)")
    parser.add_argument("--no-prebuild", action="store_true",
                        help="install with IVFSQ_PREBUILD=0 as well")
    parser.add_argument("--peers", action="store_true",
                        help="also time the same first process with FAISS and hnswlib "
                             "(from this interpreter's environment)")
    parser.add_argument("--out", default="benchmarks/results/first-use.json")
    args = parser.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checkouts = [os.path.abspath(c) for c in (args.checkout or [here])]
    reports = []
    with tempfile.TemporaryDirectory() as workdir:
        for checkout in checkouts:
            for prebuild in ((True, False) if args.no_prebuild else (True,)):
                report = measure(checkout, prebuild, workdir)
                print(json.dumps(report, indent=1), flush=True)
                reports.append(report)
    peers = {}
    if args.peers:
        for name, code in PEERS.items():
            stdout, seconds = run([sys.executable, "-c", code], env=clean_env())
            peers[name] = dict(result_of(stdout), process=seconds)
            print(name, json.dumps(peers[name]), flush=True)
        reports.append({"peers": peers})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(reports, file, indent=1)
    print(f"{'checkout':>10} {'prebuild':>8} {'install':>8} {'cold total':>10} "
          f"{'(empty dir)':>11} {'warm slowest':>12} {'compiles':>8}")
    for r in reports:
        if "peers" in r:
            continue
        print(f"{r['commit']:>10} {str(r['prebuild']):>8} {r['install_seconds']:8.1f} "
              f"{r['cold']['process']:10.2f} {r['cold_empty_numba_cache_dir']['process']:11.2f} "
              f"{r['warm']['slowest_call']:12.3f} "
              f"{sum(r['warm']['compiled_in_all'].values()):8d}")
    for name, peer in peers.items():
        print(f"{name:>19} {'':>8} {peer['process']:10.2f}")


if __name__ == "__main__":
    main()
