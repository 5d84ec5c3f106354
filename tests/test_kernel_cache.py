"""numba's disk cache of the kernels follows every kernel source file."""

import os
import subprocess
import sys
import textwrap

from ivfsq.backends.cpu.kernels import _cache


def test_digest_follows_every_source_file(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not source\n")
    first = _cache.source_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("changed\n")
    assert _cache.source_digest(tmp_path) == first
    (tmp_path / "b.py").write_text("y = 3\n")
    assert _cache.source_digest(tmp_path) != first


def _run(package_root, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir),
               PYTHONPATH=os.pathsep.join([str(package_root), *sys.path]))
    result = subprocess.run(
        [sys.executable, "-c", "from stampkernels import caller; print(caller.run(), "
                               "sum(caller.run.stats.cache_hits.values()))"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    value, hits = result.stdout.split()
    return int(value), int(hits)


def test_changed_helper_module_recompiles_its_callers(tmp_path):
    """A kernel whose helper lives in a sibling module is recompiled when
    only the helper's file changes (numba alone would load the stale one)."""
    package = tmp_path / "stampkernels"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        import os
        from ivfsq.backends.cpu.kernels import _cache
        _cache.install(os.path.dirname(__file__))
    """))
    (package / "caller.py").write_text(textwrap.dedent("""
        from numba import njit
        from stampkernels.helper import value

        @njit(cache=True)
        def run():
            return value()
    """))
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
    directory = os.path.dirname(encode.__file__)
    assert locator.get_source_stamp() == ("ivfsq-kernels", _cache.source_digest(directory))
