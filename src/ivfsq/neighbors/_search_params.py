"""``SearchParams``, the search parameters of :mod:`ivfsq.neighbors.ivf_sq`
(in a module of its own, exported from there)."""

from ivfsq._validation import check_choice, check_float, check_int
from ivfsq.ivf.planner import INT_FILTERS, SCANS

__all__ = ["SearchParams"]


class SearchParams:
    """Parameters to search an IVF-SQ index.

    Parameters
    ----------
    n_probes : int, default = 20
        The number of lists to scan per query (clamped to ``n_lists``).
    refine_ratio : float or None, default = None
        For an index built with ``reorder=True``: ``ceil(refine_ratio * k)``
        candidates are scored on the codes, then re-ranked with exact
        distances from the precise store (the returned distances are exact).
        ``None`` means 2.0. Must be >= 1; giving it for an index without a
        precise store is an error.
    scan : {"auto", "few", "per_query", "per_list", "list_major"}, default = "auto"
        How the probed lists are scanned; ``"auto"`` lets the planner choose
        from the batch shape (see :func:`search_plan`). The results do not
        depend on it beyond float32 rounding and the order of exact ties.
    int_filter : {"auto", "off", "int8", "int16"}, default = "auto"
        The integer pre-filter of the scan (integer dots with an error
        bound, then exact scores for the rows it cannot rule out), with int8
        or int16 query weights, or ``"off"``. Which ones an index can take
        depends on its codes and the CPU; others raise ``ValueError`` at
        search time. Like ``scan``, it changes speed, not results.
    first_pass_candidates : int or None, default = None
        For 8-bit codes ("sq8", "sq8_uniform"): score every probed vector
        first on 4-bit codes derived from its 8-bit ones (each 4-bit level is
        17 of the 8-bit levels; 16 rows are scored at a time from a
        block-interleaved copy made once per list snapshot, ``dim / 2 + 4``
        bytes per vector), keep this many of the best per query, and score
        only those on the 8-bit codes. Several times faster per scanned
        vector; the results are the exact scan's wherever its ``k`` nearest
        are among the candidates, so recall grows with the value (see the
        user guide for what to choose). ``None`` scans the 8-bit codes
        directly. Values below the number of results asked for count as
        that number; ``scan`` may then be "auto", "few" or "per_query", and
        ``int_filter`` is not used.

    Examples
    --------
    >>> from ivfsq.neighbors import ivf_sq
    >>> ivf_sq.SearchParams(n_probes=32)  # doctest: +NORMALIZE_WHITESPACE
    SearchParams(n_probes=32, refine_ratio=None, scan='auto', int_filter='auto',
                 first_pass_candidates=None)
    """

    def __init__(self, *, n_probes=20, refine_ratio=None, scan="auto", int_filter="auto",
                 first_pass_candidates=None):
        self._n_probes = check_int("n_probes", n_probes, minimum=1)
        self._refine_ratio = None
        if refine_ratio is not None:
            self._refine_ratio = check_float("refine_ratio", refine_ratio, minimum=1.0)
        self._scan = check_choice("scan", scan, SCANS)
        self._int_filter = check_choice("int_filter", int_filter, INT_FILTERS)
        self._first_pass_candidates = None
        if first_pass_candidates is not None:
            self._first_pass_candidates = check_int(
                "first_pass_candidates", first_pass_candidates, minimum=1)

    def get_handle(self):
        """An opaque handle (cuVS compatibility): the parameters object itself."""
        return self

    n_probes = property(lambda self: self._n_probes, doc="Lists scanned per query.")
    refine_ratio = property(lambda self: self._refine_ratio, doc="Re-ranked candidates per k.")
    scan = property(lambda self: self._scan, doc="The scan path, or 'auto'.")
    int_filter = property(lambda self: self._int_filter, doc="The integer filter, or 'auto'.")
    first_pass_candidates = property(lambda self: self._first_pass_candidates,
                                     doc="Candidates kept by the 4-bit first pass, or None.")

    def _fields(self):
        return (self._n_probes, self._refine_ratio, self._scan, self._int_filter,
                self._first_pass_candidates)

    # Equal parameters are interchangeable (they are read-only): a search
    # repeated with a new but equal object is a repeat.
    def __eq__(self, other):
        if not isinstance(other, SearchParams):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        return (f"SearchParams(n_probes={self._n_probes}, refine_ratio={self._refine_ratio!r}, "
                f"scan={self._scan!r}, int_filter={self._int_filter!r}, "
                f"first_pass_candidates={self._first_pass_candidates!r})")
