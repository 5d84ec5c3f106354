"""Device (CUDA) arrays at the public API: recognising them, reading them
to the host, and returning results of the same kind as the input (output
follows input: CuPy in, CuPy out; a PyTorch CUDA tensor in, tensors out;
a numba device array in, numba device arrays out).

Recognising needs nothing installed; CuPy arrays and PyTorch tensors are
read and written through their own libraries, other device arrays through
numba-cuda (the ``gpu`` extra), imported only then.
"""

import numpy as np

from ivfsq.backends.cuda import check_available


def is_device_array(value):
    """Whether ``value`` is a CUDA device array ivfsq reads: it has
    ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, numba device
    arrays), or is a numba device array (the simulator's too). A DLPack-only
    producer on a GPU is not one: the host path refuses it by name."""
    if value is None or isinstance(value, np.ndarray):
        return False
    if hasattr(value, "__cuda_array_interface__"):
        return True
    return type(value).__module__.startswith("numba") and hasattr(value, "copy_to_host")


def _family(value):
    return type(value).__module__.split(".")[0]


def to_host(name, value):
    """A NumPy copy of the device array ``value`` (argument ``name``)."""
    if _family(value) == "cupy":
        return value.get()
    if _family(value) == "torch":
        return value.detach().cpu().numpy()
    check_available(f"{name} is a device array: reading it")
    from numba import cuda

    if hasattr(value, "copy_to_host"):
        return value.copy_to_host()
    return cuda.as_cuda_array(value).copy_to_host()


def like(template, array):
    """``array`` (NumPy) as a device array of ``template``'s kind."""
    family = _family(template)
    if family == "cupy":
        import cupy

        return cupy.asarray(array)
    if family == "torch":
        import torch

        return torch.as_tensor(array, device=template.device)
    from numba import cuda

    return cuda.to_device(array)


def _device_dtype(value):
    dtype = getattr(value, "dtype", None)
    try:
        return np.dtype(str(dtype).replace("torch.", ""))
    except TypeError:
        return None


def device_output(name, value, shape, dtype):
    """Check a device output buffer (as :func:`ivfsq._validation.check_output`
    checks a host one) and return a function that writes a NumPy array of
    ``shape`` into it."""
    found = _device_dtype(value)
    if found != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got dtype {found}")
    found_shape = tuple(int(n) for n in getattr(value, "shape", ()))
    if found_shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {found_shape}")
    contiguous = getattr(value, "is_c_contiguous", None)
    if _family(value) == "torch":
        contiguous = value.is_contiguous
    elif _family(value) == "cupy":
        contiguous = lambda: value.flags.c_contiguous  # noqa: E731
    if contiguous is not None and not contiguous():
        raise ValueError(f"{name} must be C-contiguous")
    if _family(value) == "cupy":
        return lambda array: value.set(array)
    if _family(value) == "torch":
        import torch

        return lambda array: value.copy_(torch.as_tensor(array))
    check_available(f"{name} is a device array: writing it")
    from numba import cuda

    target = value if hasattr(value, "copy_to_device") else cuda.as_cuda_array(value)
    return target.copy_to_device
