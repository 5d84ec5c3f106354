"""After a warm-up, nothing compiles: every kernel variant the library's
operations use was compiled (or loaded) by :func:`ivfsq.warm_up`."""

import gc
import os
import subprocess
import sys

import numpy as np
from numba.core.dispatcher import Dispatcher

import ivfsq
from ivfsq.common import Resources
from ivfsq.neighbors import filters, ivf_sq, refine


def compilations():
    """numba compilations (cache misses) so far of ivfsq's functions, by name."""
    counts = {}
    for thing in gc.get_objects():
        if isinstance(thing, Dispatcher) and getattr(
                thing.py_func, "__module__", "").startswith("ivfsq"):
            misses = sum(thing._cache_misses.values())
            if misses:
                name = f"{thing.py_func.__module__}.{thing.py_func.__qualname__}"
                counts[name] = counts.get(name, 0) + misses
    return counts


def run_everything(seed):
    """Operations with shapes, sizes and parameters the warm-up never used."""
    rng = np.random.default_rng(seed)
    dim = int(rng.choice([17, 96, 130]))
    n = int(rng.integers(1500, 2500))
    dataset = rng.standard_normal((n, dim)).astype(np.float32)
    queries = np.asfortranarray(rng.standard_normal((40, dim)))  # float64, not C order
    for quantizer, metric, extra in [
        ("sq8", "sqeuclidean", {}),
        ("sq4", "cosine", dict(reorder=True, precise_dtype="float16")),
        ("sq8_uniform", "inner_product", dict(transform="rom", reorder=True)),
        ("sq4_uniform", "euclidean", dict(by_residual=False)),
    ]:
        n_lists = int(rng.integers(8, 40))
        index = ivf_sq.build(ivf_sq.IndexParams(n_lists=n_lists, metric=metric,
                                                quantizer=quantizer, **extra), dataset)
        keep = rng.random(index.next_id) < 0.2
        bitmap = rng.random((37, index.next_id)) < 0.05
        first_passes = (None, 30) if quantizer.startswith("sq8") else (None,)
        for n_probes in (1, 3, n_lists // 2, n_lists):
            for first_pass in first_passes:
                params = ivf_sq.SearchParams(
                    n_probes=n_probes, first_pass_candidates=first_pass,
                    refine_ratio=2.5 if extra.get("reorder") else None)
                for n_queries in (1, 2, 7, 37, 40):
                    for k in (1, 13, 100):
                        for threads in (1, 2):
                            ivf_sq.search(params, index, queries[:n_queries], k,
                                          resources=Resources(n_threads=threads))
                ivf_sq.search(params, index, queries, 10, filter=filters.from_bitset(keep))
                ivf_sq.search(params, index, queries[:37], 10,
                              filter=filters.from_bitmap(bitmap))
            ivf_sq.range_search(ivf_sq.SearchParams(n_probes=n_probes), index,
                                queries[:5], 50.0)
        ivf_sq.extend(index, dataset[:50].astype(np.float16), None)
        ivf_sq.remove(index, np.arange(0, 200, 3))
        ivf_sq.reconstruct(index, np.arange(1, 30, 3))
        copy = ivf_sq.from_bytes(index.to_bytes())
        ivf_sq.search(ivf_sq.SearchParams(n_probes=4), copy, queries, 5)
        ivf_sq.tune(index, queries[:8].astype(np.float32), target_recall=0.8, k=5)
    refine(dataset, queries, rng.integers(0, n, size=(40, 20)), 5)


def test_nothing_compiles_after_a_warm_up():
    """Warm up here, then run everything in a new process with the same
    cache: it loads every kernel, and compiles nothing (a function numba
    does not cache, called from Python, would compile in every process)."""
    ivfsq.warm_up()
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import test_warmup as t\n"
            "t.run_everything(seed=1)\n"
            "print('COMPILED', t.compilations())" % os.path.dirname(__file__))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = result.stdout.split("COMPILED", 1)[1].strip()
    assert compiled == "{}", f"compiled after the warm-up: {compiled}"


def test_cli_warmup_runs_and_reports():
    # After the test above, every variant loads from the cache: seconds.
    result = subprocess.run([sys.executable, "-m", "ivfsq", "warmup", "--quiet"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("every kernel variant is compiled (")
    for bad in ("x", "2/2", "1/0"):
        result = subprocess.run([sys.executable, "-m", "ivfsq", "warmup", "--part", bad],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert f"--part must be I/N with 0 <= I < N, got {bad!r}" in result.stderr
