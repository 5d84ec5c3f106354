"""Versioned, checksummed container format for ivfsq index files.

An index file holds a small JSON header of index parameters and a set of
named numpy arrays. The format uses no pickle: reading a file never runs
code from it, and every size it declares is compared with the real file
size before anything is allocated, so an untrusted or damaged file can only
make :func:`read_index_file` raise :class:`IndexFileError`.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic, b"IVFSQIDX"
    8       4     uint32 format version (FORMAT_VERSION)
    12      4     uint32 flags, must be 0
    16      8     uint64 toc_nbytes, length of the table of contents
    24      4     uint32 toc_crc32, zlib.crc32 of bytes 0..24 followed by the TOC
    28      4     uint32 reserved, must be 0
    32      toc_nbytes  table of contents: UTF-8 (in fact ASCII) JSON
    ...     zero padding up to data_start = the next multiple of 64
    data_start + offset_i   section i: the raw bytes of array i, C order,
                            little-endian, followed by zero padding up to the
                            next multiple of 64 if another section follows

The table of contents (TOC) is a JSON object::

    {"header": {...user header...},
     "sections": [{"name": "codes", "dtype": "uint8", "shape": [1000, 64],
                   "offset": 0, "nbytes": 64000, "crc32": "1a2b3c4d"}, ...]}

``offset`` counts from ``data_start`` (so the TOC length does not depend on
the offsets it lists) and is always a multiple of 64, so sections are 64-byte
aligned in the file as well. ``crc32`` is the zlib.crc32 of the section's bytes
as exactly 8 lowercase hex digits; its fixed width lets the writer lay out the
whole file before it has seen the data, so each array is read only once.

Files are canonical: sections follow each other in TOC order, each at the
first multiple of 64 after the end of the previous one, all padding is zero
and the file ends at the end of the last section (or of the TOC when there
are no sections). Every byte is therefore either checked against a fixed
value or covered by a checksum, so any single-bit flip is detected.
"""

import io
import json
import math
import os
import secrets
import struct
import zlib
from collections.abc import Mapping

import numpy as np

from ivfsq._progress import report

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "IndexFileError",
    "write_index_file",
    "read_index_file",
]

FORMAT_VERSION = 1
MAGIC = b"IVFSQIDX"

#: Versions this module can read.
SUPPORTED_VERSIONS = (1,)

_PREAMBLE = struct.Struct("<8sIIQII")  # magic, version, flags, toc_nbytes, toc_crc32, reserved
_PREAMBLE_CRC_COVERS = 24  # the toc crc also covers magic, version, flags and toc_nbytes
_ALIGNMENT = 64
# A real TOC is a few kilobytes; the cap keeps a hostile file from making us
# read and parse an arbitrarily large JSON document.
_MAX_TOC_NBYTES = 64 * 1024 * 1024
# Arrays are streamed in chunks of this size so that checksumming and
# writing never need a second copy of a large array.
_CHUNK_NBYTES = 16 * 1024 * 1024
# numpy >= 2 supports up to 64 dimensions; anything above cannot be an array.
_MAX_NDIM = 64
_MAX_INTP = 2**63 - 1

_SECTION_KEYS = frozenset({"name", "dtype", "shape", "offset", "nbytes", "crc32"})
_TOC_KEYS = frozenset({"header", "sections"})

# Whitelisted dtypes by their numpy name, always stored little-endian.
_DTYPES = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float16",
        "float32",
        "float64",
        "bool",
    )
}

# Signatures of files people are likely to pass by mistake.
_FOREIGN_SIGNATURES = (
    (b"\x93NUMPY", "it looks like a .npy file (written by numpy.save)"),
    (b"PK\x03\x04", "it looks like a zip archive (e.g. a .npz file written by numpy.savez)"),
    (b"PK", "it looks like a zip archive"),
    (b"\x80", "it looks like a Python pickle"),
    (b"\x89HDF", "it looks like an HDF5 file"),
)


class IndexFileError(ValueError):
    """An index file is not a valid ivfsq index file: wrong type, unsupported
    version, truncated, or corrupted."""


# ----------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------


def _align(n):
    return -(-n // _ALIGNMENT) * _ALIGNMENT


def _check_json_value(value, where, open_containers):
    """Raise unless ``value`` round-trips exactly through strict JSON."""
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}; index file headers must hold finite floats only")
        return
    if isinstance(value, (list, tuple, dict)):
        # json.dumps would also detect a cycle, but only after recursing deeply.
        if id(value) in open_containers:
            raise ValueError(f"{where} contains a circular reference")
        open_containers.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    # json.dumps would silently turn the key into a string, so
                    # the header read back would differ from the one written.
                    raise TypeError(f"{where} has key {key!r} of type {type(key).__name__}; keys must be str")
                _check_json_value(item, f"{where}[{key!r}]", open_containers)
        else:
            for i, item in enumerate(value):
                _check_json_value(item, f"{where}[{i}]", open_containers)
        open_containers.discard(id(value))
        return
    raise TypeError(
        f"{where} has type {type(value).__module__}.{type(value).__qualname__}, which cannot be "
        "stored in an index file header; use int, float, str, bool, None, list or dict "
        "(convert numpy scalars with int() or float())"
    )


def _check_array(name, array):
    """Return the little-endian storage dtype of ``array`` or raise TypeError."""
    if not isinstance(name, str):
        raise TypeError(f"array names must be str, got {type(name).__name__} {name!r}")
    if not name:
        raise ValueError("array names must not be empty")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array {name!r} must be a numpy.ndarray, got {type(array).__name__}")
    dtype = array.dtype
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf" or dtype.name not in _DTYPES:
        raise TypeError(
            f"array {name!r} has dtype {dtype}, which cannot be stored in an index file; "
            f"supported dtypes are {', '.join(_DTYPES)}"
        )
    if array.ndim > _MAX_NDIM:
        raise ValueError(f"array {name!r} has {array.ndim} dimensions; at most {_MAX_NDIM} are supported")
    return _DTYPES[dtype.name]


def _iter_chunks(array, storage_dtype):
    """Yield the bytes of ``array`` in C order and ``storage_dtype`` as
    contiguous uint8 arrays of about ``_CHUNK_NBYTES`` each.

    A C-contiguous array already in ``storage_dtype`` is sliced without any
    copy; any other array is converted a block of leading-axis rows at a time,
    so at most one chunk is ever copied.
    """
    if array.flags.c_contiguous and array.dtype == storage_dtype:
        flat = array.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, _CHUNK_NBYTES):
            yield flat[start : start + _CHUNK_NBYTES]
        return
    if array.ndim == 0 or array.size == 0:
        yield np.ascontiguousarray(array, dtype=storage_dtype).reshape(-1).view(np.uint8)
        return
    row_nbytes = (array.size // array.shape[0]) * storage_dtype.itemsize
    rows_per_chunk = max(1, _CHUNK_NBYTES // row_nbytes)
    for start in range(0, array.shape[0], rows_per_chunk):
        block = np.ascontiguousarray(array[start : start + rows_per_chunk], dtype=storage_dtype)
        yield block.reshape(-1).view(np.uint8)


def _write_section(file, array, storage_dtype):
    """Write the bytes of one array and return their crc32."""
    crc = 0
    for chunk in _iter_chunks(array, storage_dtype):
        file.write(memoryview(chunk))
        crc = zlib.crc32(chunk, crc)
    return crc


def _encode_toc(header, sections):
    toc = {"header": header, "sections": sections}
    # ensure_ascii keeps even lone surrogates in strings encodable, and
    # allow_nan=False keeps the file strict JSON.
    return json.dumps(toc, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _pack_preamble(toc_bytes):
    fields = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(toc_bytes), 0, 0)
    toc_crc = zlib.crc32(toc_bytes, zlib.crc32(fields[:_PREAMBLE_CRC_COVERS]))
    return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(toc_bytes), toc_crc, 0)


def _open_temporary(directory, basename):
    """Create and open a new, empty file next to the target.

    Unlike tempfile.mkstemp, which always creates mode 0o600, os.open with
    mode 0o666 lets the process umask decide the permissions, so the final
    file gets the same permissions as any other file the user creates.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary_path = os.path.join(directory, f".{basename}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(temporary_path, flags, 0o666)
        except FileExistsError:
            continue
        return temporary_path, fd


def _fsync_directory(directory):
    # Makes the rename itself durable on POSIX; not possible (nor needed) on
    # Windows, where opening a directory fails.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_index_file(path, header, arrays):
    """Write an index file atomically.

    The file is written to a temporary file in the same directory, flushed
    to disk and then renamed onto ``path``, so a crash or an error in the
    middle of saving leaves any previous file at ``path`` untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write the file. An existing file is replaced.
    header : dict
        Index parameters: str keys and values made of int, float (finite),
        str, bool, None, list, tuple and dict. Stored as JSON, so tuples are
        read back as lists.
    arrays : dict of str to numpy.ndarray
        Named arrays of any shape (including 0-d and empty) with dtype uint8,
        int8, uint16, int16, uint32, int32, uint64, int64, float16, float32,
        float64 or bool (numpy scalars count as 0-d arrays). They are stored
        little-endian in C order, whatever their byte order and memory layout.

    Raises
    ------
    TypeError
        If ``header`` or ``arrays`` holds a value of an unsupported type, or
        an array has an unsupported dtype.
    ValueError
        If ``header`` holds a non-finite float or a circular reference, or is
        too large.
    OSError
        If the file cannot be written.
    """
    layout = _layout(header, arrays)
    path = os.fspath(path)
    directory, basename = os.path.split(os.path.abspath(path))
    temporary_path, fd = _open_temporary(directory, basename)
    try:
        with os.fdopen(fd, "wb") as file:
            _write_stream(file, *layout)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_path, path)
    except BaseException:
        try:
            os.unlink(temporary_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def index_bytes(header, arrays):
    """The bytes of the index file :func:`write_index_file` would write
    (the same format, checksums included), without a file; the same
    arguments and errors, except ``OSError``."""
    buffer = io.BytesIO()
    _write_stream(buffer, *_layout(header, arrays))
    return buffer.getvalue()


def _layout(header, arrays):
    """Check the header and arrays; return what :func:`_write_stream`
    writes: the header, the arrays, their storage dtypes, the sections and
    the table of contents with placeholder checksums (its final size)."""
    if not isinstance(header, Mapping):
        raise TypeError(f"header must be a dict, got {type(header).__name__}")
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a dict of str to numpy.ndarray, got {type(arrays).__name__}")
    header = dict(header)
    _check_json_value(header, "header", set())

    # numpy scalars are accepted as 0-d arrays: arithmetic on 0-d arrays
    # returns them, and they have a dtype like any array.
    arrays = {name: np.asarray(array) if isinstance(array, np.generic) else array for name, array in arrays.items()}
    storage_dtypes = {name: _check_array(name, array) for name, array in arrays.items()}
    sections = []
    end = 0
    for name, array in arrays.items():
        offset = _align(end) if sections else 0
        nbytes = array.size * storage_dtypes[name].itemsize
        sections.append(
            {
                "name": name,
                "dtype": array.dtype.name,
                "shape": [int(n) for n in array.shape],
                "offset": offset,
                "nbytes": nbytes,
                # Placeholder of the final width; filled in once the data is written.
                "crc32": "00000000",
            }
        )
        end = offset + nbytes
    toc_bytes = _encode_toc(header, sections)
    if len(toc_bytes) > _MAX_TOC_NBYTES:
        raise ValueError(
            f"index file header is {len(toc_bytes)} bytes of JSON; at most {_MAX_TOC_NBYTES} are supported"
        )
    return header, arrays, storage_dtypes, sections, toc_bytes


def _write_stream(file, header, arrays, storage_dtypes, sections, toc_bytes):
    """Write an index file's bytes to a seekable binary stream at offset 0."""
    toc_end = _PREAMBLE.size + len(toc_bytes)
    data_start = _align(toc_end)
    # The preamble and TOC are written twice: first with placeholder
    # checksums to reserve their space, then for real once the section
    # checksums are known.
    file.write(_pack_preamble(toc_bytes))
    file.write(toc_bytes)
    position = toc_end
    total_bytes = sum(section["nbytes"] for section in sections)
    written = 0
    for section, array in zip(sections, arrays.values()):
        section_start = data_start + section["offset"]
        file.write(bytes(section_start - position))
        section["crc32"] = f"{_write_section(file, array, storage_dtypes[section['name']]):08x}"
        position = section_start + section["nbytes"]
        written += section["nbytes"]
        report("writing", written, total_bytes)
    final_toc_bytes = _encode_toc(header, sections)
    if len(final_toc_bytes) != len(toc_bytes):  # pragma: no cover - guards the fixed-width crc
        raise RuntimeError("internal error: the table of contents changed size")
    file.seek(0)
    file.write(_pack_preamble(final_toc_bytes))
    file.write(final_toc_bytes)


# ----------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------


def _describe_foreign(start):
    for signature, description in _FOREIGN_SIGNATURES:
        if start.startswith(signature):
            return description
    if not start:
        return "the file is empty"
    try:
        start.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with {start[:8]!r}"
    return f"it looks like a text file (starts with {start[:8]!r})"


def _reject_duplicate_keys(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _is_int(value):
    # JSON true/false parse as bool, a subclass of int; they are not sizes.
    return type(value) is int


class _Reader:
    """Reads and validates one open index file; every error names the file."""

    def __init__(self, path, file, file_nbytes):
        self.path = path
        self.file = file
        self.file_nbytes = file_nbytes

    def error(self, problem):
        return IndexFileError(f"{self.path}: {problem}")

    def read_exactly(self, nbytes, what):
        data = self.file.read(nbytes)
        if len(data) != nbytes:
            raise self.error(f"file is truncated: {what} ends past the end of the file")
        return data

    def read_preamble(self):
        start = self.file.read(_PREAMBLE.size)
        # A short file that matches the magic as far as it goes is a
        # truncated index file; anything else is some other kind of file.
        if not start or not start.startswith(MAGIC[: len(start)]):
            raise self.error(f"not an ivfsq index file: {_describe_foreign(start)}")
        if len(start) < _PREAMBLE.size:
            raise self.error(
                f"file is truncated: it has only {len(start)} bytes, less than the {_PREAMBLE.size}-byte preamble"
            )
        magic, version, flags, toc_nbytes, toc_crc, reserved = _PREAMBLE.unpack(start)
        if version not in SUPPORTED_VERSIONS:
            hint = " (written by a newer ivfsq? upgrade ivfsq to read it)" if version > FORMAT_VERSION else ""
            raise self.error(
                f"unsupported index file format version {version}{hint}; "
                f"this ivfsq reads format version {', '.join(map(str, SUPPORTED_VERSIONS))}"
            )
        if flags != 0:
            raise self.error(f"unsupported flags 0x{flags:08x} in the preamble; expected 0")
        if reserved != 0:
            raise self.error(f"reserved preamble field is 0x{reserved:08x}; expected 0 (corrupted file?)")
        if toc_nbytes > _MAX_TOC_NBYTES:
            raise self.error(
                f"table of contents declares {toc_nbytes} bytes, more than the limit of {_MAX_TOC_NBYTES} "
                "(corrupted file?)"
            )
        if _PREAMBLE.size + toc_nbytes > self.file_nbytes:
            raise self.error(
                f"file is truncated: the table of contents needs {_PREAMBLE.size + toc_nbytes} bytes "
                f"but the file has only {self.file_nbytes}"
            )
        return start, toc_nbytes, toc_crc

    def read_toc(self):
        preamble, toc_nbytes, expected_crc = self.read_preamble()
        toc_bytes = self.read_exactly(toc_nbytes, "the table of contents")
        actual_crc = zlib.crc32(toc_bytes, zlib.crc32(preamble[:_PREAMBLE_CRC_COVERS]))
        if actual_crc != expected_crc:
            raise self.error(
                f"checksum mismatch in the table of contents (stored {expected_crc:08x}, "
                f"computed {actual_crc:08x}); the file is corrupted"
            )
        try:
            toc = json.loads(
                toc_bytes.decode("utf-8"),
                object_pairs_hook=_reject_duplicate_keys,
                parse_constant=_reject_constant,
                parse_float=_parse_finite_float,
            )
        except (ValueError, RecursionError) as exc:
            # UnicodeDecodeError and JSONDecodeError are ValueErrors; a deeply
            # nested document raises RecursionError.
            raise self.error(f"table of contents is not valid UTF-8 JSON: {exc}") from None
        return toc, _PREAMBLE.size + toc_nbytes

    def check_toc(self, toc, toc_end):
        """Validate the TOC structure and layout against the file size.

        Returns the user header and a list of (name, dtype, shape, absolute
        offset, nbytes, crc32) tuples.
        """
        if not isinstance(toc, dict) or set(toc) != _TOC_KEYS:
            found = sorted(toc) if isinstance(toc, dict) else type(toc).__name__
            raise self.error(f"table of contents must be an object with keys {sorted(_TOC_KEYS)}, got {found}")
        header, raw_sections = toc["header"], toc["sections"]
        if not isinstance(header, dict):
            raise self.error(f"header must be a JSON object, got {type(header).__name__}")
        if not isinstance(raw_sections, list):
            raise self.error(f"'sections' must be a JSON array, got {type(raw_sections).__name__}")

        data_start = _align(toc_end)
        sections = []
        names = set()
        previous_end = None  # relative to data_start
        for index, raw in enumerate(raw_sections):
            where = f"section #{index}"
            if not isinstance(raw, dict):
                raise self.error(f"{where} must be a JSON object, got {type(raw).__name__}")
            if set(raw) != _SECTION_KEYS:
                raise self.error(f"{where} must have keys {sorted(_SECTION_KEYS)}, got {sorted(raw)}")
            name = raw["name"]
            if not isinstance(name, str) or not name:
                raise self.error(f"{where} has invalid name {name!r}; expected a non-empty string")
            where = f"section {name!r}"
            if name in names:
                raise self.error(f"duplicate section name {name!r}")
            names.add(name)

            dtype_name = raw["dtype"]
            if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
                raise self.error(
                    f"{where} has unsupported dtype {dtype_name!r}; supported dtypes are {', '.join(_DTYPES)}"
                )
            dtype = _DTYPES[dtype_name]

            shape = raw["shape"]
            if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
                raise self.error(f"{where} has invalid shape {shape!r}; expected a list of at most {_MAX_NDIM} ints")
            for extent in shape:
                if not _is_int(extent) or not 0 <= extent <= _MAX_INTP:
                    raise self.error(f"{where} has invalid shape {shape!r}; extents must be non-negative ints")
            # Python ints cannot overflow; numpy refuses shapes whose nonzero
            # extents multiply past intp even when another extent is 0.
            nonzero_nbytes = dtype.itemsize * math.prod(extent for extent in shape if extent)
            if nonzero_nbytes > _MAX_INTP:
                raise self.error(f"{where} has shape {shape!r}, too large for an array")
            expected_nbytes = dtype.itemsize * math.prod(shape)

            nbytes = raw["nbytes"]
            if not _is_int(nbytes) or nbytes != expected_nbytes:
                raise self.error(
                    f"{where} declares nbytes {nbytes!r}, but shape {shape} of {dtype_name} needs {expected_nbytes}"
                )
            offset = raw["offset"]
            if not _is_int(offset) or offset < 0:
                raise self.error(f"{where} has invalid offset {offset!r}; expected a non-negative int")
            if offset % _ALIGNMENT:
                raise self.error(f"{where} has offset {offset}, which is not a multiple of {_ALIGNMENT}")
            if previous_end is None:
                expected_offset = 0
            else:
                if offset < previous_end:
                    raise self.error(
                        f"{where} at offset {offset} overlaps the previous section, which ends at {previous_end} "
                        "(sections out of order or overlapping)"
                    )
                expected_offset = _align(previous_end)
            if offset != expected_offset:
                raise self.error(f"{where} is at offset {offset}, expected {expected_offset}")
            crc = raw["crc32"]
            if not isinstance(crc, str) or len(crc) != 8 or any(c not in "0123456789abcdef" for c in crc):
                raise self.error(f"{where} has invalid crc32 {crc!r}; expected 8 lowercase hex digits")

            absolute_end = data_start + offset + nbytes
            if absolute_end > self.file_nbytes:
                raise self.error(
                    f"file is truncated: {where} needs bytes up to {absolute_end} "
                    f"but the file has only {self.file_nbytes}"
                )
            sections.append((name, dtype, tuple(shape), data_start + offset, nbytes, int(crc, 16)))
            previous_end = offset + nbytes

        expected_file_nbytes = toc_end if not sections else data_start + previous_end
        if self.file_nbytes != expected_file_nbytes:
            raise self.error(
                f"file has {self.file_nbytes - expected_file_nbytes} unexpected trailing bytes after "
                f"the last section (expected {expected_file_nbytes} bytes in all)"
            )
        return header, sections

    def skip_padding(self, position, target):
        padding = self.read_exactly(target - position, "padding")
        if padding.count(0) != len(padding):
            raise self.error(f"non-zero padding bytes between offsets {position} and {target}; the file is corrupted")

    def check_bools(self, name, chunk):
        # A byte other than 0 or 1 is not a valid numpy bool.
        if chunk.size and chunk.max() > 1:
            raise self.error(f"section {name!r} holds bool values other than 0 and 1")

    def check_crc(self, name, expected, actual):
        if expected != actual:
            raise self.error(
                f"checksum mismatch in section {name!r} (stored {expected:08x}, computed {actual:08x}); "
                "the file is corrupted"
            )

    def read_into(self, name, dtype, shape, nbytes, expected_crc):
        """Read one section into a fresh array, checking its checksum."""
        array = np.empty(shape, dtype=dtype)
        flat = memoryview(array.reshape(-1).view(np.uint8))
        crc = 0
        position = 0
        while position < nbytes:
            view = flat[position : position + _CHUNK_NBYTES]
            count = self.file.readinto(view)
            if not count:
                # The file shrank after it was measured.
                raise self.error(f"file is truncated: section {name!r} ends past the end of the file")
            crc = zlib.crc32(view[:count], crc)
            if dtype.kind == "b":
                self.check_bools(name, np.frombuffer(view[:count], dtype=np.uint8))
            position += count
        self.check_crc(name, expected_crc, crc)
        if not dtype.isnative:
            array = array.astype(dtype.newbyteorder("="))
        return array

    def map_section(self, name, dtype, shape, offset, nbytes, expected_crc):
        """Map one section read-only, checking its checksum."""
        if nbytes == 0:
            # mmap cannot map zero bytes; an empty array has no data to share.
            array = np.empty(shape, dtype=dtype.newbyteorder("="))
            array.flags.writeable = False
            return array
        # Mapping the already open file (not the path) guarantees the data
        # comes from the file whose size and TOC were validated, even if the
        # path is replaced meanwhile.
        array = np.memmap(self.file, dtype=dtype, mode="r", offset=offset, shape=shape)
        flat = array.reshape(-1).view(np.uint8)
        crc = 0
        for start in range(0, nbytes, _CHUNK_NBYTES):
            chunk = flat[start : start + _CHUNK_NBYTES]
            crc = zlib.crc32(chunk, crc)
            if dtype.kind == "b":
                self.check_bools(name, chunk)
        self.check_crc(name, expected_crc, crc)
        return array


def read_index_file(path, *, mmap=False):
    """Read and validate an index file written by :func:`write_index_file`.

    Everything in the file is validated before it is used: the magic number,
    the format version, the checksum and structure of the table of contents,
    every declared size against the real file size (before anything is
    allocated), the zero padding and the checksum of every array.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    mmap : bool, default False
        If False, read every array into a fresh, writable numpy array. If
        True, return read-only :class:`numpy.memmap` views of the file
        instead (empty arrays are returned as ordinary read-only arrays, as
        zero bytes cannot be mapped); their checksums are still verified,
        which reads the whole file once. On a big-endian host mapped arrays
        keep their little-endian dtype.

    Returns
    -------
    header : dict
        The header given to :func:`write_index_file`, as read back from JSON
        (tuples become lists).
    arrays : dict of str to numpy.ndarray
        The arrays, in the order they were written, in native byte order.

    Raises
    ------
    IndexFileError
        If the file is not an ivfsq index file, has an unsupported format
        version, or is truncated or corrupted. The message names the file
        and the problem.
    FileNotFoundError
        If ``path`` does not exist.

    Notes
    -----
    With ``mmap=True`` the arrays stay backed by the file: if another process
    truncates the file in place while they are in use, accessing them may
    crash the process. :func:`write_index_file` never does that; it replaces
    files atomically, which leaves existing mappings intact.
    """
    path = os.fspath(path)
    display_path = os.fsdecode(path)
    with open(path, "rb") as file:
        return _read_stream(_Reader(display_path, file, os.fstat(file.fileno()).st_size), mmap)


def read_index_bytes(data, name="index bytes"):
    """:func:`read_index_file` of the bytes :func:`index_bytes` (or a file)
    holds, every check included; errors name ``name``. The arrays are
    fresh, writable copies."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if not isinstance(data, bytes):
        data = bytes(memoryview(data).cast("B"))
    # BytesIO shares a bytes object's buffer until written to: the bytes are
    # read in place, once, into the arrays.
    return _read_stream(_Reader(name, io.BytesIO(data), len(data)), False)


def _read_stream(reader, mmap):
    """The header and arrays of the index file ``reader`` reads."""
    toc, toc_end = reader.read_toc()
    header, sections = reader.check_toc(toc, toc_end)
    arrays = {}
    position = toc_end
    for name, dtype, shape, offset, nbytes, crc in sections:
        reader.skip_padding(position, offset)
        if mmap:
            arrays[name] = reader.map_section(name, dtype, shape, offset, nbytes, crc)
            reader.file.seek(offset + nbytes)
        else:
            arrays[name] = reader.read_into(name, dtype, shape, nbytes, crc)
        position = offset + nbytes
    return header, arrays
