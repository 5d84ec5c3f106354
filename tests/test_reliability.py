"""Reliability: saves killed at any point, loads of hostile files, and
numerical edge cases.

- A save killed with SIGKILL (at 53 points in the write, and at random
  times) leaves the old file or the new one, and either loads.
- Property-based fuzzing (hypothesis) of ``load``: bit flips, truncation,
  overwritten spans, preamble fields, well-formed containers with hostile
  contents, and files from other tools. Every case must raise ValueError or
  load an index that searches; none may crash, hang or run code.
- Edge cases of the data itself: duplicates, identical vectors, constant
  dimensions, zero vectors, dim = 1, huge and tiny magnitudes,
  n_rows == n_lists.
"""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from conftest import METRICS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivfsq.datasets import brute_force_knn, recall_at_k
from ivfsq.io import format as _format
from ivfsq.neighbors import ivf_sq

HERE = os.path.dirname(os.path.abspath(__file__))


def fuzz(n_examples):
    """Settings of a fuzz test: ``n_examples`` cases, derandomized (CI runs
    the same cases every time), no deadline."""
    return settings(
        max_examples=n_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=True,
        database=None,
    )


def small_index(seed, **params):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((600, 24)).astype(np.float32)
    return ivf_sq.build(ivf_sq.IndexParams(n_lists=8, **params), data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bytes of valid index files: plain SQ8, and SQ4 with a rotation and a
    float16 precise store (every optional section)."""
    folder = tmp_path_factory.mktemp("valid")
    out = {}
    for name, params in [
        ("sq8", {}),
        ("sq4_rom_reorder", dict(quantizer="sq4", transform="rom", reorder=True,
                                 precise_dtype="float16", metric="cosine")),
    ]:
        path = folder / f"{name}.ivfsq"
        ivf_sq.save(path, small_index(1, **params))
        out[name] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "case.ivfsq"


def load_or_reject(path, data, original=None):
    """Load ``data`` both ways. Each must raise ValueError with a message, or
    give an index that searches; a changed file may only load when it is
    semantically valid (``original is None``)."""
    path.write_bytes(data)
    outcomes = []
    for mmap in (False, True):
        try:
            index = ivf_sq.load(path, mmap=mmap)
        except ValueError as error:
            assert str(error)
            outcomes.append("rejected")
            continue
        if original is not None:
            assert data == original, "a damaged file was accepted"
        queries = np.ones((2, index.dim), dtype=np.float32)
        k = min(3, len(index)) if len(index) else None
        if k:
            distances, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=2), index,
                                                 queries, k)
            assert neighbors.shape == (2, k)
        outcomes.append("loaded")
    return outcomes


# ------------------------------------------------------------------ kill -9
def run_killer(tmp_path, mode):
    ivf_sq.save(tmp_path / "old.ivfsq", small_index(2))
    rng = np.random.default_rng(3)
    new = ivf_sq.build(ivf_sq.IndexParams(n_lists=32),
                       rng.standard_normal((20000, 48)).astype(np.float32))
    ivf_sq.save(tmp_path / "new.ivfsq", new)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    completed = subprocess.run(
        [sys.executable, os.path.join(HERE, "kill_during_save.py"), str(tmp_path), mode],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_save_killed_at_any_point_leaves_old_or_new_file(tmp_path):
    report = run_killer(tmp_path, "points")
    results = report["results"]
    assert len(results) == 53
    assert all(result["held"] in ("old", "new") for result in results), results
    # Killed before the rename: the old file; after it: the new one.
    by_point = {str(result["point"]): result for result in results}
    assert by_point["0"]["held"] == "old" and by_point["0"]["killed"]
    assert by_point["fsync_file"]["held"] == "old"
    assert by_point["before_rename"]["held"] == "old"
    assert by_point["after_rename"]["held"] == "new"
    assert by_point["fsync_folder"]["held"] == "new"
    assert sum(result["killed"] for result in results) >= 50


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_save_killed_at_random_times_leaves_old_or_new_file(tmp_path):
    results = run_killer(tmp_path, "timed")["results"]
    assert len(results) == 25 and all(result["killed"] for result in results)
    assert all(result["held"] in ("old", "new") for result in results), results


# -------------------------------------------------------------------- fuzz
@fuzz(800)
@given(which=st.sampled_from(["sq8", "sq4_rom_reorder"]),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                      min_size=1, max_size=8))
def test_fuzz_bit_flips(files, scratch, which, flips):
    original = files[which]
    data = bytearray(original)
    for position, bit in flips:
        data[int(position * len(data))] ^= 1 << bit
    outcomes = load_or_reject(scratch, bytes(data), original)
    if bytes(data) != original:
        assert outcomes == ["rejected", "rejected"]


@fuzz(400)
@given(which=st.sampled_from(["sq8", "sq4_rom_reorder"]),
       cut=st.floats(0, 1), tail=st.binary(max_size=200))
def test_fuzz_truncation_and_extension(files, scratch, which, cut, tail):
    original = files[which]
    data = original[: int(cut * len(original))] + tail
    outcomes = load_or_reject(scratch, data, original)
    if data != original:
        assert outcomes == ["rejected", "rejected"]


@fuzz(600)
@given(which=st.sampled_from(["sq8", "sq4_rom_reorder"]), position=st.floats(0, 1),
       span=st.binary(min_size=1, max_size=64), insert=st.booleans())
def test_fuzz_overwritten_or_inserted_spans(files, scratch, which, position, span, insert):
    original = files[which]
    at = int(position * len(original))
    if insert:
        data = original[:at] + span + original[at:]
    else:
        data = original[:at] + span + original[at + len(span):]
    outcomes = load_or_reject(scratch, data, original)
    if data != original:
        assert outcomes == ["rejected", "rejected"]


_EDGE_INTS = st.one_of(
    st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)


@fuzz(300)
@given(which=st.sampled_from(["sq8", "sq4_rom_reorder"]),
       field=st.sampled_from(["version", "flags", "toc_nbytes", "reserved"]),
       value=_EDGE_INTS, fix_crc=st.booleans())
def test_fuzz_preamble_fields(files, scratch, which, field, value, fix_crc):
    # Huge declared sizes must fail before any allocation (the test would
    # run out of memory otherwise); with fix_crc the checksum is made valid.
    original = files[which]
    magic, version, flags, toc_nbytes, toc_crc, reserved = _format._PREAMBLE.unpack_from(original)
    fields = dict(version=version, flags=flags, toc_nbytes=toc_nbytes, reserved=reserved)
    limit = 2**64 - 1 if field == "toc_nbytes" else 2**32 - 1
    fields[field] = value & limit
    head = struct.pack("<8sIIQ", magic, fields["version"], fields["flags"], fields["toc_nbytes"])
    if fix_crc:
        toc = original[_format._PREAMBLE.size : _format._PREAMBLE.size + toc_nbytes]
        toc_crc = zlib.crc32(toc, zlib.crc32(head))
    preamble = head + struct.pack("<II", toc_crc, fields["reserved"])
    data = preamble + original[_format._PREAMBLE.size :]
    outcomes = load_or_reject(scratch, data, original)
    if data != original:
        assert outcomes == ["rejected", "rejected"]


def _mutated_value(draw, value):
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return None
    if choice == 1:
        return draw(st.integers(-(2**70), 2**70))
    if choice == 2:
        return draw(st.floats(allow_nan=False))
    if choice == 3:
        return draw(st.text(max_size=12))
    if choice == 4:
        return [value, value]
    if choice == 5:
        return {"nested": value}
    return draw(st.sampled_from([True, False, 0, -1, 1, 2**63, "sq4", "cosine", "rom"]))


@st.composite
def hostile_contents(draw):
    """(header, arrays) edits applied to a valid index: a header field
    replaced, a section dropped, resized, retyped or filled with extremes."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["header", "params", "section", "values"]))
        edits.append((target, draw(st.integers(0, 2**16)), draw(st.data())))
    return edits


@fuzz(600)
@given(which=st.sampled_from(["sq8", "sq4_rom_reorder"]), edits=hostile_contents())
def test_fuzz_well_formed_files_with_hostile_contents(files, scratch, which, edits):
    # The container is valid (checksums right), so these reach the index's
    # own checks: inconsistent sizes, ids, shapes, dtypes, parameters and
    # non-finite values must be refused before any kernel reads the arrays.
    scratch.write_bytes(files[which])
    header, arrays = _format.read_index_file(scratch)
    arrays = {name: np.array(array) for name, array in arrays.items()}
    for target, pick, data in edits:
        if target == "header":
            key = sorted(header)[pick % len(header)]
            header[key] = _mutated_value(data.draw, header[key])
        elif target == "params":
            if not isinstance(header.get("params"), dict):
                continue  # replaced by an earlier edit
            params = dict(header["params"])
            key = sorted(params)[pick % len(params)]
            params[key] = _mutated_value(data.draw, params[key])
            header["params"] = params
        elif target == "section":
            name = sorted(arrays)[pick % len(arrays)]
            action = data.draw(st.sampled_from(["drop", "grow", "shrink", "retype", "2d"]))
            array = arrays[name]
            if action == "drop":
                del arrays[name]
            elif action == "grow":
                arrays[name] = np.concatenate([array, array[:1]]) if array.size else array
            elif action == "shrink":
                arrays[name] = array[:-1]
            elif action == "retype":
                arrays[name] = array.astype(data.draw(st.sampled_from(
                    ["int32", "float64", "uint8", "int64", "float32"])))
            else:
                arrays[name] = array.reshape(-1, 1) if array.ndim == 1 else array.reshape(-1)
        else:
            name = sorted(arrays)[pick % len(arrays)]
            array = arrays[name]
            if array.size:
                flat = array.reshape(-1)
                position = data.draw(st.integers(0, flat.size - 1))
                if array.dtype.kind == "f":
                    flat[position] = data.draw(st.sampled_from(
                        [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 1e-30]))
                else:
                    info = np.iinfo(array.dtype)
                    flat[position] = data.draw(st.sampled_from(
                        [info.min, info.max, -1 if info.min < 0 else 0, 0, 1]))
    try:
        _format.write_index_file(scratch, header, arrays)
    except (TypeError, ValueError):
        return  # not even writable as a container (e.g. a non-JSON value)
    load_or_reject(scratch, scratch.read_bytes())


class _Marker:
    """Unpickling this would create a file: loading must never do it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _foreign_payloads(tmp_path):
    npy = io.BytesIO()
    np.save(npy, np.arange(12, dtype=np.float32).reshape(3, 4))
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("arr_0.npy", npy.getvalue())
    marker = tmp_path / "pwned"
    payloads = {
        "npy": npy.getvalue(),
        "zip": npz.getvalue(),
        "pickle": pickle.dumps(_Marker(str(marker))),
        "pickle after magic": _format.MAGIC + pickle.dumps(_Marker(str(marker))),
        "hdf5": b"\x89HDF\r\n\x1a\n" + bytes(200),
        "faiss IVF-SQ": b"IwSq" + bytes(100),
        "text": b"hello, this is not an index\n",
        "empty": b"",
        "magic only": _format.MAGIC,
    }
    try:
        import faiss

        quantizer = faiss.IndexFlatL2(8)
        faiss_index = faiss.IndexIVFScalarQuantizer(quantizer, 8, 4,
                                                    faiss.ScalarQuantizer.QT_8bit)
        faiss_index.train(np.random.default_rng(0).random((200, 8), dtype=np.float32))
        payloads["faiss serialized"] = faiss.serialize_index(faiss_index).tobytes()
    except ImportError:
        pass
    return payloads, marker


def test_files_from_other_tools_are_refused_without_running_code(tmp_path):
    payloads, marker = _foreign_payloads(tmp_path)
    for name, data in payloads.items():
        outcomes = load_or_reject(tmp_path / "case.ivfsq", data, original=b"")
        assert outcomes == ["rejected", "rejected"], name
    assert not marker.exists()


@fuzz(300)
@given(data=st.binary(max_size=400), with_magic=st.booleans())
def test_fuzz_random_bytes(scratch, data, with_magic):
    data = _format.MAGIC + data if with_magic else data
    assert load_or_reject(scratch, data, original=b"") == ["rejected", "rejected"]


# ---------------------------------------------------------- numerical edges
def _search_all(index, queries, k, n_probes=None):
    params = ivf_sq.SearchParams(n_probes=n_probes or index.n_lists)
    return ivf_sq.search(params, index, queries, k)


@pytest.mark.parametrize("metric", METRICS)
def test_duplicates_and_identical_vectors(metric):
    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((50, 16)).astype(np.float32)
    data = np.repeat(distinct, 20, axis=0)  # every vector 20 times
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=10, metric=metric), data)
    distances, neighbors = _search_all(index, distinct[:5], 20)
    for row in range(5):
        # The 20 copies of the query are its 20 nearest (for inner products,
        # a longer vector may beat them); they tie, in id order.
        copies = list(range(row * 20, row * 20 + 20))
        if metric != "inner_product":
            assert sorted(neighbors[row]) == copies
        hits = neighbors[row][np.isin(neighbors[row], copies)]
        assert list(hits) == sorted(hits)
    same = np.ones((300, 8), dtype=np.float32)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=4, metric=metric), same)
    distances, neighbors = _search_all(index, same[:2], 10)
    assert np.all(np.isfinite(distances)) and np.all(neighbors >= 0)
    np.testing.assert_array_equal(neighbors[0], np.arange(10))  # ties: smallest ids


@pytest.mark.parametrize("quantizer", ["sq8", "sq4", "sq8_uniform", "sq4_uniform"])
def test_constant_dimensions_and_zero_vectors(quantizer):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((2000, 12)).astype(np.float32)
    data[:, 3] = 7.0  # a zero-range dimension
    data[:, 5] = 0.0
    data[:10] = 0.0  # zero vectors
    for metric in METRICS:
        index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16, metric=metric,
                                                quantizer=quantizer), data)
        distances, neighbors = _search_all(index, data[5:40], 10)
        assert np.all(np.isfinite(distances)) and np.all(neighbors >= 0)
        if metric == "cosine":
            # A zero vector has cosine distance 1 to everything.
            zero_hits = np.isin(neighbors, np.arange(10))
            np.testing.assert_allclose(distances[zero_hits], 1.0, atol=1e-6)
        if quantizer.startswith("sq8") and metric in ("sqeuclidean", "euclidean"):
            _, truth = brute_force_knn(data, data[10:40], 10, metric)
            assert recall_at_k(neighbors[5:], truth) > 0.85


@pytest.mark.parametrize("metric", METRICS)
def test_one_dimension(metric):
    data = np.linspace(-5, 5, 1001, dtype=np.float32)[:, None]
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, metric=metric), data)
    distances, neighbors = _search_all(index, data[[0, 500, 1000]], 3)
    assert np.all(np.isfinite(distances))
    if metric in ("sqeuclidean", "euclidean"):
        assert neighbors[1, 0] == 500
        assert set(neighbors[0]) == {0, 1, 2}


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("scale", [1e-12, 1e-6, 1e6, 1e17])
@pytest.mark.parametrize("metric", METRICS)
def test_huge_and_tiny_magnitudes(scale, metric):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((3000, 16)).astype(np.float32)
    data = (base * np.float32(scale)).astype(np.float32)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16, metric=metric), data)
    distances, neighbors = _search_all(index, data[:50], 10)
    assert np.all(np.isfinite(distances)) and np.all(neighbors >= 0)
    # Scaling the data does not change its neighbours (up to the codes'
    # precision): recall against the unscaled data's exact neighbours.
    _, truth = brute_force_knn(base, base[:50], 10, metric)
    assert recall_at_k(neighbors, truth) > 0.9


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "inner_product"])
def test_magnitudes_beyond_float32_distances_are_refused(metric):
    # Values whose squares underflow or whose distances overflow float32
    # would give ties or inf everywhere: refused with the remedy instead.
    base = np.random.default_rng(4).standard_normal((200, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="dataset is too small.*scale the vectors up"):
        ivf_sq.build(ivf_sq.IndexParams(n_lists=4, metric=metric), base * np.float32(1e-30))
    with pytest.raises(ValueError, match="dataset has a vector too large.*row"):
        ivf_sq.build(ivf_sq.IndexParams(n_lists=4, metric=metric), base * np.float32(1e19))
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=4, metric=metric), base)
    with pytest.raises(ValueError, match="queries has a vector too large.*row 1"):
        ivf_sq.search(ivf_sq.SearchParams(n_probes=4), index,
                      base[:3] * np.float32([[1], [1e19], [1]]), 5)
    with pytest.raises(ValueError, match="new_vectors has a vector too large"):
        ivf_sq.extend(index, base[:2] * np.float32(1e19), None)
    assert len(index) == 200
    # Cosine normalizes every vector: any finite scale works.
    cosine = ivf_sq.build(ivf_sq.IndexParams(n_lists=4, metric="cosine"),
                          base * np.float32(1e-30))
    _, neighbors = ivf_sq.search(ivf_sq.SearchParams(n_probes=4), cosine,
                                 base[:5] * np.float32(1e19), 1)
    assert neighbors[:, 0].tolist() == list(range(5))


@pytest.mark.filterwarnings("error::RuntimeWarning")  # an error, not a warning
def test_values_beyond_float32_are_refused():
    data = np.full((100, 4), 1e300)
    data[:7] = 1.0
    with pytest.raises(ValueError, match="dataset has values too large for float32.*row 7"):
        ivf_sq.build(ivf_sq.IndexParams(n_lists=4), data)


@pytest.mark.parametrize("metric", METRICS)
def test_as_many_rows_as_lists(metric):
    rng = np.random.default_rng(3)
    data = rng.standard_normal((64, 10)).astype(np.float32)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=64, metric=metric), data)
    assert len(index) == 64
    distances, neighbors = _search_all(index, data, 1)
    if metric in ("sqeuclidean", "euclidean", "cosine"):
        np.testing.assert_array_equal(neighbors[:, 0], np.arange(64))
