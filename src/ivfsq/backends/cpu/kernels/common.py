"""Codes and flags the kernels share: metric families, what a scan does with a
row that passes, the integer filter's per-query parameters, numba options.
"""

from collections import namedtuple

# Score cases of the kernels, one per metric family (ivfsq.metrics). The
# per-vector auxiliary value ``aux`` differs per case: ||x_hat||^2 for L2,
# unused for inner product, 1/||x_hat|| for cosine (0 for a zero vector,
# giving cosine distance 1).
METRIC_L2 = 0
METRIC_IP = 1
METRIC_COSINE = 2
METRIC_CODES = {"l2": METRIC_L2, "ip": METRIC_IP, "cosine": METRIC_COSINE}
# What the per-query scan (scan_list) does with a vector that passes: keep
# the top k in a heap, or collect every one within a radius.
HANDLE_TOPK = 0
HANDLE_RANGE = 1

# Per query, the integer filter's (scale, bound above, bound below) and the
# scales of the int8 planes past the first (4-bit codes, else 0): see
# int_weights_row.
INT_PARAMS = 5

JIT = dict(cache=True, nogil=True)
# Reassociation lets LLVM vectorise the dot-product reductions; the flags
# that assume no inf/NaN are left out because the top-k heap holds +inf.
FAST = {"reassoc", "contract", "nsz", "arcp"}
# An inlined helper's array arguments become new references: numba counts
# them with atomic calls that its pruning pass cannot remove across branches.
# In the list-major scan they cost more than its dot products, so its
# per-vector path indexes arrays in the kernel body and calls array-taking
# helpers only for vectors that win or pass the filter.


# Bundles of arrays the kernels take (numba unpacks them at a kernel's entry,
# so the loops see plain arrays).
#: A snapshot's lists: ``codes`` (uint8, rows x code bytes), ``ids``
#: (int64), ``aux`` (float32, the metric's per-row side value), and per list
#: ``offsets`` (first row) and ``sizes`` (rows), int64.
ListArrays = namedtuple("ListArrays", ["codes", "ids", "aux", "offsets", "sizes"])
#: Per query: the float weights of the scan's dot, ``|q|^2`` for L2 (else
#: 0), and the integer filter's weights and INT_PARAMS (no columns: off).
QueryTables = namedtuple("QueryTables", ["weights", "sq_norms", "int_weights", "int_params"])
#: Bitsets of kept ids (bit ``i`` of word ``i // 32``), uint32 (rows, words):
#: one row for every query, or one per query (row ``i`` for the kernel's
#: query ``i``); and whether they apply.
KeepFilter = namedtuple("KeepFilter", ["words", "enabled"])
#: (query, probe) pairs grouped by list: per list ``offsets`` into the pairs'
#: query rows ``queries`` and their list constants ``consts``.
PairGroups = namedtuple("PairGroups", ["offsets", "queries", "consts"])
#: The precise store: float32 ``rows``, or no rows and float16 ``half_bits``
#: with the float32 value of every bit pattern (``half_table``).
PreciseStore = namedtuple("PreciseStore", ["rows", "half_bits", "half_table"])
