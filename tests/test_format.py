"""Tests of the index file container format (ivfsq.io.format)."""

import json
import os
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest

from ivfsq.io import format as _format
from ivfsq.io.format import FORMAT_VERSION, MAGIC, IndexFileError, read_index_file, write_index_file

WHITELISTED_DTYPES = [
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float16",
    "float32",
    "float64",
    "bool",
]

PREAMBLE = struct.Struct("<8sIIQII")  # magic, version, flags, toc_nbytes, toc_crc32, reserved


def _random_array(rng, dtype, shape):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f":
        return rng.standard_normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _assert_same_arrays(actual, expected):
    assert list(actual) == list(expected)
    for name, expected_array in expected.items():
        actual_array = actual[name]
        assert actual_array.dtype == expected_array.dtype.newbyteorder("="), name
        assert actual_array.shape == expected_array.shape, name
        np.testing.assert_array_equal(actual_array, expected_array, err_msg=name)


def _small_file(tmp_path):
    """A small valid file with a few sections, some needing padding."""
    path = tmp_path / "small.ivfsq"
    header = {"n_lists": 3, "metric": "sqeuclidean", "scale": 0.5}
    arrays = {
        "codes": np.arange(10, dtype=np.uint8).reshape(2, 5),
        "flags": np.array([True, False, True]),
        "centers": np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        "empty": np.zeros((0, 4), dtype=np.int64),
    }
    write_index_file(path, header, arrays)
    return path, header, arrays


def _split(data):
    """Split file bytes into preamble fields, the parsed TOC and the rest."""
    fields = PREAMBLE.unpack(data[: PREAMBLE.size])
    toc_nbytes = fields[3]
    toc = json.loads(data[PREAMBLE.size : PREAMBLE.size + toc_nbytes])
    rest = data[PREAMBLE.size + toc_nbytes :]
    return fields, toc, rest


def _pack(toc_bytes, rest=b"", *, version=FORMAT_VERSION, flags=0, magic=MAGIC):
    """Build file bytes with a correct TOC checksum around arbitrary TOC bytes."""
    covered = PREAMBLE.pack(magic, version, flags, len(toc_bytes), 0, 0)[:24]
    toc_crc = zlib.crc32(toc_bytes, zlib.crc32(covered))
    return PREAMBLE.pack(magic, version, flags, len(toc_bytes), toc_crc, 0) + toc_bytes + rest


def _rewrite_toc(data, mutate):
    """Return file bytes with a mutated TOC, keeping the data sections aligned."""
    _, toc, rest = _split(data)
    old_toc_end = len(data) - len(rest)
    old_data_start = -(-old_toc_end // 64) * 64
    sections_bytes = data[old_data_start:]
    replacement = mutate(toc)  # edits toc in place, or returns a whole new TOC
    if replacement is not None:
        toc = replacement
    toc_bytes = json.dumps(toc, separators=(",", ":")).encode()
    new_toc_end = PREAMBLE.size + len(toc_bytes)
    padding = bytes(-(-new_toc_end // 64) * 64 - new_toc_end) if sections_bytes else b""
    return _pack(toc_bytes, padding + sections_bytes)


# ----------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------


def test_round_trip_all_dtypes_and_shapes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for i, dtype in enumerate(WHITELISTED_DTYPES):
        arrays[f"{dtype}_2d"] = _random_array(rng, dtype, (7, 3 + i))
        arrays[f"{dtype}_scalar"] = _random_array(rng, dtype, ())
        arrays[f"{dtype}_empty"] = _random_array(rng, dtype, (0, 5))
    arrays["cube"] = _random_array(rng, "float32", (2, 3, 4, 5))
    arrays["1d"] = _random_array(rng, "int32", (13,))
    header = {
        "n_lists": 16,
        "metric": "inner_product",
        "ratio": 0.25,
        "adaptive": True,
        "missing": None,
        "dims": (1, 2, 3),
        "nested": {"list": [1, "two", 3.0, [False]], "unicode": "é—\U0001f600"},
        "big": 2**70,
    }
    path = tmp_path / "index.ivfsq"
    write_index_file(path, header, arrays)
    read_header, read_arrays = read_index_file(path)
    assert read_header == json.loads(json.dumps(header))
    assert read_header["dims"] == [1, 2, 3]
    _assert_same_arrays(read_arrays, arrays)
    for array in read_arrays.values():
        assert array.flags.writeable and array.flags.c_contiguous


def test_non_contiguous_and_big_endian_input(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    base = _random_array(rng, "float64", (40, 30))
    # Tiny chunks so that the block-wise conversion path is exercised.
    monkeypatch.setattr(_format, "_CHUNK_NBYTES", 100)
    arrays = {
        "transposed": base.T,
        "strided": base[::3, 1::2],
        "reversed": base[::-1],
        "big_endian": base.astype(">f8"),
        "big_endian_int": np.arange(20, dtype=">u4").reshape(4, 5)[:, ::2],
        "fortran": np.asfortranarray(base[:5, :7]),
        "column_scalar_view": base[3, 4, ...],
    }
    path = tmp_path / "index.ivfsq"
    write_index_file(path, {}, arrays)
    header, read_arrays = read_index_file(path)
    assert header == {}
    _assert_same_arrays(read_arrays, arrays)
    _, mapped = read_index_file(path, mmap=True)
    _assert_same_arrays(mapped, arrays)


def test_data_is_little_endian_and_aligned(tmp_path):
    path, _, arrays = _small_file(tmp_path)
    data = path.read_bytes()
    fields, toc, rest = _split(data)
    assert fields[0] == MAGIC and fields[1] == FORMAT_VERSION == 1 and fields[2] == 0 and fields[5] == 0
    data_start = -(-(PREAMBLE.size + fields[3]) // 64) * 64
    for section in toc["sections"]:
        start = data_start + section["offset"]
        assert start % 64 == 0
        stored = np.frombuffer(data, dtype=np.dtype(section["dtype"]).newbyteorder("<"),
                               count=int(np.prod(section["shape"])), offset=start)
        np.testing.assert_array_equal(stored.reshape(section["shape"]), arrays[section["name"]])
        assert section["crc32"] == f"{zlib.crc32(data[start:start + section['nbytes']]):08x}"


def test_mmap_round_trip_matches_plain_read(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {dtype: _random_array(rng, dtype, (5, 3)) for dtype in WHITELISTED_DTYPES}
    arrays["scalar"] = np.float32(3.5) * np.ones((), np.float32)
    arrays["empty"] = np.zeros((3, 0), np.uint16)
    path = tmp_path / "index.ivfsq"
    write_index_file(path, {"a": 1}, arrays)
    header, plain = read_index_file(path)
    mapped_header, mapped = read_index_file(path, mmap=True)
    assert mapped_header == header == {"a": 1}
    _assert_same_arrays(mapped, plain)
    for name, array in mapped.items():
        assert not array.flags.writeable
        if array.size:
            assert isinstance(array, np.memmap), name
    with pytest.raises(ValueError):
        mapped["uint8"][0, 0] = 1


def test_empty_file_contents(tmp_path):
    path = tmp_path / "index.ivfsq"
    write_index_file(path, {}, {})
    assert read_index_file(path) == ({}, {})
    assert read_index_file(path, mmap=True) == ({}, {})


def test_pathlike_and_str_paths(tmp_path):
    write_index_file(str(tmp_path / "a"), {"x": 1}, {"v": np.ones(3)})
    header, arrays = read_index_file(os.fspath(tmp_path / "a"))
    assert header == {"x": 1}


def test_file_permissions_follow_umask(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions only")
    old_umask = os.umask(0o022)
    try:
        write_index_file(tmp_path / "a", {}, {})
    finally:
        os.umask(old_umask)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_index_file(tmp_path / "does-not-exist")
    with pytest.raises((IsADirectoryError, PermissionError, ValueError)):
        read_index_file(tmp_path)


# ----------------------------------------------------------------------------
# writing: validation and atomicity
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.array([1, 2], dtype=object),
        np.array(["a", "b"]),
        np.array([b"a"]),
        np.zeros(2, dtype=[("x", "f4"), ("y", "i4")]),
        np.zeros(2, dtype=np.complex64),
        np.zeros(2, dtype="datetime64[ns]"),
        np.zeros(2, dtype=np.longdouble) if np.dtype(np.longdouble).itemsize > 8 else np.zeros(2, "m8[s]"),
        np.zeros(2, dtype="V8"),
        [1, 2, 3],
    ],
    ids=lambda a: str(getattr(a, "dtype", type(a).__name__)),
)
def test_disallowed_array_types_raise_type_error(tmp_path, array):
    path = tmp_path / "index.ivfsq"
    with pytest.raises(TypeError):
        write_index_file(path, {}, {"bad": array})
    assert not os.listdir(tmp_path)


def test_invalid_header_and_names_on_write(tmp_path):
    path = tmp_path / "index.ivfsq"
    with pytest.raises(ValueError, match="finite"):
        write_index_file(path, {"x": float("nan")}, {})
    with pytest.raises(ValueError, match="finite"):
        write_index_file(path, {"x": [1.0, float("inf")]}, {})
    with pytest.raises(TypeError, match="numpy scalars"):
        write_index_file(path, {"x": np.int64(3)}, {})
    with pytest.raises(TypeError, match="keys must be str"):
        write_index_file(path, {1: "x"}, {})
    circular = []
    circular.append(circular)
    with pytest.raises(ValueError, match="circular"):
        write_index_file(path, {"x": circular}, {})
    with pytest.raises(TypeError, match="header must be a dict"):
        write_index_file(path, [1], {})
    with pytest.raises(TypeError, match="names must be str"):
        write_index_file(path, {}, {3: np.zeros(2)})
    with pytest.raises(ValueError, match="must not be empty"):
        write_index_file(path, {}, {"": np.zeros(2)})
    assert not os.listdir(tmp_path)


def test_failed_overwrite_keeps_old_file(tmp_path, monkeypatch):
    path, header, arrays = _small_file(tmp_path)
    old_bytes = path.read_bytes()
    real_write_section = _format._write_section
    calls = []

    def failing_write_section(file, array, storage_dtype):
        calls.append(1)
        if len(calls) == 2:
            # Half of the second section reaches the disk before the failure.
            file.write(b"\xff" * 3)
            raise OSError("simulated disk full")
        return real_write_section(file, array, storage_dtype)

    monkeypatch.setattr(_format, "_write_section", failing_write_section)
    new_arrays = {"codes": np.full((100, 100), 7, np.uint8), "other": np.ones(1000)}
    with pytest.raises(OSError, match="simulated disk full"):
        write_index_file(path, {"new": True}, new_arrays)
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == [path.name]
    read_header, read_arrays = read_index_file(path)
    assert read_header == header
    _assert_same_arrays(read_arrays, arrays)


def test_failed_fsync_and_interrupt_keep_old_file(tmp_path, monkeypatch):
    path, header, arrays = _small_file(tmp_path)
    old_bytes = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("simulated I/O error")

    monkeypatch.setattr(_format.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated I/O error"):
        write_index_file(path, {}, {"x": np.zeros(10)})
    monkeypatch.undo()

    def interrupted_write_section(file, array, storage_dtype):
        raise KeyboardInterrupt

    monkeypatch.setattr(_format, "_write_section", interrupted_write_section)
    with pytest.raises(KeyboardInterrupt):
        write_index_file(path, {}, {"x": np.zeros(10)})
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == [path.name]


def test_successful_overwrite_replaces_file(tmp_path):
    path, _, _ = _small_file(tmp_path)
    write_index_file(path, {"v": 2}, {"x": np.arange(3)})
    header, arrays = read_index_file(path)
    assert header == {"v": 2} and list(arrays) == ["x"]
    assert os.listdir(tmp_path) == [path.name]


# ----------------------------------------------------------------------------
# reading damaged and foreign files
# ----------------------------------------------------------------------------


def test_truncation_at_every_offset(tmp_path):
    path, _, _ = _small_file(tmp_path)
    data = path.read_bytes()
    damaged = tmp_path / "damaged"
    for length in range(len(data)):
        damaged.write_bytes(data[:length])
        for mmap in (False, True):
            with pytest.raises(IndexFileError) as info:
                read_index_file(damaged, mmap=mmap)
            message = str(info.value)
            assert str(damaged) in message
            if length == 0:
                assert "empty" in message
            elif length >= len(MAGIC):
                assert "truncated" in message or "checksum mismatch" in message, (length, message)


def test_trailing_bytes_rejected(tmp_path):
    path, _, _ = _small_file(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IndexFileError, match="1 unexpected trailing bytes"):
        read_index_file(path)


def test_every_single_bit_flip_is_detected(tmp_path):
    path, _, _ = _small_file(tmp_path)
    data = path.read_bytes()
    damaged = tmp_path / "damaged"
    rng = np.random.default_rng(12345)
    # Every byte is either fixed (magic, version, flags, padding) or covered by
    # a checksum, so no flip can go unnoticed.
    positions = list(range(len(data))) + list(rng.integers(0, len(data), size=300))
    for position in positions:
        bit = int(rng.integers(0, 8))
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        damaged.write_bytes(bytes(flipped))
        for mmap in (False, True):
            with pytest.raises(IndexFileError):
                read_index_file(damaged, mmap=mmap)


def test_checksum_mismatch_names_the_section(tmp_path):
    path, _, _ = _small_file(tmp_path)
    data = bytearray(path.read_bytes())
    fields, toc, _ = _split(bytes(data))
    data_start = -(-(PREAMBLE.size + fields[3]) // 64) * 64
    centers = next(s for s in toc["sections"] if s["name"] == "centers")
    data[data_start + centers["offset"] + 1] ^= 0x10
    path.write_bytes(bytes(data))
    for mmap in (False, True):
        with pytest.raises(IndexFileError, match="checksum mismatch in section 'centers'"):
            read_index_file(path, mmap=mmap)


def test_toc_checksum_mismatch(tmp_path):
    path, _, _ = _small_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[PREAMBLE.size + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="checksum mismatch in the table of contents"):
        read_index_file(path)


def test_nonzero_padding_detected(tmp_path):
    path = tmp_path / "index.ivfsq"
    write_index_file(path, {}, {"a": np.zeros(3, np.uint8), "b": np.ones(2, np.uint8)})
    data = bytearray(path.read_bytes())
    # Section a holds 3 bytes at the start of the data region and b the last 2
    # bytes of the file, 64 bytes later, so this byte is padding between them.
    data[len(data) - 2 - 10] = 1
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="non-zero padding"):
        read_index_file(path)


def test_foreign_files(tmp_path):
    npy = tmp_path / "array.npy"
    np.save(npy, np.arange(10))
    with pytest.raises(IndexFileError, match=r"not an ivfsq index file.*\.npy file"):
        read_index_file(npy)

    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.arange(10))
    with pytest.raises(IndexFileError, match="not an ivfsq index file.*zip"):
        read_index_file(npz)

    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("hello.txt", "hello")
    with pytest.raises(IndexFileError, match="zip"):
        read_index_file(archive)

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(IndexFileError, match="not an ivfsq index file.*empty"):
        read_index_file(empty)

    text = tmp_path / "notes.txt"
    text.write_text("n_lists = 16\nmetric = euclidean\n" * 10)
    with pytest.raises(IndexFileError, match="not an ivfsq index file.*text file"):
        read_index_file(text)

    rng = np.random.default_rng(3)
    noise = tmp_path / "noise.bin"
    for size in (1, 7, 8, 100, 4096):
        noise.write_bytes(b"\xfe" + rng.bytes(size - 1))
        with pytest.raises(IndexFileError, match=f"{noise}.*not an ivfsq index file"):
            read_index_file(noise)


def test_magic_followed_by_random_bytes(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "noise.bin"
    for size in (0, 5, 24, 100, 10_000):
        path.write_bytes(MAGIC + rng.bytes(size))
        with pytest.raises(IndexFileError):
            read_index_file(path)


@pytest.mark.parametrize("version", [0, 2, 99, 2**32 - 1])
def test_unsupported_version(tmp_path, version):
    path, _, _ = _small_file(tmp_path)
    _, toc, rest = _split(path.read_bytes())
    toc_bytes = json.dumps(toc, separators=(",", ":")).encode()
    path.write_bytes(_pack(toc_bytes, rest, version=version))
    with pytest.raises(IndexFileError, match=f"unsupported index file format version {version}.*reads format version 1"):
        read_index_file(path)


def test_nonzero_flags_rejected(tmp_path):
    path, _, _ = _small_file(tmp_path)
    _, toc, rest = _split(path.read_bytes())
    path.write_bytes(_pack(json.dumps(toc).encode(), rest, flags=1))
    with pytest.raises(IndexFileError, match="flags"):
        read_index_file(path)


def test_huge_toc_length(tmp_path):
    path = tmp_path / "index.ivfsq"
    covered = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, 2**63, 0, 0)
    path.write_bytes(covered + b"{}")
    with pytest.raises(IndexFileError, match="table of contents declares"):
        read_index_file(path)
    path.write_bytes(PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, 1000, 0, 0) + b"{}")
    with pytest.raises(IndexFileError, match="truncated"):
        read_index_file(path)


def test_huge_declared_array_fails_fast_without_allocating(tmp_path, monkeypatch):
    nbytes = 2**40
    toc = {
        "header": {},
        "sections": [
            {"name": "codes", "dtype": "uint8", "shape": [2**20, 2**20], "offset": 0,
             "nbytes": nbytes, "crc32": "00000000"},
        ],
    }
    path = tmp_path / "index.ivfsq"
    toc_bytes = json.dumps(toc).encode()
    toc_end = PREAMBLE.size + len(toc_bytes)
    path.write_bytes(_pack(toc_bytes, bytes(-(-toc_end // 64) * 64 - toc_end) + b"\0" * 100))

    def no_allocation(*args, **kwargs):
        raise AssertionError("allocated an array for a section that does not fit in the file")

    monkeypatch.setattr(_format.np, "empty", no_allocation)
    monkeypatch.setattr(_format.np, "memmap", no_allocation)
    start = time.perf_counter()
    for mmap in (False, True):
        with pytest.raises(IndexFileError, match="truncated: section 'codes' needs bytes up to"):
            read_index_file(path, mmap=mmap)
    assert time.perf_counter() - start < 1.0


def _set(key, value, index=0):
    def mutate(toc):
        toc["sections"][index][key] = value
    return mutate


def _delete(key):
    def mutate(toc):
        del toc["sections"][0][key]
    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda toc: [], "must be an object with keys"),
        (lambda toc: toc.pop("header") and None, "must be an object with keys"),
        (lambda toc: toc.update(extra=1), "must be an object with keys"),
        (lambda toc: toc.update(header=[1]), "header must be a JSON object"),
        (lambda toc: toc.update(sections={}), "'sections' must be a JSON array"),
        (lambda toc: toc["sections"].__setitem__(0, "codes"), "section #0 must be a JSON object"),
        (_delete("crc32"), "section #0 must have keys"),
        (_set("extra", 1), "section #0 must have keys"),
        (_set("name", 7), "invalid name 7"),
        (_set("name", ""), "invalid name ''"),
        (_set("name", "flags"), "duplicate section name 'flags'"),
        (_set("dtype", "object"), "unsupported dtype 'object'"),
        (_set("dtype", "<f4"), "unsupported dtype '<f4'"),
        (_set("dtype", ["uint8"]), "unsupported dtype"),
        (_set("shape", 10), "invalid shape"),
        (_set("shape", [2, -5]), "invalid shape"),
        (_set("shape", [2.0, 5]), "invalid shape"),
        (_set("shape", [True, 10]), "invalid shape"),
        (_set("shape", [1] * 65), "invalid shape"),
        (_set("shape", [0, 2**62, 2**62]), "too large for an array"),
        (_set("shape", [3, 5]), "declares nbytes 10, but shape \\[3, 5\\] of uint8 needs 15"),
        (_set("nbytes", 11), "declares nbytes 11"),
        (_set("nbytes", "10"), "declares nbytes '10'"),
        (_set("offset", -64), "invalid offset"),
        (_set("offset", 1.5), "invalid offset"),
        (_set("offset", 64), "is at offset 64, expected 0"),
        (_set("offset", 3), "not a multiple of 64"),
        (_set("offset", 0, index=1), "overlaps the previous section"),
        (_set("offset", 128, index=1), "is at offset 128, expected 64"),
        (_set("offset", 2**70, index=1), "expected 64"),
        (_set("crc32", 12345), "invalid crc32"),
        (_set("crc32", "ABCDEF01"), "invalid crc32"),
        (_set("crc32", "00000000"), "checksum mismatch in section 'codes'"),
        (lambda toc: toc["sections"].pop() and None, "unexpected trailing bytes"),
        (lambda toc: toc["sections"].reverse(), "expected"),
    ],
)
def test_invalid_toc_structure(tmp_path, mutate, message):
    path, _, _ = _small_file(tmp_path)
    path.write_bytes(_rewrite_toc(path.read_bytes(), mutate))
    for mmap in (False, True):
        with pytest.raises(IndexFileError, match=message):
            read_index_file(path, mmap=mmap)


@pytest.mark.parametrize(
    "toc_bytes, message",
    [
        pytest.param(b"\xff\xfe{}", "not valid UTF-8 JSON", id="not-utf8"),
        pytest.param(b"{", "not valid UTF-8 JSON", id="unterminated"),
        pytest.param(b"", "not valid UTF-8 JSON", id="empty"),
        pytest.param(b'{"header":{},"sections":[],"header":{}}', "duplicate key 'header'", id="duplicate-key"),
        pytest.param(b'{"header":{"x":NaN},"sections":[]}', "NaN", id="nan"),
        pytest.param(b'{"header":{"x":-Infinity},"sections":[]}', "Infinity", id="infinity"),
        pytest.param(b'{"header":{"x":1e999},"sections":[]}', "out of range", id="overflowing-float"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "not valid UTF-8 JSON", id="deep-nesting"),
        pytest.param(b'{"header":{"x":' + b"9" * 10_000 + b'},"sections":[]}', "not valid UTF-8 JSON",
                     id="huge-int-literal"),
    ],
)
def test_invalid_toc_json(tmp_path, toc_bytes, message):
    path = tmp_path / "index.ivfsq"
    path.write_bytes(_pack(toc_bytes))
    with pytest.raises(IndexFileError, match=message):
        read_index_file(path)


def test_invalid_bool_values_rejected(tmp_path):
    path = tmp_path / "index.ivfsq"
    write_index_file(path, {}, {"flags": np.array([True, False, True])})
    data = bytearray(path.read_bytes())
    data[-1] = 2  # an invalid bool, with a checksum fixed up to match

    def fix_crc(toc):
        toc["sections"][0]["crc32"] = f"{zlib.crc32(bytes(data[-3:])):08x}"

    path.write_bytes(_rewrite_toc(bytes(data), fix_crc))
    for mmap in (False, True):
        with pytest.raises(IndexFileError, match="bool values other than 0 and 1"):
            read_index_file(path, mmap=mmap)


def test_index_file_error_is_value_error():
    assert issubclass(IndexFileError, ValueError)
