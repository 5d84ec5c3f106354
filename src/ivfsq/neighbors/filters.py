"""Filters that restrict a search to a subset of vector ids (like ``cuvs.neighbors.filters``).

A filter is a bitset over vector ids: bit ``i`` (word ``i // 32``, bit
``i % 32``, least significant bit first) set means id ``i`` is **kept**.
Filters are applied inside the list scan, before scoring, so a filtered search
still returns up to ``k`` kept neighbours.
"""

import numpy as np

from ivfsq._validation import _as_host_array


class Filter:
    """A keep-bitset over vector ids; build one with :func:`from_bitset`."""

    def __init__(self, words, n_bits):
        self._words = words
        self._n_bits = n_bits

    @property
    def bitset(self):
        """The uint32 words of the bitset (read-only view)."""
        view = self._words.view()
        view.flags.writeable = False
        return view

    @property
    def n_bits(self):
        """How many ids the bitset covers."""
        return self._n_bits

    def __repr__(self):
        kept = int(np.unpackbits(self._words.view(np.uint8), bitorder="little")[: self._n_bits].sum())
        return f"Filter(n_bits={self._n_bits}, kept={kept})"


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
        packed = np.packbits(array, bitorder="little")
        packed = np.pad(packed, (0, (-packed.size) % 4))
        words = np.ascontiguousarray(packed).view(np.uint32).copy()
        return Filter(words, int(array.shape[0]))
    if array.dtype != np.uint32:
        raise TypeError(
            f"bitset must have dtype uint32 (bit words) or bool (keep-mask), got dtype {array.dtype}"
        )
    words = np.array(array, dtype=np.uint32, order="C", copy=True)
    return Filter(words, int(words.shape[0]) * 32)


def kernel_words(filter):
    """The filter's uint32 words as the search kernels read them: its own
    buffer, not a copy (searches only read it; :attr:`Filter.bitset` is
    the read-only view for users)."""
    return filter._words


def no_filter():
    """No filtering: every id is kept. Same as passing ``filter=None``."""
    return None
