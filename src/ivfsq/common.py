"""Resources shared by calls (mirrors ``cuvs.common.Resources``)."""

from ivfsq._threads import default_n_threads
from ivfsq._validation import check_int


class Resources:
    """Execution resources for ivfsq calls.

    On the CPU this carries the number of threads a call may use.

    Parameters
    ----------
    n_threads : int, optional
        Threads for build, extend and search. Default: every CPU this process
        may run on.

    Examples
    --------
    >>> from ivfsq.common import Resources
    >>> Resources(n_threads=1).n_threads
    1
    """

    def __init__(self, *, n_threads=None):
        if n_threads is None:
            n_threads = default_n_threads()
        self._n_threads = check_int("n_threads", n_threads, minimum=1)

    @property
    def n_threads(self):
        return self._n_threads

    def sync(self):
        """Wait for pending work; CPU calls are synchronous, so this returns at once."""

    def __repr__(self):
        return f"Resources(n_threads={self._n_threads})"


def resolve_n_threads(resources):
    """Thread count for a call given its optional ``resources`` argument."""
    if resources is None:
        return default_n_threads()
    if not isinstance(resources, Resources):
        raise TypeError(
            f"resources must be an ivfsq.common.Resources or None, got {type(resources).__name__}"
        )
    return resources.n_threads
