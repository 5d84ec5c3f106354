"""Values derived from one snapshot of an index's lists, computed once.

A search reads one immutable snapshot of the lists (``extend`` and
``remove`` replace it), so anything tuned on the stored vectors (which
integer filter pays, for instance) is a function of the snapshot. The cache
holds such values beside the snapshot, not on the codec or the engine, and
drops them with it.
"""

import threading
import weakref

_MISSING = object()


class SnapshotCache:
    """``get(snapshot, key, compute)``: ``compute()`` once per snapshot and key.

    Entries live as long as their snapshot. Two threads may compute the
    same value at once; both results are equal, and the first one stored is
    kept.

    >>> class Snapshot:
    ...     pass
    >>> cache, snapshot, calls = SnapshotCache(), Snapshot(), []
    >>> cache.get(snapshot, "answer", lambda: calls.append(1) or 42)
    42
    >>> cache.get(snapshot, "answer", lambda: calls.append(1) or 0), len(calls)
    (42, 1)
    """

    def __init__(self):
        self._entries = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def peek(self, snapshot, key, default=None):
        """The value stored for ``snapshot`` and ``key``, or ``default``
        (nothing is computed)."""
        values = self._entries.get(snapshot)
        return default if values is None else values.get(key, default)

    def get(self, snapshot, key, compute):
        # A hit takes no lock: entries are only ever added, and a snapshot's
        # dict is stored whole before any reader can find it.
        values = self._entries.get(snapshot)
        if values is not None:
            value = values.get(key, _MISSING)
            if value is not _MISSING:
                return value
        value = compute()
        with self._lock:
            return self._entries.setdefault(snapshot, {}).setdefault(key, value)
