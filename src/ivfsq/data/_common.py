"""What the data helpers share: the block size and the integer check.
"""

from __future__ import annotations

import numbers

# Rows of base (and of generated data) handled per block: big enough for an
# efficient GEMM, small enough that the float32 temporaries stay near 32 MB
# for d = 128.
BLOCK_ROWS = 65536


def check_int(name, value, minimum):
    """Return ``value`` as a Python int, checking type and lower bound."""
    # bool is an Integral, but passing True for a size is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} "
                        f"({value!r})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
