"""Inverted-list storage that the numba kernels read directly.

All lists share one code buffer (``codes``, (capacity, code_size) uint8), one
id buffer (int64) and one auxiliary buffer (float32, the per-vector norm term).
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

    def __init__(self, codes, ids, aux, list_offsets, list_sizes, list_capacities):
        self.codes = codes
        self.ids = ids
        self.aux = aux
        self.list_offsets = list_offsets
        self.list_sizes = list_sizes
        self.list_capacities = list_capacities

    @classmethod
    def empty(cls, n_lists, code_size):
        zeros = np.zeros(n_lists, dtype=np.int64)
        return cls(
            np.zeros((0, code_size), dtype=np.uint8),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.float32),
            zeros.copy(),
            zeros.copy(),
            zeros.copy(),
        )

    @property
    def n_lists(self):
        return self.list_sizes.shape[0]

    @property
    def size(self):
        return int(self.list_sizes.sum())

    @property
    def nbytes(self):
        """Bytes allocated for codes, ids, norms and list metadata."""
        return sum(
            array.nbytes
            for array in (
                self.codes,
                self.ids,
                self.aux,
                self.list_offsets,
                self.list_sizes,
                self.list_capacities,
            )
        )

    def valid_rows(self):
        """Row numbers of all stored vectors, in list order."""
        return _rows_of_lists(self.list_offsets, self.list_sizes)

    def add(self, labels, codes, ids, aux, conservative):
        """A new storage holding these entries too (``labels`` give the lists).

        Lists that fit in their spare capacity are appended to in place (rows
        past the old sizes, invisible to the old snapshot); otherwise all
        buffers are re-allocated with larger capacities.
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
        destination = storage.list_offsets[sorted_labels] + self.list_sizes[sorted_labels] + rank
        storage.codes[destination] = codes[order]
        storage.ids[destination] = ids[order]
        storage.aux[destination] = aux[order]
        storage.list_sizes = new_sizes
        return storage

    def _reallocated(self, capacities):
        """A copy of this storage laid out with the given per-list capacities."""
        offsets = np.cumsum(capacities) - capacities
        total = int(capacities.sum())
        code_size = self.codes.shape[1]
        codes = np.zeros((total, code_size), dtype=np.uint8)
        ids = np.full(total, -1, dtype=np.int64)
        aux = np.zeros(total, dtype=np.float32)
        old_rows = self.valid_rows()
        new_rows = _rows_of_lists(offsets, self.list_sizes)
        codes[new_rows] = self.codes[old_rows]
        ids[new_rows] = self.ids[old_rows]
        aux[new_rows] = self.aux[old_rows]
        return ListStorage(codes, ids, aux, offsets, self.list_sizes.copy(), capacities)

    def compacted(self):
        """A copy with capacities equal to sizes (what gets saved)."""
        return self._reallocated(self.list_sizes.copy())
