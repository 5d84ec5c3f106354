"""Filters that restrict a search to a subset of vector ids (like ``cuvs.neighbors.filters``).

A bitset keeps ids for every query: bit ``i`` (word ``i // 32``, bit
``i % 32``, least significant bit first) set means id ``i`` is **kept**. A
bitmap keeps ids per query: one such bitset per query row. Filters are
applied inside the search, before scoring, and a filtered search still
returns ``k`` kept neighbours whenever ``k`` stored ids pass (see the
filters guide for how each query is searched).
"""

import numpy as np

from ivfsq._validation import _as_host_array


class Filter:
    """Ids to keep, for every query (:func:`from_bitset`) or per query
    (:func:`from_bitmap`)."""

    def __init__(self, words, n_bits, flat=False):
        # ``words``: uint32, 1-D (a bitset for every query), 2-D (one row
        # of words per query), or with ``flat`` 1-D bits of consecutive
        # per-query rows of ``n_bits`` ids each, known at search time.
        self._words = words
        self._n_bits = n_bits
        self._flat = flat
        # What searches derive from a bitset and a snapshot of an index's
        # lists (its kept rows per list), kept for the next search: the
        # words never change once the filter is made.
        self._memo = {}

    @property
    def per_query(self):
        """Whether each query has its own bitset (a bitmap)."""
        return self._flat or self._words.ndim == 2

    @property
    def bitset(self):
        """The uint32 words (read-only view): 1-D for a bitset, one row per
        query for a bitmap (as given, 1-D, for cuVS's flat layout)."""
        view = self._words.view()
        view.flags.writeable = False
        return view

    @property
    def n_bits(self):
        """How many ids the bitset (each query's, for a bitmap) covers; None
        for cuVS's flat layout (the index's ``next_id``, at search time)."""
        return self._n_bits

    def __repr__(self):
        if self._flat:
            return f"Filter(bitmap, n_words={self._words.shape[0]})"
        bits = np.unpackbits(self._words.view(np.uint8), axis=-1, bitorder="little")
        kept = bits[..., : self._n_bits].sum(axis=-1)
        if self._words.ndim == 1:
            return f"Filter(n_bits={self._n_bits}, kept={int(kept)})"
        return (f"Filter(bitmap, n_queries={self._words.shape[0]}, n_bits={self._n_bits}, "
                f"kept={int(kept.min())}-{int(kept.max())} a query)")

    def rows(self, n_queries, n_ids):
        """The bitsets as the search takes them: uint32, one row for every
        query or one per query, each covering at least ``n_ids`` ids.
        ValueError naming ``filter`` when it does not fit the search."""
        words = self._words
        if self._flat:
            needed = n_queries * n_ids
            if words.shape[0] * 32 < needed:
                raise ValueError(
                    f"filter must hold n_queries * next_id = {n_queries} * {n_ids} = {needed} "
                    f"bits (cuVS's bitmap layout), got {words.shape[0] * 32}"
                )
            bits = np.unpackbits(words.view(np.uint8), bitorder="little", count=needed)
            return _packed_rows(bits.reshape(n_queries, n_ids).view(np.bool_))
        if self._n_bits < n_ids:
            raise ValueError(
                f"filter must cover every id in the index (at least {n_ids} bits), "
                f"got {self._n_bits} bits"
            )
        if words.ndim == 1:
            return words.reshape(1, -1)
        if words.shape[0] != n_queries:
            raise ValueError(
                f"filter must have one row per query ({n_queries}), got {words.shape[0]} rows"
            )
        return words


def _packed_rows(keep):
    """uint32 words (one row per row of a 2-D boolean mask), C-contiguous."""
    packed = np.packbits(keep, axis=1, bitorder="little")
    packed = np.pad(packed, ((0, 0), (0, (-packed.shape[1]) % 4)))
    return np.ascontiguousarray(packed).view(np.uint32)


def from_bitset(bitset):
    """Create a filter from a bitset (uint32 words) or a boolean keep-mask.

    Parameters
    ----------
    bitset : array of uint32, or array of bool
        uint32: bit ``i`` of the concatenated words (word ``i // 32``, bit
        ``i % 32``, LSB first) set means id ``i`` is kept, as in cuVS.
        bool: ``bitset[i]`` true means id ``i`` is kept.

    Returns
    -------
    Filter

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import filters
    >>> keep = np.ones(100, dtype=bool)
    >>> keep[[3, 7]] = False  # never return ids 3 and 7
    >>> filters.from_bitset(keep)
    Filter(n_bits=100, kept=98)
    >>> words = np.packbits(keep, bitorder="little").view(np.uint8)
    >>> words = np.pad(words, (0, (-words.size) % 4)).view(np.uint32)
    >>> filters.from_bitset(words).n_bits
    128
    """
    array = _as_host_array("bitset", bitset)
    if array.ndim != 1:
        raise ValueError(f"bitset must be a 1-D array, got shape {array.shape}")
    if array.dtype == np.bool_:
        return Filter(_packed_rows(array[None])[0].copy(), int(array.shape[0]))
    if array.dtype != np.uint32:
        raise TypeError(
            f"bitset must have dtype uint32 (bit words) or bool (keep-mask), got dtype {array.dtype}"
        )
    words = np.array(array, dtype=np.uint32, order="C", copy=True)
    return Filter(words, int(words.shape[0]) * 32)


def from_bitmap(bitmap):
    """Create a per-query filter: each query keeps its own set of ids.

    Parameters
    ----------
    bitmap : array of uint32 or of bool
        uint32, 2-D ``(n_queries, n_words)``: row ``q`` is query ``q``'s
        bitset (bit ``i % 32`` of word ``i // 32`` set keeps id ``i``).
        uint32, 1-D: cuVS's layout, the bits of consecutive query rows of
        ``next_id`` ids each (bit ``q * next_id + i`` keeps id ``i`` for
        query ``q``; rows are not word-aligned). bool, 2-D ``(n_queries,
        n_ids)``: ``bitmap[q, i]`` true keeps id ``i`` for query ``q``.

    Returns
    -------
    Filter

    Examples
    --------
    >>> import numpy as np
    >>> from ivfsq.neighbors import filters
    >>> keep = np.zeros((2, 100), dtype=bool)
    >>> keep[0, :50] = True   # query 0: ids 0-49
    >>> keep[1, 50:] = True   # query 1: ids 50-99
    >>> filters.from_bitmap(keep)
    Filter(bitmap, n_queries=2, n_bits=100, kept=50-50 a query)
    """
    array = _as_host_array("bitmap", bitmap)
    if array.dtype == np.bool_:
        if array.ndim != 2:
            raise ValueError(
                f"bitmap must be a 2-D boolean array (n_queries, n_ids), got shape {array.shape}"
            )
        return Filter(_packed_rows(array).copy(), int(array.shape[1]))
    if array.dtype != np.uint32:
        raise TypeError(
            f"bitmap must have dtype uint32 (bit words) or bool (keep-masks), got dtype "
            f"{array.dtype}"
        )
    if array.ndim == 1:
        return Filter(np.array(array, dtype=np.uint32, order="C", copy=True), None, flat=True)
    if array.ndim != 2:
        raise ValueError(
            f"bitmap must be 1-D (cuVS's layout) or 2-D (n_queries, n_words), got shape "
            f"{array.shape}"
        )
    words = np.array(array, dtype=np.uint32, order="C", copy=True)
    return Filter(words, int(words.shape[1]) * 32)


def no_filter():
    """No filtering: every id is kept. Same as passing ``filter=None``."""
    return None
