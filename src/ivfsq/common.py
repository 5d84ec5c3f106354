"""Resources shared by calls (mirrors ``cuvs.common.Resources``)."""

from ivfsq._threads import default_n_threads
from ivfsq._validation import check_choice, check_int

# The devices a call can run on (the registry is ivfsq.backends; its names
# are repeated here so that this module imports without the backends).
DEVICES = ("cpu",)


class Resources:
    """Execution resources for ivfsq calls.

    It carries the device a call runs on and the number of CPU threads it
    may use.

    Parameters
    ----------
    n_threads : int, optional
        Threads for build, extend and search. Default: every CPU this process
        may run on.
    device : {"cpu"}, default = "cpu"
        The backend that runs searches (see :mod:`ivfsq.backends`).

    Examples
    --------
    >>> from ivfsq.common import Resources
    >>> Resources(n_threads=1).n_threads
    1
    """

    def __init__(self, *, n_threads=None, device="cpu"):
        if n_threads is None:
            n_threads = default_n_threads()
        self._n_threads = check_int("n_threads", n_threads, minimum=1)
        self._device = check_choice("device", device, DEVICES)

    @property
    def n_threads(self):
        return self._n_threads

    @property
    def device(self):
        return self._device

    def sync(self):
        """Wait for pending work; CPU calls are synchronous, so this returns at once."""

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


def resolve_device(resources):
    """The device a call runs on given its optional ``resources`` argument."""
    if resources is None:
        return "cpu"
    _check_resources(resources)
    return resources.device


def _check_resources(resources):
    if not isinstance(resources, Resources):
        raise TypeError(
            f"resources must be an ivfsq.common.Resources or None, got {type(resources).__name__}"
        )
