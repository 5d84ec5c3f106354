"""Arrays that only speak DLPack (``__dlpack__``), as a PyTorch or JAX
tensor on the CPU may: data, queries, ids and filters are read through it,
and output buffers are written through it."""

import numpy as np
import pytest

from ivfsq.datasets import make_blobs_lowrank
from ivfsq.neighbors import filters, ivf_sq
from ivfsq.neighbors.refine import refine


class DLPackOnly:
    """An array that exposes nothing but the DLPack protocol."""

    def __init__(self, array):
        self._array = np.ascontiguousarray(array)

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class DeviceOnly(DLPackOnly):
    """A DLPack array that claims to live on a CUDA device."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kwargs):
        raise BufferError("the array is on a CUDA device")


def test_dlpack_inputs_give_the_numpy_results():
    base, queries = make_blobs_lowrank(2000, 16, n_queries=10, seed=3)
    params = ivf_sq.IndexParams(n_lists=16)
    index = ivf_sq.build(params, DLPackOnly(base))
    reference = ivf_sq.build(params, base)
    search = ivf_sq.SearchParams(n_probes=4)
    keep = np.ones(2000, dtype=bool)
    keep[::3] = False
    expected = ivf_sq.search(search, reference, queries, 5, filter=filters.from_bitset(keep))
    found = ivf_sq.search(search, index, DLPackOnly(queries), 5,
                          filter=filters.from_bitset(DLPackOnly(keep)))
    for got, want in zip(found, expected):
        assert isinstance(got, np.ndarray)  # outputs stay NumPy on the CPU
        np.testing.assert_array_equal(got, want)
    ivf_sq.extend(index, DLPackOnly(base[:5]), DLPackOnly(np.arange(5000, 5005)))
    assert index.next_id == 5005
    ivf_sq.remove(index, DLPackOnly(np.array([5000, 5001])))
    assert len(index) == 2003


def test_a_device_dlpack_array_is_a_clear_type_error():
    base, queries = make_blobs_lowrank(500, 8, n_queries=2, seed=4)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8), base)
    with pytest.raises(TypeError, match="queries must be an array in host memory"):
        ivf_sq.search(ivf_sq.SearchParams(n_probes=2), index, DeviceOnly(queries), 3)


class InterfaceOnly:
    """An array that exposes its memory through __array_interface__ only."""

    def __init__(self, array):
        self._array = array
        self.__array_interface__ = array.__array_interface__


class ConvertOnly:
    """An array NumPy can only copy (``__array__``)."""

    def __init__(self, array):
        self._array = array

    def __array__(self, dtype=None, copy=None):
        return self._array.copy()


def test_output_buffers_from_other_libraries_are_written_and_returned():
    base, queries = make_blobs_lowrank(2000, 16, n_queries=10, seed=3)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=16), base)
    params = ivf_sq.SearchParams(n_probes=4)
    want_d, want_i = ivf_sq.search(params, index, queries, 5)
    for wrap in (DLPackOnly, InterfaceOnly):
        ids = np.full((10, 5), -7, dtype=np.int64)
        dists = np.zeros((10, 5), dtype=np.float32)
        out_i, out_d = wrap(ids), wrap(dists)
        got_d, got_i = ivf_sq.search(params, index, queries, 5, neighbors=out_i,
                                     distances=out_d)
        assert got_i is out_i and got_d is out_d  # returned as given
        if wrap is DLPackOnly:
            ids, dists = out_i._array, out_d._array  # the memory it exposes
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_array_equal(dists, want_d)
    candidates = ivf_sq.search(params, index, queries, 20)[1]
    want = refine(base, queries, candidates, 5)
    indices = DLPackOnly(np.empty((10, 5), dtype=np.int64))
    distances = DLPackOnly(np.empty((10, 5), dtype=np.float32))
    got = refine(base, queries, candidates, 5, indices=indices, distances=distances)
    assert got[0] is distances and got[1] is indices
    np.testing.assert_array_equal(indices._array, want[1])
    np.testing.assert_array_equal(distances._array, want[0])


def test_output_buffers_that_cannot_be_written_in_place_are_refused():
    base, queries = make_blobs_lowrank(500, 8, n_queries=3, seed=4)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8), base)
    params = ivf_sq.SearchParams(n_probes=2)
    with pytest.raises(TypeError, match="neighbors must be an array of dtype int64 and shape "
                                        r"\(3, 4\) that exposes its memory"):
        ivf_sq.search(params, index, queries, 4,
                      neighbors=ConvertOnly(np.zeros((3, 4), dtype=np.int64)))
    with pytest.raises(TypeError, match="distances must be an array of dtype float32 and "
                                        r"shape \(3, 4\) in host memory"):
        ivf_sq.search(params, index, queries, 4, distances=DeviceOnly(np.zeros((3, 4))))
    readonly = np.zeros((3, 4), dtype=np.int64)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="neighbors must be writeable"):
        ivf_sq.search(params, index, queries, 4, neighbors=InterfaceOnly(readonly))
    with pytest.raises(TypeError, match="must have dtype float32, got dtype float64"):
        ivf_sq.search(params, index, queries, 4,
                      distances=DLPackOnly(np.zeros((3, 4), dtype=np.float64)))
