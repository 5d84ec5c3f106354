"""The ``ivfsq`` command, run end to end in subprocesses on small data."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import exact_knn, recall

from ivfsq.datasets import make_blobs_lowrank, read_texmex


def run(*args, cwd=None):
    """``python -m ivfsq ARGS``: (exit status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "ivfsq", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    base, queries = make_blobs_lowrank(3000, 24, n_queries=40, seed=5)
    np.save(folder / "base.npy", base)
    np.save(folder / "query.npy", queries)
    _, truth = exact_knn(base, queries, 20, "sqeuclidean")
    np.save(folder / "gt_l2.npy", truth)
    index = folder / "index.ivfsq"
    status, out, err = run("build", folder / "base.npy", "-o", index, "--n-lists", 16, "--quiet")
    assert status == 0, err
    return {"folder": folder, "base": base, "queries": queries, "truth": truth,
            "index": index, "build_out": out}


def test_build_writes_index_and_summary(files):
    out = files["build_out"]
    assert files["index"].is_file()
    assert "vectors          3,000" in out
    assert "lists            16" in out
    assert "bytes per vector" in out and "build time" in out


def test_search_writes_results_and_prints_true_recall(files, tmp_path):
    result = tmp_path / "result.npy"
    status, out, err = run("search", files["index"], files["folder"] / "query.npy", "-k", 5,
                           "--n-probes", 6, "-o", result, "--gt", files["folder"] / "gt_l2.npy")
    assert status == 0, err
    neighbors = np.load(result)
    distances = np.load(tmp_path / "result_dist.npy")
    assert neighbors.shape == (40, 5) and distances.shape == (40, 5)
    assert np.all(np.diff(distances, axis=1) >= 0)
    printed = float(out.split("recall@5 ")[1].split()[0])
    assert printed == pytest.approx(recall(neighbors, files["truth"][:, :5]), abs=1e-4)
    assert printed > 0.8


def test_search_with_all_probes_finds_the_exact_neighbours_mostly(files):
    status, out, err = run("search", files["index"], files["folder"], "-k", 10,
                           "--n-probes", 16, "--gt", files["folder"])
    assert status == 0, err
    assert float(out.split("recall@10 ")[1].split()[0]) > 0.9
    # A memory-mapped index gives the same results.
    status, mapped, err = run("search", files["index"], files["folder"], "-k", 10,
                              "--n-probes", 16, "--gt", files["folder"], "--mmap")
    assert status == 0, err
    assert mapped.split("recall@10 ")[1] == out.split("recall@10 ")[1]


def test_search_with_a_first_pass_finds_what_the_exact_scan_finds(files):
    status, exact, err = run("search", files["index"], files["folder"], "-k", 10,
                             "--n-probes", 8, "--gt", files["folder"])
    assert status == 0, err
    status, first, err = run("search", files["index"], files["folder"], "-k", 10,
                             "--n-probes", 8, "--gt", files["folder"],
                             "--first-pass-candidates", 200)
    assert status == 0, err
    recall = float(first.split("recall@10 ")[1].split()[0])
    assert abs(recall - float(exact.split("recall@10 ")[1].split()[0])) <= 0.005
    status, _, err = run("search", files["index"], files["folder"], "--first-pass-candidates", 0)
    assert status == 2 and "--first-pass-candidates: expected a positive integer, got '0'" in err


def test_search_keeps_only_the_given_ids(files, tmp_path):
    base, queries = files["base"], files["queries"]
    kept = np.random.default_rng(0).choice(3000, size=25, replace=False)
    np.save(tmp_path / "keep.npy", kept)
    result = tmp_path / "kept.npy"
    status, out, err = run("search", files["index"], files["folder"] / "query.npy", "-k", 5,
                           "--n-probes", 2, "--keep", tmp_path / "keep.npy", "-o", result)
    assert status == 0, err
    _, truth = exact_knn(base[kept], queries, 5, "sqeuclidean")
    neighbors = np.load(result)
    assert np.isin(neighbors, kept).all()
    assert recall(neighbors, kept[truth]) > 0.95
    # A 2-D mask: one row per query.
    masks = np.zeros((40, 3000), dtype=bool)
    masks[np.arange(40), np.arange(40) * 7] = True
    np.save(tmp_path / "masks.npy", masks)
    status, _, err = run("search", files["index"], files["folder"] / "query.npy", "-k", 1,
                         "--keep", tmp_path / "masks.npy", "-o", result)
    assert status == 0, err
    np.testing.assert_array_equal(np.load(result)[:, 0], np.arange(40) * 7)
    np.save(tmp_path / "bad.npy", np.array([5, 3000]))
    assert_one_line_error(*run("search", files["index"], files["folder"] / "query.npy",
                               "--keep", tmp_path / "bad.npy"), "--keep", "[0, 3000)")


def test_search_refine_ratio_needs_a_precise_store(files, tmp_path):
    assert_one_line_error(*run("search", files["index"], files["folder"], "--refine-ratio", 2),
                          "refine_ratio", "reorder=True")
    index = tmp_path / "reorder.ivfsq"
    status, _, err = run("build", files["folder"] / "base.npy", "-o", index, "--n-lists", 16,
                         "--reorder", "--precise-dtype", "float16", "--quiet")
    assert status == 0, err
    status, out, err = run("search", index, files["folder"], "-k", 10, "--n-probes", 16,
                           "--refine-ratio", 4, "--gt", files["folder"])
    assert status == 0, err
    assert float(out.split("recall@10 ")[1].split()[0]) > 0.99  # exact re-ranking


def test_info_text_and_json(files):
    status, out, err = run("info", files["index"])
    assert status == 0, err
    assert "3,000 x 24" in out and "imbalance factor" in out and "format" in out
    assert "codes" in out  # memory breakdown
    status, out, err = run("info", files["index"], "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["size"] == 3000 and info["dim"] == 24 and info["n_lists"] == 16
    assert info["list_sizes"]["max"] >= info["list_sizes"]["min"]
    assert sum(info["memory_breakdown"].values()) == info["memory_bytes"]
    assert info["index_layout_version"] == 2


@pytest.mark.parametrize("suffix", [".npy", ".ivecs"])
def test_gt_matches_brute_force(files, tmp_path, suffix):
    output = tmp_path / f"gt{suffix}"
    status, out, err = run("gt", files["folder"] / "base.npy", files["folder"] / "query.npy",
                           "-k", 7, "--metric", "cosine", "-o", output)
    assert status == 0, err
    ids = np.load(output) if suffix == ".npy" else read_texmex(output)
    _, truth = exact_knn(files["base"], files["queries"], 7, "cosine")
    assert recall(ids, truth) >= 0.999
    if suffix == ".npy":
        assert np.load(tmp_path / "gt_dist.npy").shape == (40, 7)


def test_bench_on_a_folder_writes_table_jsonl_and_plot(files, tmp_path):
    status, out, err = run("bench", files["folder"], "--n-lists", 16, "--n-probes", "1,4,16",
                           "--latency-queries", 5, "--out", tmp_path / "b.jsonl",
                           "--plot", tmp_path / "b.png", "--quiet")
    assert status == 0, err
    records = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["n_probes"] for r in records] == [1, 4, 16]
    assert all(0.0 <= r["recall"] <= 1.0 and r["qps"] > 0 for r in records)
    assert records[2]["recall"] > 0.9 and records[2]["recall"] >= records[0]["recall"]
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The recall printed is the recall recorded.
    assert f"{records[1]['recall']:.4f}" in out


def test_bench_without_data_runs_on_synthetic_data(tmp_path):
    status, out, err = run("bench", "--n-rows", 2000, "--dim", 16, "--n-queries", 30,
                           "--n-probes", "2,8", "--latency-queries", 0, "--quiet", cwd=tmp_path)
    assert status == 0, err
    assert "synthetic" in out
    assert (tmp_path / "ivfsq_bench.jsonl").is_file() and (tmp_path / "ivfsq_bench.png").is_file()


def test_build_from_texmex_and_hdf5(files, tmp_path):
    h5py = pytest.importorskip("h5py")
    base = files["base"]
    record = np.hstack([np.full((len(base), 1), base.shape[1], "<i4").view("<f4"), base])
    record.astype("<f4").tofile(tmp_path / "base.fvecs")
    status, out, err = run("build", tmp_path / "base.fvecs", "-o", tmp_path / "f.ivfsq",
                           "--n-lists", 8, "--quiet")
    assert status == 0, err
    with h5py.File(tmp_path / "data.hdf5", "w") as handle:
        handle["train"] = base
        handle["test"] = files["queries"]
        handle["neighbors"] = files["truth"]
        handle.attrs["distance"] = "euclidean"
    status, out, err = run("build", tmp_path / "data.hdf5", "-o", tmp_path / "h.ivfsq",
                           "--n-lists", 8, "--quiet")
    assert status == 0, err
    status, out, err = run("search", tmp_path / "h.ivfsq", tmp_path / "data.hdf5", "-k", 10,
                           "--n-probes", 8, "--gt", tmp_path / "data.hdf5")
    assert status == 0, err
    assert float(out.split("recall@10 ")[1].split()[0]) > 0.9


# ------------------------------------------------------------------- errors
def assert_one_line_error(status, out, err, *fragments):
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_file(files, tmp_path):
    assert_one_line_error(*run("build", tmp_path / "nope.npy", "-o", tmp_path / "x"),
                          "no such file", "nope.npy")
    assert_one_line_error(*run("search", tmp_path / "nope.ivfsq", files["folder"]),
                          "no such file")
    assert_one_line_error(*run("info", tmp_path / "nope.ivfsq"), "no such file")


def test_wrong_format(files, tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_text("not an array")
    assert_one_line_error(*run("build", bad, "-o", tmp_path / "x"), "bad.npy")
    text = tmp_path / "vectors.txt"
    text.write_text("1 2 3")
    assert_one_line_error(*run("build", text, "-o", tmp_path / "x"), ".fvecs")


def test_dimension_mismatch(files, tmp_path):
    np.save(tmp_path / "q.npy", np.ones((3, 5), np.float32))
    assert_one_line_error(*run("search", files["index"], tmp_path / "q.npy"),
                          "dimension 5", "dimension 24")


def test_corrupt_index(files, tmp_path):
    corrupt = tmp_path / "corrupt.ivfsq"
    data = bytearray(files["index"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    assert_one_line_error(*run("info", corrupt), "corrupt.ivfsq")
    assert_one_line_error(*run("search", corrupt, files["folder"]), "corrupt.ivfsq")
    status, out, err = run("search", corrupt, files["folder"], "--debug")
    assert status != 0 and "Traceback" in err


def test_hdf5_without_h5py_is_a_clear_error(files, tmp_path, monkeypatch):
    from ivfsq import datasets

    path = tmp_path / "x.hdf5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install"):
        datasets.read_ann_hdf5(path)


@pytest.mark.parametrize("command", ["build", "search", "bench", "info", "gt"])
def test_help_has_examples(command):
    status, out, err = run(command, "--help")
    assert status == 0
    assert "examples:" in out and f"ivfsq {command}" in out


def test_no_command_prints_help():
    status, out, _ = run()
    assert status == 2 and "build" in out and "search" in out


def test_library_imports_only_numpy_numba_and_threadpoolctl():
    code = (
        "import sys, numpy, numba, threadpoolctl\n"
        "before = set(sys.modules)\n"
        "import ivfsq.neighbors.ivf_sq, ivfsq.neighbors, ivfsq.datasets, ivfsq.distributed\n"
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    # Submodules of the allowed packages may load on import (numba's).
    allowed = {"ivfsq", "numpy", "numba", "llvmlite", "threadpoolctl"}
    third_party = [name for name in eval(done.stdout) if name not in allowed
                   and name.lstrip("_") not in sys.stdlib_module_names
                   and name not in sys.stdlib_module_names]
    assert third_party == []


def test_bench_without_the_cli_extra_names_it_and_goes_on(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None; sys.modules['rich'] = None\n"
        "from ivfsq.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "bench", "--n-rows", "2000", "--dim", "16", "--n-queries",
         "30", "--n-probes", "2,8", "--latency-queries", "0", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'ivfsq[cli]'" in done.stderr
    assert (tmp_path / "ivfsq_bench.jsonl").is_file()
    assert not (tmp_path / "ivfsq_bench.png").exists()
