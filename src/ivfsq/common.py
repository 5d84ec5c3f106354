"""Resources shared by calls (mirrors ``cuvs.common.Resources``)."""

from ivfsq._threads import default_n_threads
from ivfsq._validation import check_choice, check_int

# The devices a call can run on (the registry is ivfsq.backends; its names
# are repeated here so that this module imports without the backends).
DEVICES = ("cpu", "cuda")


class Resources:
    """Execution resources for ivfsq calls.

    It carries the device a call runs on and the number of CPU threads it
    may use.

    Parameters
    ----------
    n_threads : int, optional
        Threads for build, extend and search. Default: every CPU this process
        may run on.
    device : {"cpu", "cuda"} or None, default = None
        The backend that runs the call (see :mod:`ivfsq.backends`). None
        follows the data: "cuda" where the call's arrays are device arrays
        (CuPy, PyTorch CUDA tensors, numba device arrays) or its index was
        moved to the GPU (:meth:`ivfsq.neighbors.ivf_sq.Index.to_device`),
        else "cpu". "cuda" needs the ``gpu`` extra and an NVIDIA GPU.

    Examples
    --------
    >>> from ivfsq.common import Resources
    >>> Resources(n_threads=1).n_threads
    1
    """

    def __init__(self, *, n_threads=None, device=None):
        if n_threads is None:
            n_threads = default_n_threads()
        self._n_threads = check_int("n_threads", n_threads, minimum=1)
        self._device = None if device is None else check_choice("device", device, DEVICES)

    @property
    def n_threads(self):
        return self._n_threads

    @property
    def device(self):
        return self._device

    def sync(self):
        """Wait for pending work; calls return when their work is done (GPU
        calls too: their results are copied back), so this returns at once."""

    def __repr__(self):
        return f"Resources(n_threads={self._n_threads}, device={self._device!r})"

    # Equal resources are interchangeable (they are read-only): a search
    # repeated with a new but equal object is a repeat.
    def __eq__(self, other):
        if not isinstance(other, Resources):
            return NotImplemented
        return (self._n_threads, self._device) == (other._n_threads, other._device)

    def __hash__(self):
        return hash((self._n_threads, self._device))


def resolve_n_threads(resources):
    """Thread count for a call given its optional ``resources`` argument."""
    if resources is None:
        return default_n_threads()
    _check_resources(resources)
    return resources.n_threads


def resolve_device(resources, data_device="cpu"):
    """The device a call runs on: the one its optional ``resources`` names,
    else ``data_device`` (where its arrays or index live). RuntimeError
    when that is "cuda" and no GPU backend can run here."""
    device = data_device
    if resources is not None:
        _check_resources(resources)
        device = resources.device or data_device
    if device == "cuda":
        from ivfsq.backends.cuda import check_available

        check_available()
    return device


def _check_resources(resources):
    if not isinstance(resources, Resources):
        raise TypeError(
            f"resources must be an ivfsq.common.Resources or None, got {type(resources).__name__}"
        )
