"""The NVIDIA GPU backend (numba-cuda kernels, CuPy for dense steps where
installed): ``pip install "ivfsq[gpu]"``.

:func:`check_available` says why the backend cannot run here, if it
cannot; nothing is imported from numba-cuda before it is asked for.
"""

import functools
import importlib.util

__all__ = ["DeviceUnavailableError", "check_available", "is_available"]

GPU_EXTRA_HINT = 'install the GPU extra (pip install "ivfsq[gpu]") on a machine with an NVIDIA GPU'


class DeviceUnavailableError(RuntimeError):
    """The GPU backend was asked for where it cannot run."""


@functools.lru_cache(maxsize=1)
def _unavailable_reason():
    """None where the backend runs (a GPU, or numba's CUDA simulator), else why not."""
    # The kernels are numba-cuda's, not the CUDA target numba itself still
    # ships (deprecated): without the package, numba.cuda would be that one.
    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed"
    try:
        from numba import cuda
    except ImportError as error:  # numba-cuda's own imports (cuda-bindings)
        return f"numba-cuda cannot be imported ({error})"
    try:
        if cuda.is_available():
            return None
        return "no CUDA GPU or driver was found"
    except Exception as error:  # noqa: BLE001 - any driver failure means "no GPU"
        return f"the CUDA driver failed ({type(error).__name__}: {error})"


def is_available():
    """Whether ``device="cuda"`` can run here."""
    return _unavailable_reason() is None


def check_available(what='device="cuda"'):
    """Raise :class:`DeviceUnavailableError` (a RuntimeError) naming what is
    missing when the backend cannot run."""
    reason = _unavailable_reason()
    if reason is not None:
        raise DeviceUnavailableError(f"{what} needs a CUDA GPU: {reason}; {GPU_EXTRA_HINT}")
