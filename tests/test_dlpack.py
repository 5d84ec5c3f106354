"""Inputs that only speak DLPack (``__dlpack__``), as a PyTorch or JAX
tensor on the CPU may: data, queries, ids and filters are read through it."""

import numpy as np
import pytest

from ivfsq.datasets import make_blobs_lowrank
from ivfsq.neighbors import filters, ivf_sq


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
