"""numba's disk cache for the kernels, keyed on every kernel source file.

numba stamps a cached function with its own source file only: a kernel
module that calls intrinsics or helpers from a sibling module would load a
stale machine-code cache after that sibling changed. :func:`install` makes
the stamp of every function defined in this package the digest of all the
package's ``.py`` files, so a change to any of them recompiles them all.
The cache directory is the one numba would have chosen (``NUMBA_CACHE_DIR``,
``__pycache__`` beside the file, or the user-wide cache).

The hook is numba's list of cache locator classes, which is not public API:
where it is missing, numba's own per-file stamps apply, as before.
"""

import hashlib
import os


def source_digest(directory):
    """SHA-256 over the names and contents of the ``.py`` files directly in
    ``directory``, in name order (hex string)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".py"):
            continue
        digest.update(name.encode())
        digest.update(b"\0")
        with open(os.path.join(directory, name), "rb") as file:
            digest.update(hashlib.sha256(file.read()).digest())
    return digest.hexdigest()


def install(directory):
    """Stamp numba's cache of every function defined in a ``.py`` file of
    ``directory`` with :func:`source_digest` of that directory.

    Call before the kernel modules are imported (numba picks a function's
    cache locator when the decorator runs). Returns the locator class, or
    None when numba has no locator list to extend.
    """
    from numba.core import caching

    # The class that holds the list is CacheImpl in current numba releases,
    # _CacheImpl in older ones.
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    base = getattr(caching, "_CacheLocator", None)
    locators = getattr(impl, "_locator_classes", None)
    if base is None or not isinstance(locators, list):
        return None
    if not isinstance(locators, list):
        return None
    directory = os.path.realpath(directory)
    stamp = ("ivfsq-kernels", source_digest(directory))

    class PackageLocator(base):
        """numba's own locator for the file, with the package-wide stamp."""

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
            if os.path.dirname(os.path.realpath(py_file)) != directory:
                return None
            for other in locators:
                if getattr(other, "ivfsq_package_locator", False):
                    continue
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
            return None

    PackageLocator.ivfsq_package_locator = True
    PackageLocator.directory = directory
    # One entry per directory: a reload replaces it rather than stacking.
    locators[:] = [
        other for other in locators
        if getattr(other, "directory", None) != directory
        or not getattr(other, "ivfsq_package_locator", False)
    ]
    locators.insert(0, PackageLocator)
    return PackageLocator
