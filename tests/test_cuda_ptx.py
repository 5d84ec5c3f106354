"""Every GPU kernel compiles for a real GPU: each signature the backend
launches is compiled to PTX (``numba.cuda.compile_ptx``, no GPU needed), in
a process without the CUDA simulator. Skipped where numba-cuda or its
compiler packages (NVVM, NVRTC: ``numba-cuda[cu12]``) are not installed.
"""

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import json, sys
try:
    from ivfsq.backends.cuda import kernels
except ImportError as error:
    print(json.dumps({"skip": f"numba-cuda cannot be imported: {error}"}))
    sys.exit(0)
try:
    found = kernels.compile_ptx((8, 0))
except Exception as error:
    text = f"{type(error).__name__}: {error}"
    if any(word in text.lower() for word in ("nvvm", "nvrtc", "libdevice", "dynamiclibnotfound")):
        print(json.dumps({"skip": f"the CUDA compiler packages are missing: {text[:300]}"}))
        sys.exit(0)
    raise
print(json.dumps({"|".join(map(str, key)): ptx for key, ptx in found.items()}))
"""


@pytest.fixture(scope="module")
def ptx():
    env = {name: value for name, value in os.environ.items() if name != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in found:
        pytest.skip(found["skip"])
    return found


def test_every_kernel_compiles_to_ptx_for_every_shape(ptx):
    from ivfsq.backends.cuda.kernels import DEVICE_SHAPES, SIGNATURES

    expected = set()
    for name in SIGNATURES:
        if name in ("scan", "select", "rerank"):
            expected |= {f"{name}|{kcap}|{tpb}" for kcap, tpb in DEVICE_SHAPES}
        else:
            expected.add(name)
    assert set(ptx) == expected
    for key, text in ptx.items():
        assert ".target sm_80" in text, key
        assert text.count(".entry") == 1, key


def test_selecting_kernels_hold_every_threads_list_in_shared_memory(ptx):
    # KCAP * TPB entries: float32 distances and int64 keys.
    from ivfsq.backends.cuda.kernels import DEVICE_SHAPES

    for kcap, tpb in DEVICE_SHAPES:
        for name in ("scan", "select", "rerank"):
            text = ptx[f"{name}|{kcap}|{tpb}"]
            assert f"[{kcap * tpb * 4}]" in text and f"[{kcap * tpb * 8}]" in text, name
