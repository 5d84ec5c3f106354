"""Inverted-list storage that the numba kernels read directly.

All lists share one code buffer (``codes``, (capacity, code_size) uint8), one
id buffer (int64), one auxiliary buffer (float32, the per-vector norm term)
and, for indexes with ``reorder=True``, one precise store (``precise``,
(capacity, dim) float32 or float16: the vectors in the original space,
normalized for cosine).
List ``l`` occupies rows ``[list_offsets[l], list_offsets[l] + list_sizes[l])``
and may grow in place up to ``list_capacities[l]`` rows.

A :class:`ListStorage` is a snapshot: ``add`` returns a new one and never
changes rows that the old one exposes, so a search that took the old snapshot
keeps a consistent view while another thread extends the index.
"""

import copy

import numpy as np

# Capacities grow to a multiple of this many rows (and at least double) unless
# memory is to be conserved.
CAPACITY_GRANULE = 16
# Rows of the precise store checked at a time (bounds the check's masks).
CHECK_BLOCK_ROWS = 65536


def _round_up(values, granule):
    return (values + granule - 1) // granule * granule


def _rows_of_lists(offsets, sizes):
    """Row numbers of every stored entry, list by list (vectorised)."""
    total = int(sizes.sum())
    starts = np.repeat(offsets, sizes)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return starts + within


class ListStorage:
    """Inverted lists in one contiguous buffer with per-list offsets."""

    def __init__(
        self, codes, ids, aux, list_offsets, list_sizes, list_capacities, precise=None
    ):
        self.codes = codes
        self.ids = ids
        self.aux = aux
        self.precise = precise
        self.list_offsets = list_offsets
        self.list_sizes = list_sizes
        self.list_capacities = list_capacities

    @classmethod
    def empty(cls, n_lists, code_size, precise_dim=None, precise_dtype=None):
        """Empty lists; a precise store of ``precise_dim`` columns if given."""
        zeros = np.zeros(n_lists, dtype=np.int64)
        precise = None
        if precise_dtype is not None:
            precise = np.zeros((0, precise_dim), dtype=precise_dtype)
        return cls(
            np.zeros((0, code_size), dtype=np.uint8),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.float32),
            zeros.copy(),
            zeros.copy(),
            zeros.copy(),
            precise,
        )

    def check_state(self, code_size, dim=None, precise_dtype=None):
        """Raise ValueError naming the first broken invariant of a valid
        storage, for codes of ``code_size`` bytes and, when
        ``precise_dtype`` is given, a precise store of ``dim`` columns:

        * ``list_offsets``, ``list_sizes``, ``list_capacities``: int64 (n_lists,);
          ``0 <= size <= capacity`` and each list's rows
          ``[offset, offset + capacity)`` inside the buffers, no two lists
          sharing a row;
        * ``codes`` uint8 (rows, code_size), ``ids`` int64 (rows,), ``aux``
          float32 (rows,), ``precise`` (rows, dim) of ``precise_dtype`` or
          absent without one;
        * in the stored rows: ids ``>= 0`` and unique, ``aux`` and ``precise``
          finite.
        """
        n_lists = self.list_sizes.shape[0] if self.list_sizes.ndim == 1 else -1
        for name in ("list_offsets", "list_sizes", "list_capacities"):
            array = getattr(self, name)
            if array.dtype != np.int64 or array.ndim != 1 or array.shape[0] != n_lists:
                raise ValueError(
                    f"{name} must be int64 (n_lists,), found {array.dtype} {array.shape}"
                )
        n_rows = self.ids.shape[0] if self.ids.ndim == 1 else -1
        shapes = {"codes": ((n_rows, code_size), np.uint8), "ids": ((n_rows,), np.int64),
                  "aux": ((n_rows,), np.float32)}
        if precise_dtype is not None:
            shapes["precise"] = ((n_rows, dim), np.dtype(precise_dtype))
        elif self.precise is not None:
            raise ValueError("there must be no precise store (the index keeps none)")
        for name, (shape, dtype) in shapes.items():
            array = getattr(self, name)
            if array is None:
                raise ValueError(f"the lists need their {name} (a precise store)")
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(
                    f"the lists' {name} must be {np.dtype(dtype)} (rows, ...) = {shape}, found "
                    f"{array.dtype} {array.shape}"
                )
        offsets, sizes, capacities = self.list_offsets, self.list_sizes, self.list_capacities
        for problem, bad in (("a negative size", sizes < 0),
                             ("more rows than its capacity", sizes > capacities),
                             ("a negative offset", offsets < 0),
                             ("rows past the end of the buffers", offsets > n_rows - capacities)):
            if bad.any():
                where = int(np.argmax(bad))
                raise ValueError(
                    f"list {where} has {problem} (offset {offsets[where]}, size {sizes[where]}, "
                    f"capacity {capacities[where]}, {n_rows} rows)"
                )
        order = np.argsort(offsets, kind="stable")
        overlap = (offsets + capacities)[order[:-1]] > offsets[order[1:]]
        if overlap.any():
            first = int(np.argmax(overlap))
            raise ValueError(
                f"lists {int(order[first])} and {int(order[first + 1])} share rows"
            )
        # Lists are disjoint and inside the buffers: when their sizes fill the
        # buffers, every row is stored (the common case: a loaded index).
        rows = slice(None) if int(sizes.sum()) == n_rows else self.valid_rows()
        ids = self.ids[rows]
        if ids.shape[0]:
            if int(ids.min()) < 0:
                raise ValueError(f"ids must be >= 0, got {int(ids.min())}")
            ordered = np.sort(ids)
            repeated = ordered[1:] == ordered[:-1]
            if repeated.any():
                raise ValueError(f"id {int(ordered[np.argmax(repeated)])} is stored more than once")
        bad = ~np.isfinite(self.aux[rows])
        if bad.any():
            raise ValueError(
                f"non-finite value in the per-vector norm terms (aux), stored entry "
                f"{int(np.argmax(bad))}"
            )
        if self.precise is not None:
            all_rows = isinstance(rows, slice)
            # In blocks: a whole (rows, dim) mask (or copy) would double the
            # memory the check needs.
            for start in range(0, n_rows if all_rows else rows.shape[0], CHECK_BLOCK_ROWS):
                stop = start + CHECK_BLOCK_ROWS
                block = slice(start, stop) if all_rows else rows[start:stop]
                bad = ~np.isfinite(self.precise[block]).all(axis=1)
                if bad.any():
                    raise ValueError(
                        f"non-finite value in the precise store, stored entry "
                        f"{start + int(np.argmax(bad))}"
                    )

    def row_arrays(self):
        """The per-row buffers, by name (``precise`` only when present)."""
        arrays = {"codes": self.codes, "ids": self.ids, "aux": self.aux}
        if self.precise is not None:
            arrays["precise"] = self.precise
        return arrays

    @property
    def n_lists(self):
        return self.list_sizes.shape[0]

    @property
    def size(self):
        # list_sizes is replaced, never changed in place: cache its sum per array.
        sizes = self.list_sizes
        if getattr(self, "_size_of", None) is not sizes:
            self._size = int(sizes.sum())
            self._size_of = sizes
        return self._size

    @property
    def nbytes(self):
        """Bytes allocated for the row buffers and the list metadata."""
        return sum(array.nbytes for array in self.row_arrays().values()) + self.metadata_nbytes

    @property
    def metadata_nbytes(self):
        return self.list_offsets.nbytes + self.list_sizes.nbytes + self.list_capacities.nbytes

    def valid_rows(self):
        """Row numbers of all stored vectors, in list order."""
        return _rows_of_lists(self.list_offsets, self.list_sizes)

    def add(self, labels, codes, ids, aux, conservative, precise=None):
        """A new storage holding these entries too (``labels`` give the lists).

        Lists that fit in their spare capacity are appended to in place (rows
        past the old sizes, invisible to the old snapshot); otherwise all
        buffers are re-allocated with larger capacities.
        """
        storage, destination = self.reserve(labels, conservative)
        storage.write(destination, codes, ids, aux, precise)
        return storage

    def reserve(self, labels, conservative):
        """A new storage with room for entries in lists ``labels``, and the
        row each entry goes to (in input order); fill them with :meth:`write`.

        The new storage already counts the entries; until they are written
        its rows hold zeros (ids -1) or stale data. This storage is not
        changed: its snapshot stays valid.
        """
        n_lists = self.n_lists
        added = np.bincount(labels, minlength=n_lists).astype(np.int64)
        new_sizes = self.list_sizes + added
        if np.any(new_sizes > self.list_capacities):
            if conservative or self.codes.shape[0] == 0:
                # The first fill (a build) knows its final sizes: no slack.
                capacities = new_sizes.copy()
            else:
                grown = np.maximum(new_sizes, 2 * self.list_capacities)
                capacities = np.where(
                    new_sizes > self.list_capacities,
                    _round_up(grown, CAPACITY_GRANULE),
                    self.list_capacities,
                )
            storage = self._reallocated(capacities)
        else:
            storage = copy.copy(self)  # shares the buffers; gets its own sizes below
        # Destination row of each new entry: after the list's current entries,
        # in input order within a list.
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        group_starts = np.cumsum(added) - added
        rank = np.arange(labels.shape[0], dtype=np.int64) - group_starts[sorted_labels]
        destination = np.empty(labels.shape[0], dtype=np.int64)
        destination[order] = (
            storage.list_offsets[sorted_labels] + self.list_sizes[sorted_labels] + rank
        )
        storage.list_sizes = new_sizes
        return storage, destination

    def write(self, destination, codes, ids, aux, precise=None):
        """Store entries at rows ``destination`` (from :meth:`reserve`).

        Scattered straight from the inputs: no sorted copy of them is made.
        """
        self.codes[destination] = codes
        self.ids[destination] = ids
        self.aux[destination] = aux
        if self.precise is not None:
            self.precise[destination] = precise

    def locate(self, ids):
        """Storage rows of ``ids`` (int64 array), -1 where an id is not
        stored, and a mask of the stored ones."""
        rows = self.valid_rows()
        stored = self.ids[rows]
        located = np.full(ids.shape[0], -1, dtype=np.int64)
        if stored.shape[0] == 0:
            return located, np.zeros(ids.shape[0], dtype=bool)
        order = np.argsort(stored, kind="stable")
        sorted_ids = stored[order]
        position = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
        found = sorted_ids[position] == ids
        located[found] = rows[order[position[found]]]
        return located, found

    def list_of_rows(self, rows):
        """The list each (valid) storage row belongs to."""
        return np.searchsorted(self.list_offsets, rows, side="right") - 1

    def without_rows(self, rows):
        """A new storage without these (valid, distinct) rows: the others keep
        their order within each list, capacities are kept; this one is not
        changed (its snapshot stays valid)."""
        keep = np.ones(self.codes.shape[0], dtype=bool)
        keep[rows] = False
        removed = np.bincount(self.list_of_rows(rows), minlength=self.n_lists)
        new_sizes = self.list_sizes - removed
        old_rows = self.valid_rows()
        kept_rows = old_rows[keep[old_rows]]
        new_rows = _rows_of_lists(self.list_offsets, new_sizes)
        moved = {}
        for name, array in self.row_arrays().items():
            new_array = array.copy()
            new_array[new_rows] = array[kept_rows]
            moved[name] = new_array
        return ListStorage(
            moved["codes"], moved["ids"], moved["aux"], self.list_offsets.copy(), new_sizes,
            self.list_capacities.copy(), moved.get("precise"),
        )

    def _reallocated(self, capacities):
        """A copy of this storage laid out with the given per-list capacities."""
        offsets = np.cumsum(capacities) - capacities
        total = int(capacities.sum())
        old_rows = self.valid_rows()
        new_rows = _rows_of_lists(offsets, self.list_sizes)
        moved = {}
        for name, array in self.row_arrays().items():
            fill = -1 if name == "ids" else 0
            new_array = np.full((total,) + array.shape[1:], fill, dtype=array.dtype)
            new_array[new_rows] = array[old_rows]
            moved[name] = new_array
        return ListStorage(
            moved["codes"],
            moved["ids"],
            moved["aux"],
            offsets,
            self.list_sizes.copy(),
            capacities,
            moved.get("precise"),
        )

    def compacted(self):
        """A copy with capacities equal to sizes (what gets saved)."""
        return self._reallocated(self.list_sizes.copy())
