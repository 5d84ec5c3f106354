"""numba's disk cache of the kernels follows every kernel source file, and
a fresh cache folder starts from the variants compiled with the package."""

import os
import subprocess
import sys
import textwrap

import numpy as np

from ivfsq import _numba_cache as _cache


def test_digest_follows_every_source_file(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not source\n")
    first = _cache.source_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("changed\n")
    assert _cache.source_digest(tmp_path) == first
    (tmp_path / "b.py").write_text("y = 3\n")
    assert _cache.source_digest(tmp_path) != first


def _run(package_root, cache_dir, package="stampkernels"):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_root), *sys.path]))
    env.pop("NUMBA_CACHE_DIR", None)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    result = subprocess.run(
        [sys.executable, "-c", f"from {package} import caller; print(caller.run(), "
                               "sum(caller.run.stats.cache_hits.values()))"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    value, hits = result.stdout.split()
    return int(value), int(hits)


def _package(tmp_path, name, imports, returns):
    """A package ``name`` whose ``caller.run`` (cached by numba) returns
    ``returns``, with ivfsq's stamp over its files, and an empty helper.py."""
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        import os
        from ivfsq import _numba_cache
        _numba_cache.install(os.path.dirname(__file__))
    """))
    (package / "caller.py").write_text(textwrap.dedent(f"""
        from numba import njit
        {imports}

        @njit(cache=True)
        def run():
            return {returns}
    """))
    (package / "helper.py").write_text("")
    return package


def test_changed_helper_module_recompiles_its_callers(tmp_path):
    """A kernel whose helper lives in a sibling module is recompiled when
    only the helper's file changes (numba alone would load the stale one)."""
    package = _package(tmp_path, "stampkernels", "from stampkernels.helper import value",
                       "value()")
    helper = package / "helper.py"
    helper.write_text("from numba import njit\n\n@njit\ndef value():\n    return 1\n")
    cache_dir = tmp_path / "cache"
    assert _run(tmp_path, cache_dir) == (1, 0)
    assert _run(tmp_path, cache_dir) == (1, 1)  # the cache is used
    helper.write_text("from numba import njit\n\n@njit\ndef value():\n    return 2\n")
    assert _run(tmp_path, cache_dir) == (2, 0)


def test_ivfsq_kernels_carry_the_package_stamp():
    from ivfsq.backends.cpu.kernels import encode

    locator = encode.encode_sq._cache._impl.locator
    sources = _cache.ivfsq_sources()
    assert locator.get_source_stamp() == (
        "ivfsq-kernels", _cache.source_digest(*sources), np.__version__)
    assert any(path.endswith("_spin.py") for path in sources)




def test_a_fresh_cache_folder_starts_from_the_prebuilt_files(tmp_path):
    package = _package(tmp_path, "seedkernels", "", "7")
    # Compiled beside the sources (numba's in-tree cache), as the package
    # build does, then listed in the manifest.
    assert _run(tmp_path, None, "seedkernels") == (7, 0)
    assert _cache.write_manifests(package) == 2  # the index and one variant
    fresh = tmp_path / "fresh"
    assert _run(tmp_path, fresh, "seedkernels") == (7, 1)  # loaded, not compiled
    assert [p.name for p in fresh.rglob("ivfsq-prebuilt-*")]


def test_prebuilt_files_of_other_sources_are_not_copied(tmp_path):
    package = _package(tmp_path, "seedkernels", "", "7")
    assert _run(tmp_path, None, "seedkernels") == (7, 0)
    _cache.write_manifests(package)
    (package / "helper.py").write_text("# changed\n")  # another stamp
    fresh = tmp_path / "fresh"
    assert _run(tmp_path, fresh, "seedkernels") == (7, 0)  # compiled
    assert not list(fresh.rglob("ivfsq-prebuilt-*"))
