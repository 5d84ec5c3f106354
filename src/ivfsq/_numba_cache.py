"""numba's disk cache for ivfsq's compiled functions: one stamp for all
their sources, and the variants compiled when the package was built.

**One stamp.** numba stamps a cached function with its own source file
only: a kernel module that calls intrinsics or helpers from a sibling
module would load a stale machine-code cache after that sibling changed.
:func:`install` gives every function defined in a group of files the same
stamp, the digest of all of them (and NumPy's version, whose semantics the
typed code follows), so a change to any file recompiles them all. The
cache directory stays the one numba would have chosen (``NUMBA_CACHE_DIR``,
``__pycache__`` beside the file, or the user-wide cache).

**Prebuilt variants.** Building the package (``setup.py``) runs
:mod:`ivfsq.warmup`, which compiles every variant into the ``__pycache__``
folders beside the sources and writes a manifest there
(:data:`MANIFEST_NAME`: the stamp and the files). numba reads those folders
itself when it caches there, its choice for a writable install. When it
caches elsewhere (``NUMBA_CACHE_DIR``, a read-only install), the first
function compiled or loaded copies the manifest's files into that folder,
once per stamp (a marker file records it), so a fresh cache directory
starts warm too. numba keys each variant by the CPU and its own version:
files built on another machine or with another numba are not used, and
the variants are compiled as if they were absent.

The hook is numba's list of cache locator classes, which is not public API:
where it is missing, numba's own per-file stamps apply, as before.
"""

import functools
import hashlib
import json
import os
import shutil
import tempfile

MANIFEST_NAME = "ivfsq-prebuilt.json"
_CACHE_SUFFIXES = (".nbi", ".nbc")
# (shipped folder, cache folder) pairs already seeded in this process.
_seeded = set()


def _sources(paths):
    """The ``.py`` files of ``paths`` (files, or folders for the files
    directly in them), resolved, in name order."""
    files = []
    for path in paths:
        path = os.path.realpath(path)
        if os.path.isdir(path):
            files.extend(os.path.join(path, name) for name in os.listdir(path)
                         if name.endswith(".py"))
        else:
            files.append(path)
    return sorted(set(files))


def source_digest(*paths):
    """SHA-256 over the names and contents of the ``.py`` files of
    ``paths`` (see :func:`_sources`), in name order (hex string)."""
    digest = hashlib.sha256()
    for path in _sources(paths):
        digest.update(os.path.basename(path).encode())
        digest.update(b"\0")
        with open(path, "rb") as file:
            digest.update(hashlib.sha256(file.read()).digest())
    return digest.hexdigest()


def _stamp(paths):
    import numpy

    return ("ivfsq-kernels", source_digest(*paths), numpy.__version__)


def _module_files(folder, modules):
    """numba's cache files in ``folder`` of functions defined in the
    modules named ``modules`` (numba names them ``module.function-...``)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(name for name in names
                  if name.endswith(_CACHE_SUFFIXES) and name.split(".", 1)[0] in modules)


def _copy_atomically(source, target):
    folder = os.path.dirname(target)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".ivfsq-")
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def _seed(shipped, locator, stamp):
    """Copy the prebuilt files of ``shipped`` (a ``__pycache__`` folder with
    a manifest of this ``stamp``) into the cache folder of numba's
    ``locator``, once per stamp. Any failure leaves numba to compile as
    usual."""
    cache_path = locator.get_cache_path()
    if os.path.realpath(shipped) == os.path.realpath(cache_path):
        return
    key = (shipped, cache_path)
    if key in _seeded:
        return
    _seeded.add(key)
    try:
        with open(os.path.join(shipped, MANIFEST_NAME)) as file:
            manifest = json.load(file)
        if manifest.get("stamp") != list(stamp):
            return
        locator.ensure_cache_path()
        marker = os.path.join(cache_path, f"ivfsq-prebuilt-{stamp[1][:16]}")
        if os.path.exists(marker):
            return
        for name in manifest["files"]:
            if os.path.basename(name) == name and name.endswith(_CACHE_SUFFIXES):
                _copy_atomically(os.path.join(shipped, name), os.path.join(cache_path, name))
        with open(marker, "w"):
            pass
    except (OSError, ValueError, KeyError, TypeError):
        return


def write_manifests(*paths):
    """Write the manifest of the prebuilt files beside the sources of
    ``paths`` (one per ``__pycache__`` folder holding some). Returns the
    number of cache files listed."""
    stamp = _stamp(paths)
    by_folder = {}
    for path in _sources(paths):
        folder = os.path.join(os.path.dirname(path), "__pycache__")
        by_folder.setdefault(folder, set()).add(os.path.splitext(os.path.basename(path))[0])
    listed = 0
    for folder, modules in by_folder.items():
        files = _module_files(folder, modules)
        if not files:
            continue
        with open(os.path.join(folder, MANIFEST_NAME), "w") as file:
            json.dump({"stamp": list(stamp), "files": files}, file, indent=1)
        listed += len(files)
    return listed


def install(*paths):
    """Stamp numba's cache of every function defined in the ``.py`` files
    of ``paths`` (files, or folders for the files directly in them) with
    their :func:`source_digest`, and seed numba's cache folder from the
    prebuilt files beside them.

    Call before those modules define their functions (numba picks a
    function's cache locator when the decorator runs). Calling it again
    with the same paths replaces the first hook. Returns the locator class,
    or None when numba has no locator list to extend.
    """
    from numba.core import caching

    # The class that holds the list is CacheImpl in current numba releases,
    # _CacheImpl in older ones.
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    base = getattr(caching, "_CacheLocator", None)
    locators = getattr(impl, "_locator_classes", None)
    if base is None or not isinstance(locators, list):
        return None
    files = frozenset(_sources(paths))
    stamp = _stamp(paths)

    class PackageLocator(base):
        """numba's own locator for the file, with the group's stamp."""

        def __init__(self, inner):
            self._inner = inner

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_source_stamp(self):
            return stamp

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.realpath(py_file) not in files:
                return None
            for other in locators:
                if getattr(other, "ivfsq_files", None) is not None:
                    continue
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    shipped = os.path.join(os.path.dirname(os.path.realpath(py_file)),
                                           "__pycache__")
                    _seed(shipped, inner, stamp)
                    return cls(inner)
            return None

    PackageLocator.ivfsq_files = files
    # One entry per group of files: a second call replaces it rather than
    # stacking.
    locators[:] = [other for other in locators if getattr(other, "ivfsq_files", None) != files]
    locators.insert(0, PackageLocator)
    return PackageLocator


def ivfsq_sources():
    """The files of ivfsq's numba functions: the CPU kernels and the spin
    loops of the thread pool."""
    package = os.path.dirname(os.path.abspath(__file__))
    return (os.path.join(package, "backends", "cpu", "kernels"), os.path.join(package, "_spin.py"))


@functools.lru_cache(maxsize=1)
def install_ivfsq():
    """:func:`install` for :func:`ivfsq_sources`, once per process (both
    the kernels and the spin loops ask for it; the digest reads every
    source file)."""
    return install(*ivfsq_sources())
