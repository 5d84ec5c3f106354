"""ns per scanned row of the scan kernels against the machine's bounds.

For each dimension, one query's scan of N rows of 8-bit codes, on one
thread, data in cache (a few thousand rows, scanned again and again) and
not (rows well past the last-level cache):

- the 4-bit first pass (``kernels.fastscan.block_scores``, 16 rows a call;
  the block layout of ``first_pass_layout``);
- the exact 8-bit scan's integer dot, four rows a call
  (``kernels.simd.dots_4rows_bytes``; the first step of every row of the
  exact scan).

Beside them: the read bandwidth of one thread (NumPy summing a large
uint8 array viewed as uint64) and what it implies in ns per row of each
layout, and the multiply-add bound of the first pass (two ``vpmaddubsw`` a
group of four dimensions and 16 rows, at two a cycle, at the clock
``/proc/cpuinfo`` reports). Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_scan_rate.py
"""

import argparse
import time

import numpy as np
from common import cpu_model  # noqa: F401  (puts src on the path when not installed)
from numba import njit

from ivfsq.backends.cpu import fastscan
from ivfsq.backends.cpu.kernels import fastscan as kernel
from ivfsq.backends.cpu.kernels import simd
from ivfsq.ivf.lists import ListStorage


@njit(nogil=True)
def _first_pass(blocks, weights, aux, n_blocks, repeats):
    out = np.empty(kernel.BLOCK_ROWS, dtype=np.float32)
    quads = np.int64(blocks.shape[1] // (kernel.QUAD_GROUPS * kernel.GROUP_BYTES))
    passed = 0
    one, zero = np.float32(1.0), np.float32(0.0)
    for _ in range(repeats):
        for b in range(n_blocks):
            passed += kernel.block_scores(blocks, b, weights, quads, zero, one, zero, one, aux,
                                          np.float32(-1e30), out) != 0
    return passed


@njit(nogil=True)
def _int_dots(codes, weights, n_chunks, n_rows, repeats):
    total = np.int64(0)
    for _ in range(repeats):
        for row in range(0, n_rows - 3, 4):
            a, b, c, d = simd.dots_4rows_bytes(codes, row, weights, 0, n_chunks)
            total += a + b + c + d
    return total


def best_seconds(call, runs=5):
    call()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def read_bandwidth(n_bytes=1 << 30):
    """Bytes per second one thread reads (a sum over a uint64 view)."""
    data = np.ones(n_bytes // 8, dtype=np.uint64)
    return n_bytes / best_seconds(lambda: data.sum(), runs=3)


def clock_ghz():
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    return float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", default="48,128,384,784")
    parser.add_argument("--cached-rows", type=int, default=4096)
    parser.add_argument("--memory-bytes", type=int, default=256 << 20,
                        help="bytes of 4-bit codes for the out-of-cache runs (default 256 MiB)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    bandwidth = read_bandwidth()
    ghz = clock_ghz()
    print(f"one thread reads {bandwidth / 1e9:.1f} GB/s; clock {ghz:.2f} GHz (/proc/cpuinfo); "
          f"AVX2 kernels: {simd.HAS_AVX2_DOTS}")
    header = ("dim | rows | first pass ns/row | its bound: madd, memory | "
              "exact int dot ns/row | its memory bound")
    print(header)
    for dim in (int(value) for value in args.dims.split(",")):
        row_bytes = kernel.block_bytes(dim) / kernel.BLOCK_ROWS + 4
        for label, n_rows in (("cached", args.cached_rows),
                              ("memory", int(args.memory_bytes // row_bytes) // 16 * 16)):
            codes = rng.integers(0, 256, size=(n_rows, dim), dtype=np.uint8)
            lists = ListStorage(codes, np.arange(n_rows), rng.random(n_rows).astype(np.float32),
                                np.array([0]), np.array([n_rows]), np.array([n_rows]))
            layout = fastscan.first_pass_layout(lists, dim)
            weights = rng.integers(-127, 128, size=layout.blocks.shape[1] * 2).astype(np.int8)
            repeats = max(1, 4_000_000 // n_rows)
            n_blocks = layout.blocks.shape[0]
            seconds = best_seconds(
                lambda: _first_pass(layout.blocks, weights, layout.aux, n_blocks, repeats))
            first = seconds / (n_rows * repeats) * 1e9
            groups = kernel.n_quads(dim) * kernel.QUAD_GROUPS
            madd_bound = 2 * groups / kernel.BLOCK_ROWS / 2 / ghz
            memory_bound = row_bytes / bandwidth * 1e9
            n_chunks = simd.n_int_weights(8, dim) // simd.WEIGHTS_PER_CHUNK[8]
            exact = float("nan")
            if n_chunks:
                int_weights = rng.integers(-1000, 1000, size=(1, n_chunks * 16)).astype(np.int16)
                seconds = best_seconds(
                    lambda: _int_dots(codes, int_weights, n_chunks, n_rows, repeats))
                exact = seconds / (n_rows * repeats) * 1e9
            print(f"{dim} | {n_rows:,} ({label}) | {first:.2f} | {madd_bound:.2f}, "
                  f"{memory_bound:.2f} | {exact:.2f} | {dim / bandwidth * 1e9:.2f}")


if __name__ == "__main__":
    main()
