"""The search planner: how a batch of queries is scanned.

Every choice of *how* to search (not *what*: the probes, ``k`` and the
filter do not change the results beyond float32 rounding and ties) is made
here, from the batch shape, the thread count and the index's lists, and
returned as an explicit :class:`SearchPlan` that the engine executes.
``SearchParams(scan=..., int_filter=...)`` overrides a choice, so tests
and benchmarks pick a path through the public API.

The paths:

``"few"``
    A few queries, each searched whole (coarse step, tables and scan) in
    one kernel call on the calling thread: no dispatch per step.
``"per_query"``
    Parallel over queries; each query scans its probed lists into one heap.
``"per_list"``
    One or a few queries on several threads: the probed lists are split
    among the threads and the partial top-k merged.
``"list_major"``
    Big batches: the (query, probe) pairs are grouped by list and each list
    is read once for all its queries.

With a 4-bit first pass (``first_pass``, the candidates it keeps), a
query's probed lists are scored 16 rows at a time on 4-bit codes and only
the candidates on their 8-bit codes
(:mod:`ivfsq.backends.cpu.kernels.fastscan`); the path is then ``"few"``
or ``"per_query"`` and there is no integer filter.

The integer filter (``int_filter``) scores each row first with an integer
dot of quantized query weights (``"int8"`` or ``"int16"`` weights), whose
error bound rules most rows out before their exact score; ``"off"`` scores
every row exactly. It runs where the CPU has the integer dots and a code
row holds a whole chunk (``ScalarQuantizer.n_int_weights``).
"""

from dataclasses import dataclass

from ivfsq.backends.cpu import kernels

__all__ = ["INT_FILTERS", "SCANS", "SearchPlan", "plan_search"]

SCANS = ("auto", "few", "per_query", "per_list", "list_major")
# The paths a search with a 4-bit first pass can take.
FIRST_PASS_SCANS = ("few", "per_query")
INT_FILTERS = ("auto", "off", "int8", "int16")

# Batches up to this size take the one-call path (and compute their coarse
# dot products in a kernel, which is cheaper than a BLAS call for a few
# queries) when their scan is small or there is one thread.
SMALL_BATCH_QUERIES = 8
# Up to SMALL_BATCH_QUERIES queries whose scan reads fewer code bytes than
# this are searched on the calling thread in one kernel call: handing such a
# scan to the pool costs more than it saves.
FEW_MAX_SCAN_BYTES = 1 << 20
# Queries searched at a time: bounds the per-thread heaps of list-major scans.
SEARCH_BLOCK_QUERIES = 16384
# A batch is scanned list-major when its (query, probe) pairs are at least
# this many times the number of lists (each list then serves several queries).
GROUPED_MIN_PAIRS_PER_LIST = 2
# List-major scans use the integer filter only for code rows of at least
# this many bytes (by bits per code): on shorter rows the per-vector work
# around the dots outweighs what they save (the dated benchmark pages have
# the runs). Per-query scans use it at every length.
GROUPED_INT_MIN_CODE_BYTES = {4: 128, 8: 256}


@dataclass(frozen=True)
class SearchPlan:
    """How one block of queries is searched.

    Attributes
    ----------
    path : {"few", "per_query", "per_list", "list_major"}
        How the (query, probe) pairs are scanned (see the module docs).
    int_filter : {"off", "int8", "int16"}
        The integer filter's weights, or no filter.
    block_queries : int
        Queries searched at a time (a bigger batch is cut into blocks, all
        against one snapshot of the lists).
    coarse_in_kernel : bool
        The coarse step runs in one numba call (few queries) rather than as
        a BLAS product with the centers.
    first_pass : int
        Candidates per query of the 4-bit first pass, or 0 (none).
    """

    path: str
    int_filter: str
    block_queries: int = SEARCH_BLOCK_QUERIES
    coarse_in_kernel: bool = False
    first_pass: int = 0

    @property
    def int_weights(self):
        """Whether the integer filter runs."""
        return self.int_filter != "off"

    @property
    def wide(self):
        """Whether the filter's weights are int16 for 4-bit codes."""
        return self.int_filter == "int16"


def int_filter_choices(quantizer):
    """The integer filters ``quantizer``'s codes can run on this CPU."""
    if quantizer.n_int_weights == 0:
        return ("off",)
    return ("off", "int8", "int16") if quantizer.bits == 4 else ("off", "int16")


def _check_override(what, value, allowed, why):
    if value != "auto" and value not in allowed:
        raise ValueError(
            f"{what} must be one of {', '.join(map(repr, ('auto', *allowed)))} for this "
            f"index{why}, got {value!r}"
        )


def plan_search(quantizer, lists, n_lists, n_queries, n_probes, n_threads, *, scan="auto",
                int_filter="auto", sq4_int16_pays=None, first_pass=0, per_query_filter=False):
    """The plan for ``n_queries`` queries probing ``n_probes`` of ``n_lists``
    lists (a snapshot ``lists`` of code rows) on ``n_threads`` threads.

    ``scan`` and ``int_filter`` override the path and the filter (``"auto"``
    chooses). ``sq4_int16_pays()`` says whether int16 weights pay for these
    4-bit codes (an estimate on the index's data, cached per snapshot by
    the caller); it is asked only where the choice arises. ``first_pass``:
    the candidates of a 4-bit first pass (0: none). ``per_query_filter``:
    the queries have their own bitsets, which the list-major scan cannot
    check (it tests one bitset per row for a block of queries): the
    per-query scan replaces it, even when asked for (the results are the
    same).
    """
    if first_pass:
        return _first_pass_plan(quantizer, lists, n_queries, n_probes, n_threads, scan,
                                first_pass)
    allowed = int_filter_choices(quantizer)
    _check_override("int_filter", int_filter, allowed,
                    "" if len(allowed) > 1 else " (the CPU has no integer dots for its codes)")
    n_queries_block = min(n_queries, SEARCH_BLOCK_QUERIES)
    path = scan
    if path == "auto":
        path = _choose_path(lists, n_lists, n_queries_block, n_probes, n_threads)
    if per_query_filter and path == "list_major":
        path = "per_query"
    if int_filter == "auto":
        int_filter = _choose_int_filter(quantizer, lists, path, allowed, sq4_int16_pays)
    return SearchPlan(
        path=path,
        int_filter=int_filter,
        block_queries=SEARCH_BLOCK_QUERIES,
        coarse_in_kernel=n_queries_block <= SMALL_BATCH_QUERIES,
    )


def _first_pass_plan(quantizer, lists, n_queries, n_probes, n_threads, scan, first_pass):
    if quantizer.bits != 8:
        raise ValueError(
            f"first_pass_candidates needs 8-bit codes ('sq8' or 'sq8_uniform'), got an index "
            f"with {quantizer.bits}-bit codes"
        )
    _check_override("scan", scan, FIRST_PASS_SCANS, " with first_pass_candidates")
    n_queries_block = min(n_queries, SEARCH_BLOCK_QUERIES)
    path = scan
    if path == "auto":
        # Parallel over queries where there are several and they scan more
        # than the pool's hand-off costs; else one call on this thread.
        few = n_threads == 1 or (
            n_queries_block <= SMALL_BATCH_QUERIES
            and _scan_bytes(lists, n_queries_block * n_probes) < FEW_MAX_SCAN_BYTES)
        path = "few" if few else "per_query"
    return SearchPlan(
        path=path,
        int_filter="off",
        block_queries=SEARCH_BLOCK_QUERIES,
        coarse_in_kernel=n_queries_block <= SMALL_BATCH_QUERIES,
        first_pass=first_pass,
    )


def _scan_bytes(lists, n_pairs):
    """Code bytes a scan of ``n_pairs`` probed lists of average size reads."""
    n_lists = max(1, lists.list_sizes.shape[0])
    return n_pairs * lists.size / n_lists * lists.codes.shape[1]


def _choose_path(lists, n_lists, n_queries, n_probes, n_threads):
    if n_queries <= SMALL_BATCH_QUERIES and (
        n_threads == 1 or _scan_bytes(lists, n_queries * n_probes) < FEW_MAX_SCAN_BYTES
    ):
        return "few"
    if n_queries * n_probes >= GROUPED_MIN_PAIRS_PER_LIST * n_lists:
        return "list_major"
    if n_queries >= n_threads or n_probes == 1:
        return "per_query"
    return "per_list"


def _choose_int_filter(quantizer, lists, path, allowed, sq4_int16_pays):
    if len(allowed) == 1:
        return "off"
    bits = quantizer.bits
    wide = (bits == 4 and quantizer.code_size <= kernels.simd.SQ4_WIDE_MAX_CODE_BYTES
            and sq4_int16_pays is not None and sq4_int16_pays())
    if (path == "list_major" and lists.codes.shape[1] < GROUPED_INT_MIN_CODE_BYTES[bits]
            and not wide):
        return "off"
    return "int16" if bits == 8 or wide else "int8"
