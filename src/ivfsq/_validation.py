"""Every check of user input, in one place.

Each check raises ``TypeError`` for a wrong type or dtype and ``ValueError``
for a wrong value, shape or dimension, with a message that names the
argument, what was expected and what came.
"""

import numbers

import numpy as np

from ivfsq._device import device_output, is_device_array, to_host
from ivfsq.metrics import NAMES as METRICS  # noqa: F401 (the choices checked here)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype} and shape {value.shape}"
    return f"{type(value).__name__} {value!r}"


def check_int(name, value, *, minimum=None, maximum=None):
    """Return ``value`` as a Python int, rejecting bools, floats and strings."""
    # type(...) is int: the common case, without the slower ABC check.
    if type(value) is not int and (
        isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
    ):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    name, value, *, minimum=None, exclusive_minimum=None, exclusive_maximum=None
):
    """Return ``value`` as a finite Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {_describe(value)}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if exclusive_minimum is not None and value <= exclusive_minimum:
        raise ValueError(f"{name} must be > {exclusive_minimum}, got {value}")
    if exclusive_maximum is not None and value >= exclusive_maximum:
        raise ValueError(f"{name} must be < {exclusive_maximum}, got {value}")
    return value


def check_bool(name, value):
    """Return ``value`` as a Python bool; only real booleans are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return bool(value)


def check_choice(name, value, choices, *, allow_none=False):
    """Return ``value`` if it is one of the strings in ``choices`` (or None if allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {list(choices)}, got {_describe(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_dtype_name(name, value, choices):
    """A dtype given as a string or NumPy dtype-like, as one of the names in ``choices``."""
    if isinstance(value, str):
        return check_choice(name, value, choices)
    try:
        dtype_name = np.dtype(value).name
    except TypeError:
        raise TypeError(
            f"{name} must be a dtype name, one of {list(choices)}, got {_describe(value)}"
        ) from None
    return check_choice(name, dtype_name, choices)


def _from_dlpack(name, value, what):
    """``np.from_dlpack(value)`` (its memory, shared); TypeError naming
    ``name``, which must be ``what``, where NumPy cannot read it (an array
    on a GPU)."""
    try:
        return np.from_dlpack(value)
    except (TypeError, ValueError, RuntimeError, BufferError) as error:
        raise TypeError(
            f"{name} must be {what} in host memory; this DLPack array cannot be read by "
            f"NumPy ({error})"
        ) from None


def _as_host_array(name, value):
    """Turn an array-like (NumPy, CuPy, anything with the array interface
    or ``__array__``, a DLPack producer, nested lists) into a NumPy array
    without copying when possible."""
    if isinstance(value, np.ndarray):
        return value
    if value is None or isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be a 2-D array, got {_describe(value)}")
    if is_device_array(value):
        # Device arrays are read to the host: the checks and the preparation
        # of rows run there (results go back to the device: ivfsq._device).
        value = to_host(name, value)
    elif (hasattr(value, "__dlpack__") and not hasattr(value, "__array__")
            and not hasattr(value, "__array_interface__")):
        # A DLPack producer NumPy cannot read otherwise: shared, not copied,
        # where it lives in host memory.
        return _from_dlpack(name, value, "an array")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}: {error}") from None
    return array


def check_real_dtype(name, array):
    """Reject dtypes that are not real numbers (bool, complex, object, text)."""
    if array.dtype.kind not in "fiu":
        raise TypeError(
            f"{name} must have a real numeric dtype (float32, float16, or another "
            f"real type converted to float32), got dtype {array.dtype}"
        )


def check_matrix(name, value, *, dim=None, allow_empty=False):
    """Validate a 2-D real matrix; returns a NumPy array (not yet converted).

    The dtype is checked here; conversion to C-contiguous float32 is done by
    :func:`to_float32`, batch by batch, so memory-mapped inputs stay mapped.
    """
    array = _as_host_array(name, value)
    check_real_dtype(name, array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_rows, dim), got shape {array.shape}")
    if not allow_empty and array.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row, got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"{name} must have dim={dim} columns to match the index, got {array.shape[1]} "
            f"(shape {array.shape})"
        )
    return array


def _kernel_ready(array, dtype):
    """``array`` as a C-contiguous, writeable array of ``dtype`` (a view when
    it is one already). The kernels are compiled for writeable arrays: a
    read-only view (a read-only memory map, an array from Ray's object
    store) would compile a second specialization of every kernel it
    reaches, so it is copied, one batch at a time where it is large."""
    converted = np.ascontiguousarray(array, dtype=dtype)
    return converted if converted.flags.writeable else converted.copy()


def to_float32(name, array, start=0):
    """Return a C-contiguous, writeable float32 copy or view of ``array``,
    rejecting NaN/inf.

    ``start`` is the row offset of ``array`` in the caller's input, so that the
    error can name the offending row.
    """
    # Values past float32's range become inf, reported below (not warned of).
    with np.errstate(over="ignore"):
        converted = _kernel_ready(array, np.float32)
    if array.dtype.kind == "f":
        finite = np.isfinite(converted)
        if not finite.all():
            row = int(np.argwhere(~finite)[0, 0])
            if np.isfinite(array[row]).all():
                raise ValueError(
                    f"{name} has values too large for float32 (largest magnitude 3.4e38) "
                    f"in row {start + row}"
                )
            raise ValueError(
                f"{name} must contain only finite values, got NaN or inf in row {start + row}"
            )
    elif array.dtype.itemsize > 4:
        # float32 overflows to inf for huge int64 values.
        if not np.isfinite(converted).all():
            raise ValueError(f"{name} has values too large for float32")
    return converted


# Squared norms of vectors searched with L2 or inner products must stay well
# inside float32: distances reach 4x the largest one (overflow to inf past
# 3.4e38), and below this floor the products of coordinates underflow.
MAX_SQ_NORM = 1e36
MIN_SQ_NORM = 1e-28


def to_float32_checked(name, array, start=0, *, magnitudes=True):
    """:func:`to_float32`, then (with ``magnitudes``) :func:`check_magnitudes`.

    Valid input takes one BLAS dot of the converted values with themselves:
    NaN or inf anywhere makes the sum NaN or inf, and a sum within
    ``MAX_SQ_NORM`` bounds every row's squared norm. Only input that fails it
    goes through the two checks, which name the offending row. (The dot is
    much cheaper than the two checks, even for a single query.)
    """
    # Overflow and NaN only send the input to the checks that name the row.
    with np.errstate(over="ignore", invalid="ignore"):
        converted = _kernel_ready(array, np.float32)
        flat = converted.reshape(-1)
        if flat.size and float(np.dot(flat, flat)) <= MAX_SQ_NORM:
            return converted
    converted = to_float32(name, array, start)
    if magnitudes:
        check_magnitudes(name, converted, start)
    return converted


def check_magnitudes(name, vectors, start=0, *, check_small=False):
    """Reject float32 rows whose squared norm would overflow float32
    distances; with ``check_small``, also a set whose largest squared norm
    is so small that distances underflow (all-zero sets are allowed)."""
    if vectors.shape[0] == 0:
        return
    if not check_small:
        # The sum over all rows bounds every row's squared norm: one BLAS dot
        # (overflow shows as inf), per row only when it is too large. (The
        # dot is cheaper than a per-row einsum, even for a single query.)
        flat = vectors.reshape(-1)
        with np.errstate(over="ignore"):
            if float(np.dot(flat, flat)) <= MAX_SQ_NORM:
                return
    # float64 sums when small norms are checked: float32 would flush their
    # squares to zero.
    dtype = np.float64 if check_small else np.float32
    with np.errstate(over="ignore"):  # an overflow to inf is reported below
        sq_norms = np.einsum("ij,ij->i", vectors, vectors, dtype=dtype)
    largest = float(sq_norms.max())
    if largest > MAX_SQ_NORM:
        row = int(np.argmax(sq_norms))
        raise ValueError(
            f"{name} has a vector too large for float32 distances: row {start + row} has "
            f"squared norm {largest:.3g} (at most {MAX_SQ_NORM:.0e}); scale the vectors down "
            f"(rankings do not change)"
        )
    if check_small and 0.0 < largest < MIN_SQ_NORM:
        raise ValueError(
            f"{name} is too small for float32 distances: the largest squared norm is "
            f"{largest:.3g} (at least {MIN_SQ_NORM:.0e} is needed); scale the vectors up "
            f"(rankings do not change)"
        )


def check_ids(name, value, n_rows):
    """Validate a 1-D vector of non-negative int64 ids with one id per row."""
    array = _as_host_array(name, value)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype (int64), got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of shape ({n_rows},), got shape {array.shape}")
    if array.shape[0] != n_rows:
        raise ValueError(
            f"{name} must have one id per new vector: expected shape ({n_rows},), "
            f"got shape {array.shape}"
        )
    if array.dtype == np.uint64 and n_rows and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64, got a value of {int(array.max())}")
    ids = np.ascontiguousarray(array, dtype=np.int64)
    if n_rows and ids.min() < 0:
        raise ValueError(
            f"{name} must be >= 0 (-1 marks a missing result), got {int(ids.min())}"
        )
    if n_rows > 1:
        unique = np.unique(ids)
        if unique.shape[0] != n_rows:
            sorted_ids = np.sort(ids)
            duplicate = int(sorted_ids[np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])[0]])
            raise ValueError(f"{name} must not contain duplicate ids, got id {duplicate} twice")
    return ids


def check_id_list(name, value):
    """Validate a 1-D array (or sequence) of ids to look up; int64 copy."""
    array = _as_host_array(name, value)
    if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and array.size == 0):
        raise TypeError(f"{name} must have an integer dtype (int64), got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of ids, got shape {array.shape}")
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64, got a value of {int(array.max())}")
    ids = np.ascontiguousarray(array, dtype=np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {int(ids.min())}")
    return ids


def check_output(name, value, shape, dtype):
    """Validate a user-supplied output array written in place: a NumPy
    array, or an object that exposes its host memory through
    ``__array_interface__`` or ``__dlpack__`` (a PyTorch or JAX CPU tensor).
    Returns a NumPy view of that memory, which the caller writes."""
    expected = f"an array of dtype {np.dtype(dtype)} and shape {shape}"
    if isinstance(value, np.ndarray):
        view = value
    elif hasattr(value, "__array_interface__"):
        view = np.asarray(value)
    elif hasattr(value, "__dlpack__"):
        view = _from_dlpack(name, value, expected)
    else:
        # An object that only converts (__array__, a list) would be written
        # in a copy, and the caller's object left as it was.
        raise TypeError(
            f"{name} must be {expected} that exposes its memory (a NumPy array, "
            f"__array_interface__ or __dlpack__), got {type(value).__name__}"
        )
    if view.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got dtype {view.dtype}")
    if view.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got shape {view.shape}")
    if not view.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return view


def output_writer(name, value, shape, dtype):
    """Check an output buffer, on the host (:func:`check_output`) or a
    device (:func:`ivfsq._device.device_output`), and return the function
    that writes a NumPy array of results into it."""
    if is_device_array(value):
        return device_output(name, value, shape, dtype)
    view = check_output(name, value, shape, dtype)

    def write(array):
        view[...] = array

    return write
