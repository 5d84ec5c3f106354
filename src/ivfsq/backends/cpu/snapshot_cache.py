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
        # (weak reference to the snapshot last found, its dict): searches
        # repeat on one snapshot, and a weak-dictionary lookup makes a new
        # weak reference each time. The pair is swapped whole, so readers
        # need no lock, and it keeps no replaced snapshot alive.
        self._last = None

    def _values(self, snapshot):
        """``snapshot``'s dict of values, or None."""
        last = self._last
        if last is not None and last[0]() is snapshot:
            return last[1]
        values = self._entries.get(snapshot)
        if values is not None:
            self._last = (weakref.ref(snapshot), values)
        return values

    def peek(self, snapshot, key, default=None):
        """The value stored for ``snapshot`` and ``key``, or ``default``
        (nothing is computed)."""
        values = self._values(snapshot)
        return default if values is None else values.get(key, default)

    def discard(self, snapshot, key):
        """Drop the value of ``snapshot`` and ``key`` if there is one (the
        next :meth:`get` computes it again)."""
        with self._lock:
            values = self._entries.get(snapshot)
            if values is not None and key in values:
                # A new dict, swapped whole: readers without the lock see the
                # old one or the new one, never one being changed.
                values = {name: value for name, value in values.items() if name != key}
                self._entries[snapshot] = values
                self._last = None

    def get(self, snapshot, key, compute):
        # A hit takes no lock: a snapshot's dict is never changed once a
        # reader can find it (added values and discards replace it whole).
        values = self._values(snapshot)
        if values is not None:
            value = values.get(key, _MISSING)
            if value is not _MISSING:
                return value
        value = compute()
        with self._lock:
            values = self._entries.get(snapshot, {})
            if key not in values:
                values = {**values, key: value}
                self._entries[snapshot] = values
                self._last = None
            return values[key]
