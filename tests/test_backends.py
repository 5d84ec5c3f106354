"""The backend registry and the device a call runs on."""

import numpy as np
import pytest

from ivfsq import backends, common
from ivfsq.common import Resources
from ivfsq.datasets import make_blobs_lowrank
from ivfsq.neighbors import ivf_sq


def test_registry_and_devices_agree():
    assert backends.NAMES == common.DEVICES == ("cpu", "cuda")
    assert callable(backends.get("cpu").search_block)
    assert callable(backends.get("cpu").range_search)
    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cuda', got 'gpu'"):
        backends.get("gpu")


def test_resources_device():
    assert Resources().device is None  # follows the data
    assert Resources(device="cpu").device == "cpu"
    assert repr(Resources(n_threads=2)) == "Resources(n_threads=2, device=None)"
    assert repr(Resources(n_threads=2, device="cuda")) == "Resources(n_threads=2, device='cuda')"
    with pytest.raises(ValueError, match="device must be one of"):
        Resources(device="gpu")
    assert common.resolve_device(None) == common.resolve_device(Resources()) == "cpu"
    assert common.resolve_device(Resources(device="cpu"), "cuda") == "cpu"


def test_search_on_the_named_device_is_the_default_search():
    base, queries = make_blobs_lowrank(2000, 16, n_queries=10, seed=2)
    index = ivf_sq.build(ivf_sq.IndexParams(n_lists=8), base)
    params = ivf_sq.SearchParams(n_probes=3)
    default = ivf_sq.search(params, index, queries, 5)
    named = ivf_sq.search(params, index, queries, 5, resources=Resources(device="cpu"))
    for first, second in zip(default, named):
        np.testing.assert_array_equal(first, second)
    in_range = ivf_sq.range_search(params, index, queries, 1.0,
                                   resources=Resources(device="cpu"))
    np.testing.assert_array_equal(in_range[0], ivf_sq.range_search(params, index, queries, 1.0)[0])
