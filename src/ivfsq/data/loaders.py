"""Loading vectors and data sets: ``.npy``, TEXMEX ``.fvecs``/``.bvecs``/``.ivecs``,
ann-benchmarks ``.hdf5`` files and data set folders (``base.npy``,
``query.npy``, ``gt_<metric>.npy``), and finding the shared data sets.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from ivfsq import metrics

# Ground-truth file tags and the metric name each one maps to.
# (A metric's family is its tag.)
_FILE_TAG = {**{tag: tag for tag in metrics.FAMILIES},
             **{name: metric.family for name, metric in metrics.METRICS.items()}}
_TAG_METRIC = {tag: metrics.of_family(tag).name for tag in metrics.FAMILIES}
_TAG_PREFERENCE = ("l2", "cosine", "ip")


def load_dataset_dir(path, metric=None, *, mmap=True):
    """Load a data set folder (``base.npy``, ``query.npy``, ``gt_<metric>.npy``).

    Parameters
    ----------
    path : str or os.PathLike
        The folder. It must hold ``base.npy`` (N, d) and ``query.npy``
        (nq, d); ground truth ``gt_<tag>.npy`` (nq, K) integer ids, best
        first, and ``gt_<tag>_dist.npy`` are optional. Tags are ``l2``,
        ``ip`` and ``cosine``.
    metric : str, optional
        ``"l2"``, ``"ip"``, ``"cosine"`` or one of our metric names
        (``"sqeuclidean"``/``"euclidean"`` mean ``l2``, ``"inner_product"``
        means ``ip``). If None, the ground truth present is used, preferring
        ``l2``, then ``cosine``, then ``ip``.
    mmap : bool, default True
        Memory-map ``base.npy`` read-only instead of reading it into memory.

    Returns
    -------
    dict
        ``"base"``, ``"queries"``, ``"gt"`` (ids, or None if that ground truth
        is absent), ``"gt_dist"`` (its scores, or None), ``"metric"``
        (``"sqeuclidean"``, ``"inner_product"`` or ``"cosine"``; None when
        ``metric`` is None and no ground truth exists) and ``"name"`` (the
        folder name).

    Examples
    --------
    >>> from ivfsq.datasets import find_shared_dataset, load_dataset_dir
    >>> folder = find_shared_dataset("siftsmall")
    >>> if folder is not None:
    ...     ds = load_dataset_dir(folder)
    ...     print(ds["metric"], ds["base"].shape, ds["gt"].shape)
    ... else:
    ...     print("sqeuclidean (10000, 128) (100, 100)")
    sqeuclidean (10000, 128) (100, 100)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"data set folder {str(folder)!r} does not exist "
                                f"or is not a directory")
    if metric is None:
        tags = [t for t in _TAG_PREFERENCE if (folder / f"gt_{t}.npy").is_file()]
        tag = tags[0] if tags else None
    else:
        tag = _metric_tag(metric)

    base = _load_npy(folder / "base.npy", mmap_mode="r" if mmap else None)
    queries = _load_npy(folder / "query.npy")
    for name, arr in (("base.npy", base), ("query.npy", queries)):
        if arr.ndim != 2:
            raise ValueError(f"{str(folder / name)!r} must hold a 2-D array, got "
                             f"shape {arr.shape}")
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"{str(folder / 'query.npy')!r} has dimension "
                         f"{queries.shape[1]} but base.npy has {base.shape[1]}")

    gt = gt_dist = None
    if tag is not None:
        gt_path = folder / f"gt_{tag}.npy"
        if gt_path.is_file():
            gt = _load_npy(gt_path)
            if gt.ndim != 2 or gt.shape[0] != queries.shape[0] or gt.dtype.kind not in "iu":
                raise ValueError(f"{str(gt_path)!r} must hold integer ids of shape "
                                 f"({queries.shape[0]}, K), got {gt.dtype} "
                                 f"{gt.shape}")
            dist_path = folder / f"gt_{tag}_dist.npy"
            if dist_path.is_file():
                gt_dist = _load_npy(dist_path)
                if gt_dist.shape != gt.shape:
                    raise ValueError(f"{str(dist_path)!r} has shape {gt_dist.shape}, "
                                     f"expected {gt.shape} like {gt_path.name}")
    return {
        "base": base,
        "queries": queries,
        "gt": gt,
        "gt_dist": gt_dist,
        "metric": None if tag is None else _TAG_METRIC[tag],
        "name": folder.resolve().name,
    }


def _load_npy(path, mmap_mode=None):
    """np.load with a message that names the missing file."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file {str(path)!r}")
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def find_shared_dataset(name):
    """Locate a shared data set folder by name, or return None.

    Looks, in order, in ``$IVFSQ_DATA_DIR/<name>`` (when that variable is
    set), then for ``shared/data/<name>`` in each parent directory of this
    module and then of the current working directory (the shared data sits
    next to the repository clone). A folder counts only if it holds
    ``base.npy``.

    Parameters
    ----------
    name : str
        Folder name, e.g. ``"siftsmall"``, ``"fashion-mnist"``,
        ``"pypi-minilm"``.

    Returns
    -------
    pathlib.Path or None

    Examples
    --------
    >>> from ivfsq.datasets import find_shared_dataset
    >>> find_shared_dataset("no-such-data-set") is None
    True
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"name must be a plain folder name, got {name!r}")

    candidates = []
    env = os.environ.get("IVFSQ_DATA_DIR")
    if env:
        candidates.append(pathlib.Path(env) / name)
    for start in (pathlib.Path(__file__).resolve().parent, pathlib.Path.cwd()):
        for parent in (start, *start.parents):
            candidates.append(parent / "shared" / "data" / name)
    for folder in candidates:
        if (folder / "base.npy").is_file():
            return folder
    return None


# --------------------------------------------------------------- file loaders
#: File formats :func:`load_vectors` reads, by suffix.
VECTOR_SUFFIXES = (".npy", ".fvecs", ".bvecs", ".ivecs")
HDF5_SUFFIXES = (".hdf5", ".h5")

# TEXMEX formats: each row is a little-endian int32 dimension, then the row.
_TEXMEX_DTYPES = {".fvecs": np.dtype("<f4"), ".ivecs": np.dtype("<i4"), ".bvecs": np.dtype("u1")}

# ann-benchmarks "distance" attribute -> metric.
_ANN_METRICS = {"euclidean": "sqeuclidean", "angular": "cosine", "dot": "inner_product",
                "ip": "inner_product", "cosine": "cosine", "l2": "sqeuclidean"}


def read_texmex(path, *, mmap=True):
    """Read a TEXMEX ``.fvecs`` (float32), ``.bvecs`` (uint8) or ``.ivecs``
    (int32) file as a 2-D array.

    Every row is stored as its dimension (int32) followed by its values; all
    rows must have the same dimension. With ``mmap`` the result is a
    read-only strided view of a memory map (nothing is read until used), so
    files larger than RAM can be indexed batch by batch.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unknown suffix, an empty or truncated file, a non-positive
        dimension, or rows of different dimensions.

    Examples
    --------
    >>> import numpy as np, pathlib, tempfile
    >>> from ivfsq.datasets import read_texmex
    >>> rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> record = np.hstack([np.full((2, 1), 3, np.int32).view(np.float32), rows])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "x.fvecs"
    ...     record.tofile(path)
    ...     read_texmex(path).tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix not in _TEXMEX_DTYPES:
        raise ValueError(f"path must end in .fvecs, .bvecs or .ivecs, got {str(path)!r}")
    dtype = _TEXMEX_DTYPES[suffix]
    size = path.stat().st_size
    if size < 4:
        raise ValueError(f"{str(path)!r} is empty or truncated ({size} bytes): not a "
                         f"{suffix} file")
    dim = int(np.fromfile(path, dtype="<i4", count=1)[0])
    row_bytes = 4 + dim * dtype.itemsize
    if dim <= 0 or size % row_bytes:
        raise ValueError(
            f"{str(path)!r} is not a valid {suffix} file: its first row declares dimension "
            f"{dim}, which does not divide the file size {size} into rows of {row_bytes} bytes"
        )
    n_rows = size // row_bytes
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n_rows, row_bytes))
    dims = raw[:, :4].view("<i4")[:, 0]
    if not np.all(dims == dim):
        bad = int(np.flatnonzero(dims != dim)[0])
        raise ValueError(f"{str(path)!r}: row {bad} declares dimension {int(dims[bad])}, "
                         f"row 0 declares {dim}; all rows must have the same dimension")
    values = raw[:, 4:].view(dtype)
    return values if mmap else np.array(values)


def read_ann_hdf5(path):
    """Read an ann-benchmarks HDF5 file (needs the optional ``h5py``).

    Returns a dict: ``"base"`` (the ``train`` set), ``"queries"`` (``test``),
    ``"gt"`` (``neighbors``, or None), ``"gt_dist"`` (``distances``, or
    None), ``"metric"`` (from the file's ``distance`` attribute:
    euclidean -> ``"sqeuclidean"``, angular -> ``"cosine"``, dot ->
    ``"inner_product"``; None when absent) and ``"name"`` (the file stem).
    Arrays are read into memory.
    """
    path = _existing_file(path)
    try:
        import h5py
    except ImportError:
        raise ImportError(
            f"reading {str(path)!r} needs h5py, which is not installed: "
            f"pip install 'ivfsq[hdf5]' (or pip install h5py)"
        ) from None
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{str(path)!r} is not a readable HDF5 file ({error})") from None
    with handle:
        missing = [name for name in ("train", "test") if name not in handle]
        if missing:
            raise ValueError(f"{str(path)!r} is not an ann-benchmarks file: no "
                             f"{' or '.join(missing)} data set")
        distance = handle.attrs.get("distance")
        if isinstance(distance, bytes):
            distance = distance.decode()
        metric = None
        if distance is not None:
            if str(distance) not in _ANN_METRICS:
                raise ValueError(f"{str(path)!r}: distance {distance!r} is not supported "
                                 f"(expected one of {', '.join(sorted(_ANN_METRICS))})")
            metric = _ANN_METRICS[str(distance)]
        data = {
            "base": np.asarray(handle["train"]),
            "queries": np.asarray(handle["test"]),
            "gt": np.asarray(handle["neighbors"]) if "neighbors" in handle else None,
            "gt_dist": np.asarray(handle["distances"]) if "distances" in handle else None,
            "metric": metric,
            "name": path.stem,
        }
    for name in ("base", "queries"):
        if data[name].ndim != 2:
            raise ValueError(f"{str(path)!r}: {name} must be 2-D, got shape {data[name].shape}")
    if data["queries"].shape[1] != data["base"].shape[1]:
        raise ValueError(f"{str(path)!r}: test has dimension {data['queries'].shape[1]} but "
                         f"train has {data['base'].shape[1]}")
    return data


def load_vectors(path, *, mmap=True):
    """Read a 2-D array of vectors from ``.npy``, ``.fvecs``, ``.bvecs`` or ``.ivecs``.

    ``.npy`` files are memory-mapped read-only when ``mmap`` (never
    unpickled); TEXMEX files as in :func:`read_texmex`.

    Examples
    --------
    >>> import numpy as np, pathlib, tempfile
    >>> from ivfsq.datasets import load_vectors
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "base.npy"
    ...     np.save(path, np.ones((4, 2), np.float32))
    ...     load_vectors(path).shape
    (4, 2)
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix in _TEXMEX_DTYPES:
        return read_texmex(path, mmap=mmap)
    if suffix != ".npy":
        raise ValueError(f"path must be a .npy, .fvecs, .bvecs or .ivecs file, got "
                         f"{str(path)!r}")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{str(path)!r} is not a readable .npy array ({error})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise ValueError(f"{str(path)!r} must hold a 2-D array (rows, dim), got shape {shape}")
    return array


def load_data(path, metric=None, *, mmap=True):
    """Load a data set from a folder, an ann-benchmarks HDF5 file or a vector file.

    Returns the dict of :func:`load_dataset_dir`. A plain vector file gives
    only ``"base"`` (``"queries"``, ``"gt"`` and ``"gt_dist"`` are None);
    ``metric`` then defaults to None as well.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = pathlib.Path(path)
    if path.is_dir():
        return load_dataset_dir(path, metric, mmap=mmap)
    if path.suffix.lower() in HDF5_SUFFIXES:
        data = read_ann_hdf5(path)
        if metric is not None:
            data["metric"] = _TAG_METRIC[_metric_tag(metric)]
        return data
    base = load_vectors(path, mmap=mmap)
    return {"base": base, "queries": None, "gt": None, "gt_dist": None,
            "metric": None if metric is None else _TAG_METRIC[_metric_tag(metric)],
            "name": path.stem}


def _metric_tag(metric):
    if not isinstance(metric, str) or metric not in _FILE_TAG:
        raise ValueError(f"metric must be one of {', '.join(map(repr, _FILE_TAG))}; "
                         f"got {metric!r}")
    return _FILE_TAG[metric]


def _existing_file(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file")
    return path
