"""Loaders of ivfsq.datasets against files written independently (struct, h5py)."""

import struct

import numpy as np
import pytest

from ivfsq.datasets import load_data, load_vectors, read_ann_hdf5, read_texmex


def write_texmex(path, rows, fmt):
    """TEXMEX writer with struct: per row an int32 dimension, then the values."""
    with open(path, "wb") as file:
        for row in rows:
            file.write(struct.pack("<i", len(row)))
            file.write(struct.pack(f"<{len(row)}{fmt}", *row.tolist()))


@pytest.mark.parametrize(("suffix", "fmt", "dtype"), [
    (".fvecs", "f", np.float32), (".ivecs", "i", np.int32), (".bvecs", "B", np.uint8),
])
@pytest.mark.parametrize("mmap", [True, False])
def test_texmex_round_trip(tmp_path, suffix, fmt, dtype, mmap):
    rng = np.random.default_rng(0)
    rows = (rng.random((37, 5)) * 200).astype(dtype)
    path = tmp_path / f"x{suffix}"
    write_texmex(path, rows, fmt)
    loaded = read_texmex(path, mmap=mmap)
    assert loaded.dtype == dtype and loaded.shape == (37, 5)
    np.testing.assert_array_equal(loaded, rows)
    np.testing.assert_array_equal(load_vectors(path, mmap=mmap), rows)
    assert load_data(path)["base"].shape == (37, 5)


def test_texmex_errors(tmp_path):
    rows = np.ones((4, 3), np.float32)
    path = tmp_path / "x.fvecs"
    write_texmex(path, rows, "f")
    truncated = tmp_path / "t.fvecs"
    truncated.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="t.fvecs.*does not divide the file size"):
        read_texmex(truncated)
    mixed = tmp_path / "m.fvecs"
    write_texmex(mixed, [np.ones(2, np.float32), np.ones(2, np.float32)], "f")
    with open(mixed, "ab") as file:  # a row of dimension 5 then padding to a multiple
        file.write(struct.pack("<i", 5) + b"\0" * 8)
    with pytest.raises(ValueError, match="row 2 declares dimension 5"):
        read_texmex(mixed)
    empty = tmp_path / "e.fvecs"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty or truncated"):
        read_texmex(empty)
    negative = tmp_path / "n.ivecs"
    negative.write_bytes(struct.pack("<i", -3) + b"\0" * 12)
    with pytest.raises(ValueError, match="dimension -3"):
        read_texmex(negative)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_texmex(tmp_path / "missing.fvecs")
    with pytest.raises(ValueError, match="is not a file"):
        read_texmex(tmp_path)  # a folder
    (tmp_path / "x.txt").write_text("1 2")
    with pytest.raises(ValueError, match=r"\.fvecs, \.bvecs or \.ivecs"):
        read_texmex(tmp_path / "x.txt")
    with pytest.raises(TypeError, match="path must be"):
        read_texmex(3)


def test_npy(tmp_path):
    array = np.arange(12, dtype=np.float16).reshape(4, 3)
    np.save(tmp_path / "a.npy", array)
    loaded = load_vectors(tmp_path / "a.npy")
    assert isinstance(loaded, np.memmap) and not loaded.flags.writeable
    np.testing.assert_array_equal(loaded, array)
    np.save(tmp_path / "one_d.npy", np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        load_vectors(tmp_path / "one_d.npy")
    np.save(tmp_path / "objects.npy", np.array([[{}]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy"):
        load_vectors(tmp_path / "objects.npy", mmap=False)  # never unpickled
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"\.npy, \.fvecs"):
        load_vectors(tmp_path / "x.csv")


def test_ann_benchmarks_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(1)
    train = rng.random((50, 4), dtype=np.float32)
    test = rng.random((6, 4), dtype=np.float32)
    neighbors = rng.integers(0, 50, (6, 10), dtype=np.int32)
    path = tmp_path / "glove-4-angular.hdf5"
    with h5py.File(path, "w") as handle:
        handle["train"] = train
        handle["test"] = test
        handle["neighbors"] = neighbors
        handle["distances"] = rng.random((6, 10), dtype=np.float32)
        handle.attrs["distance"] = "angular"
    data = read_ann_hdf5(path)
    np.testing.assert_array_equal(data["base"], train)
    np.testing.assert_array_equal(data["queries"], test)
    np.testing.assert_array_equal(data["gt"], neighbors)
    assert data["metric"] == "cosine" and data["name"] == "glove-4-angular"
    assert load_data(path, "sqeuclidean")["metric"] == "sqeuclidean"

    no_test = tmp_path / "no_test.hdf5"
    with h5py.File(no_test, "w") as handle:
        handle["train"] = train
    with pytest.raises(ValueError, match="no test data set"):
        read_ann_hdf5(no_test)
    jaccard = tmp_path / "j.hdf5"
    with h5py.File(jaccard, "w") as handle:
        handle["train"] = train
        handle["test"] = test
        handle.attrs["distance"] = "jaccard"
    with pytest.raises(ValueError, match="jaccard.*not supported"):
        read_ann_hdf5(jaccard)
    not_hdf5 = tmp_path / "fake.hdf5"
    not_hdf5.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        read_ann_hdf5(not_hdf5)


def test_load_data_folder(tmp_path):
    base = np.ones((10, 3), np.float32)
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "query.npy", base[:2])
    np.save(tmp_path / "gt_cosine.npy", np.zeros((2, 4), np.int64))
    data = load_data(tmp_path)
    assert data["metric"] == "cosine" and data["gt"].shape == (2, 4)
    with pytest.raises(TypeError, match="path must be"):
        load_data(None)
