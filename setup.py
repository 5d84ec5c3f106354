"""Builds ivfsq with its numba kernels compiled (see ``_BuildWithKernels``);
everything else about the package is in ``pyproject.toml``."""

import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


class _BuildWithKernels(build_py):
    """``build_py``, then ``python -m ivfsq warmup --manifest`` on the built
    copy: every kernel variant is compiled into the ``__pycache__`` folders
    of the build, which the wheel carries, so the installed package starts
    warm (see ``ivfsq._numba_cache``). The compiled code is for this
    machine's CPU and numba; elsewhere numba compiles as if it were absent.

    Skipped for editable installs (their sources are the checkout, which
    caches as it runs) and with ``IVFSQ_PREBUILD=0``. A failed warm-up is
    reported and leaves a package that compiles on first use.
    """

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if os.environ.get("IVFSQ_PREBUILD") == "0":
            self._remove_compiled()
            return
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("NUMBA_")}
        # Ahead of what is there: pip's isolated build environment puts its
        # packages on PYTHONPATH.
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.abspath(self.build_lib)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        print("ivfsq: compiling the numba kernels (IVFSQ_PREBUILD=0 skips this)", flush=True)
        command = [sys.executable, "-m", "ivfsq", "warmup", "--quiet"]
        # Two processes share the work where there are two CPUs; a last
        # pass in one process then loads every variant, compiles any whose
        # index entry a concurrent write lost, and writes the manifests.
        parts = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1)
        if parts > 1:
            workers = [subprocess.Popen(command + [f"--part={part}/{parts}"], env=env)
                       for part in range(parts)]
            for worker in workers:
                worker.wait()
        result = subprocess.run(command + ["--manifest"], env=env)
        if result.returncode != 0:
            print("ivfsq: the kernels were not compiled; they compile on first use",
                  file=sys.stderr, flush=True)

    def _remove_compiled(self):
        """Drop what an earlier build compiled into this build folder, which
        the wheel would otherwise carry."""
        for folder, _, names in os.walk(self.build_lib):
            for name in names:
                if name.endswith((".nbi", ".nbc")) or name == "ivfsq-prebuilt.json":
                    os.remove(os.path.join(folder, name))


setup(cmdclass={"build_py": _BuildWithKernels})
