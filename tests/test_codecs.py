"""Conformance of every registered codec: what the rest of the library
relies on, checked the same way for each entry of ``ivfsq.codecs``."""

import numpy as np
import pytest
from conftest import assert_all_probes_match_decoded

from ivfsq import codecs
from ivfsq.datasets import make_blobs_lowrank
from ivfsq.neighbors import ivf_sq

KINDS = list(codecs.CODECS)


@pytest.fixture(scope="module")
def data():
    base, queries = make_blobs_lowrank(3000, 37, n_queries=30, seed=21)  # odd dim
    return base, queries


@pytest.mark.parametrize("name", KINDS)
def test_encode_decode_round_trip(name, data):
    base, _ = data
    kind = codecs.get(name)
    codec = kind.train(base)
    assert codec.kind == name and codec.spec is kind
    labels = np.zeros(len(base), np.int64)
    zero = np.zeros((1, base.shape[1]), np.float32)
    codes, decoded = codec.encode(base, zero, labels)
    assert codes.dtype == np.uint8 and codes.shape == (len(base), kind.code_size(base.shape[1]))
    codec.check_codes(codes)
    # decode() is the level the encoder returned, and the nearest level to
    # every value inside the trained range (values outside are clamped).
    np.testing.assert_array_equal(codec.decode(codes, zero, labels), decoded)
    levels = (1 << kind.bits) - 1
    low, high = codec.vmin, codec.vmin + levels * codec.delta
    inside = (base >= low) & (base <= high)
    error = np.abs(decoded - base)
    assert np.all(error[inside] <= (codec.delta / 2 * (1 + 1e-5) + 1e-6)[
        np.nonzero(inside)[1]])
    assert np.all(decoded >= low - 1e-5) and np.all(decoded <= high + 1e-5)
    # A trained codec passes its own state check, and rebuilds from its sections.
    codec.check_state()
    assert set(codec.to_arrays()) == set(kind.sections)
    again = kind.from_arrays(codec.to_arrays())
    assert again.mismatch(codec) is None


@pytest.mark.parametrize("name", KINDS)
def test_from_arrays_refuses_an_invalid_state(name, data):
    kind = codecs.get(name)
    arrays = kind.train(data[0]).to_arrays()
    for section in kind.sections:
        broken = dict(arrays)
        broken[section] = np.full_like(arrays[section], np.nan)
        with pytest.raises(ValueError, match="must be finite"):
            kind.from_arrays(broken)
        missing = {key: value for key, value in arrays.items() if key != section}
        with pytest.raises(ValueError, match=repr(section)):
            kind.from_arrays(missing)
        with pytest.raises(ValueError, match=r"\(dim,\)|\(37,\)"):
            kind.from_arrays({**arrays, section: arrays[section][:-1]}, dim=37)


@pytest.mark.parametrize("metric", ["sqeuclidean", "inner_product"])
@pytest.mark.parametrize("name", KINDS)
def test_all_probes_search_is_brute_force_over_the_decoded_vectors(name, metric, data):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, quantizer=name, metric=metric), base)
    assert index.quantizer == name
    assert_all_probes_match_decoded(index, queries, 10, tolerance=1e-5, max_mismatch=0.01)


@pytest.mark.parametrize("name", KINDS)
def test_save_load_round_trip(name, data, tmp_path):
    base, queries = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, quantizer=name), base)
    path = tmp_path / "index.ivfsq"
    ivf_sq.save(path, index)
    loaded = ivf_sq.load(path)
    params = ivf_sq.SearchParams(n_probes=3)
    for first, second in zip(ivf_sq.search(params, index, queries, 10),
                             ivf_sq.search(params, loaded, queries, 10)):
        np.testing.assert_array_equal(first, second)
    ids = np.arange(0, len(index), 97)
    np.testing.assert_array_equal(ivf_sq.reconstruct(index, ids), ivf_sq.reconstruct(loaded, ids))


@pytest.mark.parametrize("name", KINDS)
def test_merge_refuses_another_codec_or_another_training(name, data):
    base, _ = data
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, quantizer=name), base[:1500])
    other_name = next(other for other in KINDS if other != name)
    other = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, quantizer=other_name), base[:1500])
    with pytest.raises(ValueError, match="cannot be merged.*a different quantizer"):
        ivf_sq.merge([index, other])
    # The same codec trained on other rows: other ranges (and centers).
    retrained = ivf_sq.build(ivf_sq.IndexParams(n_lists=8, quantizer=name), base[1500:] * 2)
    with pytest.raises(ValueError, match="trained separately"):
        ivf_sq.merge([index, retrained])


def test_registry_entries_reach_the_public_parameters():
    for name, kind in codecs.CODECS.items():
        params = ivf_sq.IndexParams(quantizer=name)
        assert params.range_stat == kind.default_range_stat
    with pytest.raises(ValueError, match="quantizer must be one of"):
        ivf_sq.IndexParams(quantizer="pq8")
    with pytest.raises(ValueError, match="quantizer must be one of"):
        codecs.get("pq8")
