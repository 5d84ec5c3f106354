"""An index as bytes (the file format, without a file) and through pickle."""

import io
import pickle

import numpy as np
import pytest

from ivfsq.datasets import make_blobs_lowrank
from ivfsq.neighbors import filters, ivf_sq


@pytest.fixture(scope="module")
def data():
    return make_blobs_lowrank(3000, 24, n_queries=30, seed=12)


@pytest.fixture(scope="module", params=[dict(), dict(quantizer="sq4", reorder=True,
                                                     transform="rom", metric="cosine")])
def index(request, data):
    base, _ = data
    built = ivf_sq.build(ivf_sq.IndexParams(n_lists=16, **request.param), base)
    ivf_sq.remove(built, np.arange(0, 3000, 7))
    return built


def same_results(first, second, queries):
    params = ivf_sq.SearchParams(n_probes=4)
    for found, expected in zip(ivf_sq.search(params, first, queries, 5),
                               ivf_sq.search(params, second, queries, 5)):
        np.testing.assert_array_equal(found, expected)


def test_bytes_are_the_file_and_round_trip(index, data, tmp_path):
    _, queries = data
    blob = index.to_bytes()
    ivf_sq.save(tmp_path / "index.ivfsq", index)
    assert blob == (tmp_path / "index.ivfsq").read_bytes()
    loaded = ivf_sq.from_bytes(blob)
    assert len(loaded) == len(index) and loaded.next_id == index.next_id
    assert loaded.index_params._as_dict() == index.index_params._as_dict()
    same_results(loaded, index, queries)
    np.testing.assert_array_equal(ivf_sq.reconstruct(loaded, [1, 2]),
                                  ivf_sq.reconstruct(index, [1, 2]))
    # bytearray and memoryview work too; the loaded index is writable.
    same_results(ivf_sq.from_bytes(memoryview(bytearray(blob))), index, queries)
    ivf_sq.extend(loaded, data[0][:5], None)
    assert len(loaded) == len(index) + 5


def test_pickle_carries_the_index(index, data):
    _, queries = data
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        restored = pickle.loads(pickle.dumps(index, protocol=protocol))
        same_results(restored, index, queries)
    # The pickle holds the bytes, not the index's Python objects.
    assert index.to_bytes() in pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL)
    untrained = pickle.loads(pickle.dumps(ivf_sq.Index()))
    assert not untrained.trained
    # Filters are plain arrays: they pickle too.
    keep = np.ones(index.next_id, dtype=bool)
    keep[::2] = False
    restored_filter = pickle.loads(pickle.dumps(filters.from_bitset(keep)))
    np.testing.assert_array_equal(restored_filter.bitset, filters.from_bitset(keep).bitset)


def test_corrupted_bytes_raise_value_error_and_run_nothing(index):
    blob = bytearray(index.to_bytes())
    with pytest.raises(ValueError, match="index bytes: file is truncated"):
        ivf_sq.from_bytes(bytes(blob[: len(blob) // 2]))
    flipped = bytearray(blob)
    flipped[-10] ^= 0xFF
    with pytest.raises(ValueError, match="checksum mismatch"):
        ivf_sq.from_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="not an ivfsq index file"):
        ivf_sq.from_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not an ivfsq index file"):
        ivf_sq.from_bytes(b"")
    with pytest.raises(TypeError, match="data must be bytes"):
        ivf_sq.from_bytes(io.BytesIO(bytes(blob)))
    with pytest.raises(ValueError, match="not trained"):
        ivf_sq.Index().to_bytes()
