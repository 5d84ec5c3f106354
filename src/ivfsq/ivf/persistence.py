"""What an IVF-SQ index file holds, and the checks that it is a valid index.

The container (:mod:`ivfsq.io.format`) guarantees that the bytes read are
the bytes written (checksums) and that reading runs no code (nothing is
pickled). This module checks that those bytes make an index before an
engine is built from them; a file that does not raises
:class:`IndexFileError` naming the file and the problem.

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

from ivfsq._validation import METRICS, check_choice
from ivfsq.codecs.scalar import QUANTIZERS, ScalarQuantizer, quantizer_bits
from ivfsq.io.format import IndexFileError
from ivfsq.ivf.engine import IvfSqEngine
from ivfsq.ivf.lists import ListStorage

__all__ = ["FILE_KIND", "INDEX_VERSION", "from_file_contents", "to_file_contents"]

FILE_KIND = "ivfsq.ivf_sq"
# Version of the index layout inside the file container. 1: sq8 only (no
# "index_version" field); 2: the quantizer family, rotation, precise store.
INDEX_VERSION = 2
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
    <what is wrong>"`` for content that is not a valid index.
    """
    try:
        return _from_contents(header, arrays, make_params)
    except ValueError as error:
        raise IndexFileError(f"{filename}: not a valid ivf_sq index: {error}") from None


def _from_contents(header, arrays, make_params):
    if not isinstance(header, dict) or header.get("kind") != FILE_KIND:
        raise ValueError(f"expected kind {FILE_KIND!r}")
    # Files without the field hold the first layout (sq8 only), whose
    # parameters all have today's defaults for the fields added since.
    index_version = header.get("index_version", 1)
    if type(index_version) is not int or not 1 <= index_version <= INDEX_VERSION:
        raise ValueError(
            f"index layout version {index_version!r} is not supported; this ivfsq reads "
            f"versions 1 to {INDEX_VERSION} (written by a newer ivfsq? upgrade ivfsq to read it)"
        )
    try:
        fields = dict(header["params"])
        if index_version == 1:
            fields.setdefault("range_stat", "minmax")  # the only statistic of layout 1
        params = make_params(fields)
        n_lists, dim, size, next_id = (
            int(header[key]) for key in ("n_lists", "dim", "size", "next_id")
        )
        metric = check_choice("metric", header["metric"], METRICS)
        quantizer_kind = check_choice("quantizer", header["quantizer"], QUANTIZERS)
        if quantizer_kind != params.quantizer or metric != params.metric:
            raise ValueError("quantizer and metric differ from the parameters")
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"bad header field ({error})") from None
    code_size = dim if quantizer_bits(params.quantizer) == 8 else (dim + 1) // 2
    expected = {
        "centers": ((n_lists, dim), np.float32),
        "sq_vmin": ((dim,), np.float32),
        "sq_delta": ((dim,), np.float32),
        "list_sizes": ((n_lists,), np.int64),
        "codes": ((size, code_size), np.uint8),
        "ids": ((size,), np.int64),
        "norms": ((size,), np.float32),
    }
    if params.reorder:
        expected["precise"] = ((size, dim), np.dtype(params.precise_dtype))
    if params.transform is not None:
        expected["rotation"] = ((dim, dim), np.float32)
    unexpected = set(arrays) - set(expected)
    if unexpected:
        raise ValueError(f"unexpected sections {sorted(unexpected)}")
    for name, (shape, dtype) in expected.items():
        array = arrays.get(name)
        if array is None:
            raise ValueError(f"missing section {name!r}")
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"section {name!r} should be {np.dtype(dtype)} {shape}, "
                f"found {array.dtype} {array.shape}"
            )
    list_sizes = arrays["list_sizes"]
    if (list_sizes < 0).any() or int(list_sizes.sum()) != size:
        raise ValueError("list sizes do not add up to the stored vectors")
    ids = arrays["ids"]
    if size and (int(ids.min()) < 0 or int(ids.max()) >= next_id):
        raise ValueError("ids out of range")
    for name in ("centers", "sq_vmin", "sq_delta", "norms", "precise", "rotation"):
        if name in arrays and not np.isfinite(arrays[name]).all():
            raise ValueError(f"non-finite values in {name!r}")
    if not (arrays["sq_delta"] > 0).all():
        raise ValueError("quantizer steps must be positive")
    quantizer = ScalarQuantizer.from_arrays(quantizer_kind, arrays)
    offsets = np.cumsum(list_sizes) - list_sizes
    lists = ListStorage(
        np.ascontiguousarray(arrays["codes"]),
        np.ascontiguousarray(ids),
        np.ascontiguousarray(arrays["norms"]),
        offsets.astype(np.int64),
        list_sizes.astype(np.int64),
        list_sizes.astype(np.int64),
        np.ascontiguousarray(arrays["precise"]) if "precise" in arrays else None,
    )
    rotation = None
    if "rotation" in arrays:
        rotation = np.ascontiguousarray(arrays["rotation"])
        gram = rotation.astype(np.float64).T @ rotation.astype(np.float64)
        if not np.allclose(gram, np.eye(dim), atol=ROTATION_TOLERANCE):
            raise ValueError("the rotation matrix is not orthogonal")
    engine = IvfSqEngine(
        metric,
        np.ascontiguousarray(arrays["centers"]),
        quantizer,
        lists,
        params.conservative_memory_allocation,
        by_residual=params.by_residual,
        rotation=rotation,
    )
    engine.next_id = next_id
    return engine, params
