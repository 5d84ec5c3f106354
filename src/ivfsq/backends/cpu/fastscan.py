"""The block-interleaved 4-bit copy of a snapshot's 8-bit codes that the
first pass scans (:mod:`ivfsq.backends.cpu.kernels.fastscan` has the layout
and the kernel).

It is derived from the codes alone (no training: a 4-bit level is 17 8-bit
levels), once per list snapshot and only when a search asks for a first
pass, and it lives as long as the snapshot: ``dim / 2`` bytes and one
float per row, in blocks of 16 rows per list.
"""

from collections import namedtuple

import numpy as np

from ivfsq.backends.cpu.kernels import fastscan as kernel

__all__ = ["FirstPassLayout", "first_pass_layout"]

#: ``blocks`` (uint8, n_blocks x block bytes), ``aux`` (float32, n_blocks x
#: 16, NaN past a list's last row), ``offsets`` (int64, n_lists + 1: list
#: ``l``'s blocks are ``offsets[l]:offsets[l + 1]``).
FirstPassLayout = namedtuple("FirstPassLayout", ["blocks", "aux", "offsets"])


def four_bit_levels(codes):
    """The 4-bit level of each 8-bit code: ``round(u / 17)`` (0..15)."""
    return ((codes.astype(np.uint16) + kernel.LEVEL_STEP // 2) // kernel.LEVEL_STEP).astype(
        np.uint8)


def first_pass_layout(lists, dim, chunk_rows=1 << 16):
    """The :class:`FirstPassLayout` of a snapshot ``lists`` of 8-bit codes
    of ``dim`` dimensions (converted ``chunk_rows`` rows at a time)."""
    rows_per_block = kernel.BLOCK_ROWS
    sizes = lists.list_sizes.astype(np.int64)
    n_blocks = -(-sizes // rows_per_block)
    offsets = np.zeros(sizes.shape[0] + 1, dtype=np.int64)
    np.cumsum(n_blocks, out=offsets[1:])
    total = int(offsets[-1])
    n_groups = kernel.n_quads(dim) * kernel.QUAD_GROUPS
    blocks = np.zeros((total, n_groups, rows_per_block, 2), dtype=np.uint8)
    aux = np.full((total, rows_per_block), np.nan, dtype=np.float32)
    rows = lists.valid_rows()
    # Each stored row's block and lane, in the order of valid_rows.
    lane = np.arange(rows.shape[0], dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    block = np.repeat(offsets[:-1], sizes) + lane // rows_per_block
    lane %= rows_per_block
    padded_dim = n_groups * kernel.GROUP_DIMS
    for start in range(0, rows.shape[0], chunk_rows):
        part = slice(start, start + chunk_rows)
        levels = np.zeros((rows[part].shape[0], padded_dim), dtype=np.uint8)
        levels[:, :dim] = four_bit_levels(lists.codes[rows[part], :dim])
        # (row, group, byte, nibble): dimension 4g + 2 byte + nibble.
        levels = levels.reshape(-1, n_groups, 2, 2)
        packed = levels[..., 0] | (levels[..., 1] << 4)
        blocks[block[part], :, lane[part], :] = packed
        aux[block[part], lane[part]] = lists.aux[rows[part]]
    return FirstPassLayout(blocks.reshape(total, -1), aux, offsets)
