"""The search planner's choices, from the batch shape and the lists."""

from types import SimpleNamespace

import numpy as np
import pytest

from ivfsq.ivf import planner


def fake_lists(n_lists, rows_per_list, code_bytes):
    return SimpleNamespace(list_sizes=np.full(n_lists, rows_per_list),
                           size=n_lists * rows_per_list,
                           codes=np.zeros((1, code_bytes), np.uint8))


def fake_quantizer(bits, code_size, n_int_weights=64):
    return SimpleNamespace(bits=bits, code_size=code_size, n_int_weights=n_int_weights)


def plan(n_queries, n_probes, n_threads, *, bits=8, code_bytes=128, n_lists=1000,
         rows_per_list=100, n_int_weights=64, pays=None, **overrides):
    return planner.plan_search(
        fake_quantizer(bits, code_bytes, n_int_weights), fake_lists(n_lists, rows_per_list,
                                                                    code_bytes),
        n_lists, n_queries, n_probes, n_threads, sq4_int16_pays=pays, **overrides)


def test_per_query_bitsets_never_take_the_list_major_scan():
    assert plan(250, 8, 2).path == "list_major"
    assert plan(250, 8, 2, per_query_filter=True).path == "per_query"
    assert plan(250, 8, 2, scan="list_major", per_query_filter=True).path == "per_query"
    # Other paths are left as they are.
    assert plan(1, 8, 1, per_query_filter=True).path == "few"
    assert plan(1, 100, 2, rows_per_list=1000, per_query_filter=True).path == "per_list"


def test_paths_by_batch_shape():
    # One thread, or a scan of under FEW_MAX_SCAN_BYTES: the one-call path.
    assert plan(1, 8, 1).path == "few"
    assert plan(8, 8, 2).path == "few"  # 8 x 8 probes x 100 rows x 128 bytes < 1 MiB
    assert plan(9, 8, 2).path == "per_query"
    # Big scans of a few queries on several threads: split by lists.
    assert plan(1, 100, 2, rows_per_list=1000).path == "per_list"
    assert plan(1, 1, 2, rows_per_list=10**5).path == "per_query"  # one probe: nothing to split
    # Two (query, probe) pairs per list or more: list-major.
    assert plan(250, 8, 2).path == "list_major"
    assert plan(249, 8, 2).path == "per_query"
    assert plan(10, 8, 2).coarse_in_kernel is False
    assert plan(8, 8, 2).coarse_in_kernel is True


def test_integer_filter_choice():
    # 8-bit codes: int16 weights, except list-major scans of short rows.
    assert plan(100, 8, 2).int_filter == "int16"
    assert plan(1000, 8, 2, code_bytes=128).int_filter == "off"
    assert plan(1000, 8, 2, code_bytes=256).int_filter == "int16"
    # 4-bit codes: int8, or int16 on short rows where the estimate says so;
    # the estimate is asked only there.
    asked = []

    def pays(answer):
        return lambda: asked.append(answer) or answer

    assert plan(100, 8, 2, bits=4, code_bytes=392, pays=pays(True)).int_filter == "int8"
    assert asked == []
    assert plan(100, 8, 2, bits=4, code_bytes=64, pays=pays(True)).int_filter == "int16"
    assert plan(100, 8, 2, bits=4, code_bytes=64, pays=pays(False)).int_filter == "int8"
    # int16 weights keep the filter on for list-major scans of short rows.
    assert plan(1000, 8, 2, bits=4, code_bytes=64, pays=pays(True)).int_filter == "int16"
    assert plan(1000, 8, 2, bits=4, code_bytes=64, pays=pays(False)).int_filter == "off"
    # No integer dots for these codes: off.
    assert plan(100, 8, 2, n_int_weights=0).int_filter == "off"


def test_overrides_and_their_errors():
    forced = plan(1, 8, 1, scan="list_major", int_filter="off")
    assert (forced.path, forced.int_filter, forced.int_weights) == ("list_major", "off", False)
    assert plan(1, 8, 1, bits=4, code_bytes=392, int_filter="int16").wide
    with pytest.raises(ValueError, match="int_filter must be one of 'auto', 'off', 'int16' "
                                         "for this index, got 'int8'"):
        plan(1, 8, 1, int_filter="int8")
    with pytest.raises(ValueError, match="no integer dots"):
        plan(1, 8, 1, n_int_weights=0, int_filter="int16")
