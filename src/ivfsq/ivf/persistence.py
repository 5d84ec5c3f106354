"""What an IVF-SQ index file holds, and the checks that it is a valid index.

The container (:mod:`ivfsq.io.format`) guarantees that the bytes read are
the bytes written (checksums) and that reading runs no code (nothing is
pickled). This module guarantees that those bytes make one consistent
index before an engine is built from them: every count in the header agrees
with the parameters and with the arrays, and each component's state passes
its own checks (:meth:`ScalarQuantizer.check_state`,
:meth:`ScalarQuantizer.check_codes`, :meth:`ListStorage.check_state`). A
file that does not raises :class:`IndexFileError` naming the file and the
problem; a file that does gives an index that searches as the saved one did.

Layout (``index_version``; files without the field have layout 1):

* header: ``kind`` (:data:`FILE_KIND`), ``index_version``, ``params`` (the
  index parameters by name), ``metric``, ``quantizer``, ``n_lists``,
  ``dim``, ``size`` (stored vectors), ``next_id``;
* arrays: ``centers`` float32 (n_lists, dim), the quantizer's arrays
  (``sq_vmin``, ``sq_delta``: float32 (dim,)), ``list_sizes`` int64
  (n_lists,), then per stored vector, list by list: ``codes`` uint8 (size,
  code_size), ``ids`` int64 (size,), ``norms`` float32 (size,) and, with
  ``reorder``, ``precise`` (size, dim) of ``precise_dtype``; with a
  transform, ``rotation`` float32 (dim, dim).
"""

import numpy as np

from ivfsq import codecs
from ivfsq._validation import METRICS, check_choice, check_int
from ivfsq.io.format import IndexFileError
from ivfsq.ivf.engine import IvfSqEngine
from ivfsq.ivf.lists import ListStorage

__all__ = ["FILE_KIND", "INDEX_VERSION", "from_file_contents", "to_file_contents"]

FILE_KIND = "ivfsq.ivf_sq"
# Version of the index layout inside the file container. 1: sq8 only (no
# "index_version" field); 2: the quantizer family, rotation, precise store.
INDEX_VERSION = 2
# Ids are int64: the next one given must be one too.
MAX_NEXT_ID = 2**63 - 1
# A saved rotation is orthogonal up to float32 rounding: R^T R = I within this.
ROTATION_TOLERANCE = 1e-3


def to_file_contents(engine, params_fields):
    """``(header, arrays)`` of an engine's index file.

    ``params_fields``: the index parameters by name (JSON values). Only the
    stored rows are written, list by list, so spare list capacity is not.
    """
    lists = engine.lists
    rows = lists.valid_rows()
    header = {
        "kind": FILE_KIND,
        "index_version": INDEX_VERSION,
        "params": params_fields,
        "metric": engine.metric.name,
        "quantizer": engine.quantizer.kind,
        "n_lists": int(engine.centers.shape[0]),
        "dim": int(engine.centers.shape[1]),
        "size": int(rows.shape[0]),
        "next_id": int(engine.next_id),
    }
    arrays = {
        "centers": engine.centers,
        **engine.quantizer.to_arrays(),
        "list_sizes": lists.list_sizes,
        "codes": lists.codes[rows],
        "ids": lists.ids[rows],
        "norms": lists.aux[rows],
    }
    if lists.precise is not None:
        arrays["precise"] = lists.precise[rows]
    if engine.rotation is not None:
        arrays["rotation"] = engine.rotation
    return header, arrays


def from_file_contents(filename, header, arrays, make_params):
    """``(engine, params)`` of an index file's contents, once checked.

    ``header`` and ``arrays`` come from :func:`ivfsq.io.format.read_index_file`
    (arrays may be memory-mapped: they are used in place). ``make_params``
    builds the parameters object from the header's fields by name, raising
    TypeError or ValueError for unknown fields or bad values.

    Raises :class:`IndexFileError` ``"<filename>: not a valid ivf_sq index:
    <what is wrong>"`` for any content that is not one consistent index.
    """
    try:
        return _from_contents(header, arrays, make_params)
    except ValueError as error:
        raise IndexFileError(f"{filename}: not a valid ivf_sq index: {error}") from None


def _header_fields(header, make_params):
    """The parameters and the header's counts, checked against each other."""
    if not isinstance(header, dict) or header.get("kind") != FILE_KIND:
        raise ValueError(f"expected kind {FILE_KIND!r}")
    index_version = header.get("index_version", 1)
    if type(index_version) is not int or not 1 <= index_version <= INDEX_VERSION:
        raise ValueError(
            f"index layout version {index_version!r} is not supported; this ivfsq reads "
            f"versions 1 to {INDEX_VERSION} (written by a newer ivfsq? upgrade ivfsq to read it)"
        )
    missing = [key for key in ("params", "metric", "quantizer", "n_lists", "dim", "size",
                               "next_id") if key not in header]
    if missing:
        raise ValueError(f"missing header fields {missing}")
    if not isinstance(header["params"], dict):
        raise ValueError(  # noqa: TRY004 (a content error: from_file_contents reports it)
            f"bad header field (params must be a JSON object of parameters by name, got "
            f"{type(header['params']).__name__})"
        )
    fields = dict(header["params"])
    if index_version == 1:
        # Layout 1 predates the field; its only statistic was minmax, and the
        # fields added since have today's defaults.
        fields.setdefault("range_stat", "minmax")
    try:
        params = make_params(fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad parameters ({error})") from None
    try:
        n_lists = check_int("n_lists", header["n_lists"], minimum=1)
        dim = check_int("dim", header["dim"], minimum=1)
        size = check_int("size", header["size"], minimum=0)
        next_id = check_int("next_id", header["next_id"], minimum=0, maximum=MAX_NEXT_ID)
        metric = check_choice("metric", header["metric"], METRICS)
        quantizer = check_choice("quantizer", header["quantizer"], codecs.NAMES)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad header field ({error})") from None
    for name, value, expected in (("n_lists", n_lists, params.n_lists),
                                  ("metric", metric, params.metric),
                                  ("quantizer", quantizer, params.quantizer)):
        if value != expected:
            raise ValueError(
                f"the header's {name} {value!r} contradicts the parameters' "
                f"{name}={expected!r}"
            )
    return params, n_lists, dim, size, next_id


def _check_sections(arrays, expected):
    """Every expected section is there with its shape and dtype (those of
    the codec, ``None`` here, are checked by the codec), and no other."""
    unexpected = set(arrays) - set(expected)
    if unexpected:
        raise ValueError(f"unexpected sections {sorted(unexpected)}")
    for name, layout in expected.items():
        array = arrays.get(name)
        if array is None:
            raise ValueError(f"missing section {name!r}")
        if layout is None:
            continue
        shape, dtype = layout
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"section {name!r} should be {np.dtype(dtype)} {shape}, "
                f"found {array.dtype} {array.shape}"
            )


def _from_contents(header, arrays, make_params):
    params, n_lists, dim, size, next_id = _header_fields(header, make_params)
    code_kind = codecs.get(params.quantizer)
    code_size = code_kind.code_size(dim)
    expected = {
        "centers": ((n_lists, dim), np.float32),
        **dict.fromkeys(code_kind.sections),
        "list_sizes": ((n_lists,), np.int64),
        "codes": ((size, code_size), np.uint8),
        "ids": ((size,), np.int64),
        "norms": ((size,), np.float32),
    }
    if params.reorder:
        expected["precise"] = ((size, dim), np.dtype(params.precise_dtype))
    if params.transform is not None:
        expected["rotation"] = ((dim, dim), np.float32)
    _check_sections(arrays, expected)

    quantizer = code_kind.from_arrays(arrays, dim=dim)
    centers = np.ascontiguousarray(arrays["centers"])
    if not np.isfinite(centers).all():
        raise ValueError("non-finite value in 'centers'")
    rotation = None
    if "rotation" in arrays:
        rotation = np.ascontiguousarray(arrays["rotation"])
        if not np.isfinite(rotation).all():
            raise ValueError("non-finite value in 'rotation'")
        gram = rotation.astype(np.float64).T @ rotation.astype(np.float64)
        if not np.allclose(gram, np.eye(dim), atol=ROTATION_TOLERANCE):
            raise ValueError("the rotation matrix is not orthogonal")

    # Saved lists are compact: list l holds rows [offsets[l], offsets[l] + sizes[l]).
    list_sizes = arrays["list_sizes"].astype(np.int64)  # in memory, even when mapped
    # Negative sizes are named by check_state; other sizes must fill the rows.
    if (list_sizes >= 0).all() and int(list_sizes.sum()) != size:
        raise ValueError(
            f"list sizes add up to {int(list_sizes.sum())}, but the header's size is {size}"
        )
    offsets = (np.cumsum(list_sizes) - list_sizes).astype(np.int64)
    lists = ListStorage(
        np.ascontiguousarray(arrays["codes"]),
        np.ascontiguousarray(arrays["ids"]),
        np.ascontiguousarray(arrays["norms"]),
        offsets,
        list_sizes,
        list_sizes.copy(),
        np.ascontiguousarray(arrays["precise"]) if "precise" in arrays else None,
    )
    lists.check_state(code_size, dim, params.precise_dtype if params.reorder else None)
    quantizer.check_codes(lists.codes)
    if size:
        largest = int(lists.ids.max())
        if largest >= next_id:
            raise ValueError(
                f"id {largest} is not below next_id {next_id} (the id extend() gives next)"
            )
    engine = IvfSqEngine(
        params.metric,
        centers,
        quantizer,
        lists,
        params.conservative_memory_allocation,
        by_residual=params.by_residual,
        rotation=rotation,
    )
    engine.next_id = next_id
    return engine, params
