"""Loading checks that a file's content is consistent, not only its checksums.

Each case below reads a saved index with ``read_index_file``, changes its
header or arrays, and writes it back with ``write_index_file``: the
container is then intact (every checksum is valid) but the index it holds
contradicts itself. ``load`` must refuse it with ``IndexFileError`` naming
the problem, and never hand back an index that fails (or silently misleads)
later.
"""

import re

import numpy as np
import pytest

from ivfsq import codecs
from ivfsq.io.format import IndexFileError, read_index_file, write_index_file
from ivfsq.neighbors import ivf_sq

N_ROWS = 600
N_LISTS = 8

# Bases: the index each case starts from.
BASES = {
    # sq8, no rotation, no precise store.
    "plain": {"n_lists": N_LISTS, "quantizer": "sq8"},
    # sq4_uniform (odd dim: codes with a padding nibble), rotation, precise store.
    "uniform_rom_reorder": {"n_lists": N_LISTS, "quantizer": "sq4_uniform", "transform": "rom",
                            "reorder": True},
    # Trained, no vectors.
    "empty": {"n_lists": N_LISTS, "add_data_on_build": False},
}
DIMS = {"plain": 8, "uniform_rom_reorder": 7, "empty": 8}


def _rows(arrays, keep):
    """Keep only the rows ``keep`` of the per-vector sections."""
    for name in ("codes", "ids", "norms", "precise"):
        if name in arrays:
            arrays[name] = np.ascontiguousarray(arrays[name][keep])


def n_lists_zero(header, arrays):
    header["n_lists"] = 0
    header["size"] = 0
    arrays["centers"] = arrays["centers"][:0].copy()
    arrays["list_sizes"] = arrays["list_sizes"][:0].copy()
    _rows(arrays, slice(0, 0))


def n_lists_contradicts_params(header, arrays):
    # Four lists (the first four), consistently stored: the params say eight.
    keep = int(arrays["list_sizes"][:4].sum())
    header["n_lists"] = 4
    header["size"] = keep
    arrays["centers"] = arrays["centers"][:4].copy()
    arrays["list_sizes"] = arrays["list_sizes"][:4].copy()
    _rows(arrays, slice(0, keep))


def dim_zero(header, arrays):
    header["dim"] = 0
    arrays["centers"] = np.zeros((N_LISTS, 0), dtype=np.float32)
    arrays["sq_vmin"] = np.zeros(0, dtype=np.float32)
    arrays["sq_delta"] = np.zeros(0, dtype=np.float32)
    arrays["codes"] = np.zeros((header["size"], 0), dtype=np.uint8)


def dim_contradicts_centers(header, arrays):
    header["dim"] += 1


def size_contradicts_list_sizes(header, arrays):
    arrays["list_sizes"][0] += 1


def negative_list_size(header, arrays):
    sizes = arrays["list_sizes"]
    moved = int(sizes[0]) + 3
    sizes[0] -= moved
    sizes[1] += moved


def count_not_an_integer(header, arrays):
    header["size"] = float(header["size"]) + 0.25


def duplicate_ids(header, arrays):
    arrays["ids"][1] = arrays["ids"][0]


def negative_id(header, arrays):
    arrays["ids"][0] = -1


def id_not_below_next_id(header, arrays):
    header["next_id"] = int(arrays["ids"].max())


def next_id_negative(header, arrays):
    header["next_id"] = -3


def delta_zero(header, arrays):
    arrays["sq_delta"][2] = 0.0


def delta_negative(header, arrays):
    arrays["sq_delta"][2] = -arrays["sq_delta"][2]


def delta_subnormal(header, arrays):
    # Positive but below the normal float32 range: the search weights
    # q * delta underflow.
    arrays["sq_delta"][:] = np.float32(1e-45)


def delta_nan(header, arrays):
    arrays["sq_delta"][2] = np.nan


def delta_inf(header, arrays):
    arrays["sq_delta"][2] = np.inf


def vmin_not_finite(header, arrays):
    arrays["sq_vmin"][0] = -np.inf


def uniform_ranges_differ(header, arrays):
    arrays["sq_vmin"][1] += 0.5
    arrays["sq_delta"][3] *= 2.0


def code_width_wrong(header, arrays):
    codes = arrays["codes"]
    arrays["codes"] = np.ascontiguousarray(np.concatenate([codes, codes[:, :1]], axis=1))


def code_padding_nibble_set(header, arrays):
    # dim 7 at 4 bits: the last byte's high nibble is padding and must be 0.
    arrays["codes"][5, -1] |= 0x30


def norms_not_finite(header, arrays):
    arrays["norms"][4] = np.nan


def centers_not_finite(header, arrays):
    arrays["centers"][1, 2] = np.inf


def precise_not_finite(header, arrays):
    arrays["precise"][3, 0] = np.nan


def rotation_wrong_shape(header, arrays):
    arrays["rotation"] = np.ascontiguousarray(arrays["rotation"][:, :-1])


def rotation_not_orthogonal(header, arrays):
    arrays["rotation"][0] *= 1.5


def metric_contradicts_params(header, arrays):
    header["metric"] = "inner_product"


def quantizer_contradicts_params(header, arrays):
    header["quantizer"] = "sq8_uniform"


def unknown_metric(header, arrays):
    header["metric"] = "hamming"
    header["params"]["metric"] = "hamming"


def precise_without_reorder(header, arrays):
    arrays["precise"] = np.zeros((header["size"], header["dim"]), dtype=np.float32)


def precise_missing_with_reorder(header, arrays):
    del arrays["precise"]


def precise_wrong_dtype(header, arrays):
    arrays["precise"] = arrays["precise"].astype(np.float16)


def params_unknown_field(header, arrays):
    header["params"]["n_bits"] = 8


def params_bad_value(header, arrays):
    header["params"]["kmeans_n_iters"] = 0


def params_not_a_dict(header, arrays):
    header["params"] = sorted(header["params"].items())


def index_version_too_new(header, arrays):
    header["index_version"] = 3


def index_version_not_an_integer(header, arrays):
    header["index_version"] = "2"


def wrong_kind(header, arrays):
    header["kind"] = "ivfsq.ivf_pq"


# (change, base, what the message must name).
CASES = [
    (n_lists_zero, "plain", r"n_lists must be >= 1, got 0"),
    (n_lists_contradicts_params, "plain", r"n_lists 4 .*parameters.* n_lists=8"),
    (dim_zero, "plain", r"dim must be >= 1, got 0"),
    (dim_contradicts_centers, "plain", r"section 'centers' should be float32 \(8, 9\)"),
    (size_contradicts_list_sizes, "plain", r"list sizes add up to 601, but the header's size is 600"),
    (negative_list_size, "plain", r"list 0 has a negative size"),
    (count_not_an_integer, "plain", r"size must be an int, got float"),
    (duplicate_ids, "plain", r"id \d+ is stored more than once"),
    (negative_id, "plain", r"ids must be >= 0, got -1"),
    (id_not_below_next_id, "plain", r"id \d+ is not below next_id \d+"),
    (next_id_negative, "empty", r"next_id must be >= 0, got -3"),
    (delta_zero, "plain", r"quantizer step \(delta\) must be > 0.*dimension 2"),
    (delta_negative, "plain", r"quantizer step \(delta\) must be > 0.*dimension 2"),
    (delta_subnormal, "plain", r"quantizer step \(delta\) must be > 0 and at least 1.18e-38"),
    (delta_nan, "plain", r"quantizer step \(delta\) must be finite.*dimension 2"),
    (delta_inf, "plain", r"quantizer step \(delta\) must be finite.*dimension 2"),
    (vmin_not_finite, "plain", r"quantizer minimum \(vmin\) must be finite.*dimension 0"),
    (uniform_ranges_differ, "uniform_rom_reorder",
     r"sq4_uniform quantizer must hold one vmin in every dimension.*dimension 1"),
    (code_width_wrong, "plain", r"section 'codes' should be uint8 \(\d+, 8\)"),
    (code_padding_nibble_set, "uniform_rom_reorder", r"padding nibble .* must be 0"),
    (norms_not_finite, "plain", r"non-finite value in the per-vector norm terms"),
    (centers_not_finite, "plain", r"non-finite value in 'centers'"),
    (precise_not_finite, "uniform_rom_reorder", r"non-finite value in the precise store"),
    (rotation_wrong_shape, "uniform_rom_reorder", r"section 'rotation' should be float32 \(7, 7\)"),
    (rotation_not_orthogonal, "uniform_rom_reorder", r"rotation matrix is not orthogonal"),
    (metric_contradicts_params, "plain", r"metric 'inner_product' .*parameters.*'sqeuclidean'"),
    (quantizer_contradicts_params, "plain", r"quantizer 'sq8_uniform' .*parameters.*'sq8'"),
    (unknown_metric, "plain", r"metric must be one of .*got 'hamming'"),
    (precise_without_reorder, "plain", r"unexpected sections \['precise'\]"),
    (precise_missing_with_reorder, "uniform_rom_reorder", r"missing section 'precise'"),
    (precise_wrong_dtype, "uniform_rom_reorder", r"section 'precise' should be float32"),
    (params_unknown_field, "plain", r"bad parameters .*n_bits"),
    (params_bad_value, "plain", r"bad parameters .*kmeans_n_iters must be >= 1"),
    (params_not_a_dict, "plain", r"params must be a JSON object"),
    (index_version_too_new, "plain", r"index layout version 3 is not supported"),
    (index_version_not_an_integer, "plain", r"index layout version '2' is not supported"),
    (wrong_kind, "plain", r"expected kind 'ivfsq.ivf_sq'"),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Path of each base index's file, the index, and its search results."""
    folder = tmp_path_factory.mktemp("bases")
    out = {}
    for name, fields in BASES.items():
        rng = np.random.default_rng(3)
        data = rng.standard_normal((N_ROWS, DIMS[name])).astype(np.float32)
        index = ivf_sq.build(ivf_sq.IndexParams(**fields), data)
        path = folder / f"{name}.ivfsq"
        ivf_sq.save(path, index)
        out[name] = (path, index, data)
    return out


def _tampered(saved, base, change, tmp_path):
    header, arrays = read_index_file(saved[base][0])
    arrays = {name: np.array(array) for name, array in arrays.items()}  # writable copies
    change(header, arrays)
    path = tmp_path / f"{change.__name__}.ivfsq"
    write_index_file(path, header, arrays)
    read_index_file(path)  # the container itself is valid: only the content is not
    return path


def test_there_are_enough_kinds():
    assert len(CASES) >= 18
    assert len({change.__name__ for change, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("change,base,message", CASES, ids=[c[0].__name__ for c in CASES])
@pytest.mark.parametrize("mmap", [False, True])
def test_load_refuses_inconsistent_content(saved, tmp_path, change, base, message, mmap):
    path = _tampered(saved, base, change, tmp_path)
    with pytest.raises(IndexFileError) as info:
        ivf_sq.load(path, mmap=mmap)
    text = str(info.value)
    assert text.startswith(f"{path}: not a valid ivf_sq index: "), text
    assert re.search(message, text), text


def test_untouched_rewrite_loads_and_searches_the_same(saved, tmp_path):
    """The rewriting itself changes nothing: an unchanged copy loads and
    gives the saved index's results, bit for bit."""
    for name, (_, index, data) in saved.items():
        path = _tampered(saved, name, lambda header, arrays: None, tmp_path)
        loaded = ivf_sq.load(path)
        assert len(loaded) == len(index)
        assert loaded.next_id == index.next_id
        if len(index) == 0:
            continue
        params = ivf_sq.SearchParams(n_probes=3)
        expected = ivf_sq.search(params, index, data[:20], k=5)
        found = ivf_sq.search(params, loaded, data[:20], k=5)
        np.testing.assert_array_equal(found[0], expected[0])
        np.testing.assert_array_equal(found[1], expected[1])


def test_refused_load_runs_no_code(saved, tmp_path, monkeypatch):
    """Nothing is unpickled while loading (valid or not): the container has
    no object values, and the header is only compared, never evaluated."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("load must not unpickle anything")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    for change, base, _ in CASES:
        path = _tampered(saved, base, change, tmp_path)
        with pytest.raises(IndexFileError):
            ivf_sq.load(path)
    assert len(ivf_sq.load(saved["plain"][0])) == N_ROWS
    header, arrays = read_index_file(saved["plain"][0])
    arrays = dict(arrays)
    arrays["norms"] = np.array([object()] * len(arrays["norms"]), dtype=object)
    with pytest.raises((TypeError, ValueError)):
        write_index_file(tmp_path / "object.ivfsq", header, arrays)


def test_states_built_in_memory_pass_their_checks():
    """The invariants hold for what build, extend and remove make, spare
    list capacity and removed rows included, not only for saved files."""

    rng = np.random.default_rng(5)
    data = rng.standard_normal((800, 9)).astype(np.float32)
    params = ivf_sq.IndexParams(n_lists=N_LISTS, quantizer="sq4", reorder=True,
                                precise_dtype="float16")
    index = ivf_sq.build(params, data[:500])
    ivf_sq.extend(index, data[500:], None)
    ivf_sq.remove(index, np.arange(0, 800, 3))
    engine = index._engine
    lists = engine.lists
    assert lists.codes.shape[0] > lists.size  # spare capacity and removed rows
    lists.check_state(engine.quantizer.code_size, 9, "float16")
    engine.quantizer.check_state(9)
    engine.quantizer.check_codes(lists.codes[lists.valid_rows()])
    with pytest.raises(ValueError, match="there must be no precise store"):
        lists.check_state(engine.quantizer.code_size)
    # A dimension whose range is too narrow for a normal float32 step gets
    # step 1, like a constant one: training never makes a state load refuses.
    values = rng.standard_normal((300, 4)).astype(np.float32)
    values[:, 1] = np.float32(1e-37) * (rng.random(300) > 0.5)
    values[:, 2] = 3.0
    for kind in ("sq8", "sq4", "sq8_uniform"):
        quantizer = codecs.get(kind).train(values, "minmax")
        quantizer.check_state(4)
    assert codecs.get("sq8").train(values, "minmax").delta[1:3].tolist() == [1.0, 1.0]
