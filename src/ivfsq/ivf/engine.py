"""The IVF-SQ engine: training, adding and searching, on validated inputs.

The public facade (:mod:`ivfsq.neighbors.ivf_sq`) checks user input and calls
into this module, which works on float32 C-contiguous arrays only.
"""

import threading

import numpy as np

from ivfsq import backends, codecs, metrics
from ivfsq._progress import report
from ivfsq._threads import run_chunks, single_threaded_blas
from ivfsq._validation import MAX_SQ_NORM, check_magnitudes, to_float32, to_float32_checked
from ivfsq.backends.cpu import fastscan, kernels, search
from ivfsq.backends.cpu.search import normalize_rows
from ivfsq.backends.cpu.snapshot_cache import SnapshotCache
from ivfsq.ivf import filtering
from ivfsq.ivf.coarse import CoarseBound
from ivfsq.ivf.kmeans import assign_nearest, imbalance_factor, train_kmeans
from ivfsq.ivf.lists import ListStorage
from ivfsq.ivf.planner import SEARCH_BLOCK_QUERIES, SMALL_BATCH_QUERIES, plan_search
from ivfsq.ivf.transforms import random_orthogonal, rotate, unrotate

# Rows converted, assigned and encoded at a time: bounds the float32 working
# set when the input is large (or memory-mapped).
ENCODE_BATCH_ROWS = 65536
# Rows of the training sample turned into residuals at a time.
RESIDUAL_BLOCK_ROWS = 4096
# Up to this many rows, float32 input is checked by one kernel call in
# prepare() instead of a conversion and a BLAS dot under np.errstate: most
# of a single query's cost before the search itself. Larger batches keep
# that path.
FAST_PREPARE_ROWS = 64
# Queries per coarse-quantizer block and thread: bounds the (queries x
# n_lists) matrix of dot products.
COARSE_BLOCK_QUERIES = 2048
# 4-bit codes take int16 weights for the filter (on short rows) where the
# int8 ones let this share of a list's rows more than k through (see
# IvfSqEngine.sq4_int16_pays).
SQ4_WIDE_MIN_EXCESS = 0.1


class IvfSqEngine:
    """Trained state of an IVF-SQ index and the operations on it."""

    def __init__(
        self,
        metric,
        centers,
        quantizer,
        lists,
        conservative_memory_allocation,
        *,
        by_residual=True,
        rotation=None,
    ):
        self.metric = metrics.get(metric) if isinstance(metric, str) else metric
        self.kernel_metric = kernels.common.METRIC_CODES[self.metric.family]
        # Centers (like codes, queries and the precise store) live in the
        # rotated space when there is a rotation.
        self.centers = centers
        self.center_sq_norms = np.einsum("ij,ij->i", centers, centers).astype(np.float32)
        self.quantizer = quantizer
        self.lists = lists
        self.conservative_memory_allocation = conservative_memory_allocation
        self.by_residual = by_residual
        self.rotation = rotation
        self.next_id = 0
        self._extend_lock = threading.Lock()
        self._coarse_bound = None  # CoarseBound, False when it does not pay
        self._tuning = SnapshotCache()  # values tuned on a snapshot of the lists
        # (key, lists, runner) of the last single-query search (one_query).
        self._one_query = None

    @property
    def has_precise(self):
        return self.lists.precise is not None

    def original_space(self, vectors):
        """Vectors of the internal (rotated) space in the original space."""
        return vectors if self.rotation is None else unrotate(vectors, self.rotation)

    def code_reference(self, labels):
        """Centers and labels the codes are residuals of (zero without residuals)."""
        if self.by_residual:
            return self.centers, labels
        zero = np.zeros((1, self.centers.shape[1]), dtype=np.float32)
        return zero, np.zeros_like(labels)

    # ------------------------------------------------------------- training
    @classmethod
    def train(cls, params, dataset, n_threads, device="cpu"):
        """Train the coarse quantizer and the scalar quantizer on a sample;
        rows are assigned to centers on the backend of ``device``.

        Returns the engine and, when the sample is the whole dataset (in
        order) and was assigned to lists for the residuals, those lists (the
        ``labels`` of :meth:`add`), else None.
        """
        n_rows = dataset.shape[0]
        n_train = min(n_rows, params.n_lists * params.max_train_points_per_cluster)
        rng = np.random.default_rng(params.seed)
        if n_train < n_rows:
            # Sorted row order reads a memory-mapped input sequentially.
            sample_rows = np.sort(rng.choice(n_rows, size=n_train, replace=False))
            sample = dataset[sample_rows]
        else:
            sample = dataset
        converted = to_float32("dataset", sample)
        metric = metrics.get(params.metric)
        if not metric.normalized:
            check_magnitudes("dataset", converted, check_small=True)
        # The sample is modified below (normalized, residuals): copy it only
        # when the conversion returned the caller's memory.
        sample = converted.copy() if np.may_share_memory(converted, dataset) else converted
        if metric.normalized:
            normalize_rows(sample)
        # The sample goes through the same steps as prepare() and internal().
        rotation = None
        if params.transform == "rom":
            rotation = random_orthogonal(sample.shape[1], params.seed)
            sample = rotate(sample, rotation, n_threads)
        inner_product = metric.by_inner_product
        centers = train_kmeans(
            sample, params.n_lists, params.kmeans_n_iters, params.seed, inner_product, n_threads,
            device,
        )
        values = sample
        labels = None
        if params.by_residual:
            labels = assign_nearest(sample, centers, inner_product=inner_product,
                                    n_threads=n_threads, device=device)
            # In blocks: a gathered copy of the centers as large as the
            # sample cost more (fresh pages) than the subtraction itself.
            for start in range(0, values.shape[0], RESIDUAL_BLOCK_ROWS):
                stop = start + RESIDUAL_BLOCK_ROWS
                values[start:stop] -= centers[labels[start:stop]]
        quantizer = codecs.get(params.quantizer).train(
            values, params.range_stat, params.range_quantile
        )
        precise_dtype = params.precise_dtype if params.reorder else None
        lists = ListStorage.empty(
            params.n_lists, quantizer.code_size, sample.shape[1], precise_dtype
        )
        engine = cls(
            metric,
            centers,
            quantizer,
            lists,
            params.conservative_memory_allocation,
            by_residual=params.by_residual,
            rotation=rotation,
        )
        return engine, labels if n_train == n_rows else None

    # --------------------------------------------------------------- adding
    def assign(self, vectors, n_threads, device="cpu"):
        """The list of each float32 row (prepared, internal space)."""
        return assign_nearest(
            vectors,
            self.centers,
            self.center_sq_norms,
            inner_product=self.metric.by_inner_product,
            n_threads=n_threads,
            device=device,
        )

    def encode(self, vectors, labels, n_threads, device="cpu"):
        """Codes and per-vector norm terms of float32 rows (prepared,
        internal space) in lists ``labels``, on the backend of ``device``
        where it encodes (:mod:`ivfsq.backends`)."""
        backend_encode = getattr(backends.get(device), "encode", None)
        if backend_encode is not None:
            return backend_encode(self, vectors, labels)
        n_rows = vectors.shape[0]
        codes = np.empty((n_rows, self.quantizer.code_size), dtype=np.uint8)
        aux = np.empty(n_rows, dtype=np.float32)

        def task(start, stop):
            centers, references = self.code_reference(labels[start:stop])
            chunk_codes, decoded = self.quantizer.encode(vectors[start:stop], centers, references)
            codes[start:stop] = chunk_codes
            aux[start:stop] = self.metric.side_values(decoded)

        # Build steps: no spinning between them (see run_chunks).
        run_chunks(task, n_rows, n_threads, min_chunk=1024, chunks_per_thread=1, spin=False)
        return codes, aux

    def prepare(self, name, rows, start=0):
        """float32, finite, normalized for cosine; and the nonzero rows.

        The second value is a boolean mask of nonzero rows for cosine, else
        None. The caller's array is never modified. The vectors are still in
        the original space (the precise store's); :meth:`internal` rotates.
        """
        # Normalized rows have no magnitude limit.
        normalized = self.metric.normalized
        if (rows.shape[0] <= FAST_PREPARE_ROWS and type(rows) is np.ndarray
                and rows.dtype == np.float32 and rows.flags.c_contiguous
                and rows.flags.writeable):
            # A few float32 rows (a query), kernel-ready: checked (and, for
            # cosine, normalized into a copy) in one kernel call; any
            # failure takes the general check, which names the row.
            if not normalized:
                if kernels.encode.rows_within(rows, MAX_SQ_NORM):
                    return rows, None
            else:
                vectors = np.empty_like(rows)
                nonzero = np.empty(rows.shape[0], dtype=np.bool_)
                if kernels.encode.normalized_within(rows, vectors, nonzero):
                    return vectors, nonzero
        vectors = to_float32_checked(name, rows, start, magnitudes=not normalized)
        nonzero = None
        if normalized:
            if np.may_share_memory(vectors, rows):
                vectors = vectors.copy()  # never normalize the caller's array
            vectors, nonzero = normalize_rows(vectors)
        return vectors, nonzero

    def internal(self, vectors, n_threads=None):
        """Prepared vectors in the space of the centers and codes (rotated)."""
        return vectors if self.rotation is None else rotate(vectors, self.rotation, n_threads)

    def add(self, dataset, ids, n_threads, labels=None, name="new_vectors", device="cpu"):
        """Encode ``dataset`` in batches and add it under ``ids`` (all or nothing).

        ``ids=None`` numbers the rows after the largest id so far; given ids
        must not be in the index already. ``labels``: the rows' lists when
        known (from :meth:`train`, whose sample was the whole dataset: that
        spares assigning the rows again, a GEMM). ``name``: the argument
        errors in ``dataset`` are reported under; ``device``: the backend
        that assigns and encodes (:meth:`assign`, :meth:`encode`).

        Codes are written straight to their rows in a new list storage, which
        replaces the current one only once every row is stored. So the lists
        are assigned first (a first pass over the rows, which also checks
        them), then the rows are read again and encoded: peak memory is the
        new storage and a batch, not a second copy of the codes.
        """
        with self._extend_lock:
            n_rows = dataset.shape[0]
            if ids is None:
                ids = np.arange(self.next_id, self.next_id + n_rows, dtype=np.int64)
            else:
                self.check_new_ids(ids)
            batches = [(start, min(n_rows, start + ENCODE_BATCH_ROWS))
                       for start in range(0, n_rows, ENCODE_BATCH_ROWS)]
            prepared = None  # a single batch is prepared once, not twice
            if labels is None:
                labels = np.empty(n_rows, dtype=np.int64)
                for start, stop in batches:
                    vectors, nonzero = self.prepare(name, dataset[start:stop], start)
                    rotated = self.internal(vectors, n_threads)
                    labels[start:stop] = self.assign(rotated, n_threads, device)
                    if len(batches) == 1:
                        prepared = vectors, nonzero, rotated
                    report("assigning", stop, n_rows)
            storage, destination = self.lists.reserve(labels, self.conservative_memory_allocation)
            for start, stop in batches:
                if prepared is None:
                    vectors, nonzero = self.prepare(name, dataset[start:stop], start)
                    rotated = self.internal(vectors, n_threads)
                else:
                    vectors, nonzero, rotated = prepared
                codes, aux = self.encode(rotated, labels[start:stop], n_threads, device)
                if nonzero is not None:
                    # A zero vector keeps cosine distance 1 to every query.
                    aux[~nonzero] = 0.0
                storage.write(destination[start:stop], codes, ids[start:stop], aux,
                              vectors if storage.precise is not None else None)
                report("encoding", stop, n_rows)
            # Every row is stored: only now is the index changed.
            self.lists = storage
            if n_rows:
                self.next_id = max(self.next_id, int(ids.max()) + 1)

    def check_new_ids(self, ids):
        """Reject ids already in the index."""
        if ids.shape[0] == 0 or int(ids.min()) >= self.next_id:
            return
        lists = self.lists
        stored = lists.ids[lists.valid_rows()]
        clash = np.isin(ids, stored)
        if clash.any():
            raise ValueError(
                f"new_indices must not repeat ids already in the index, got id "
                f"{int(ids[np.argmax(clash)])} which is already present"
            )

    # ------------------------------------------------------------ searching
    @property
    def _use_l2(self):
        """Whether the kernels score with (squared) L2 distances."""
        return self.kernel_metric == kernels.common.METRIC_L2

    def coarse_probes(self, queries, n_probes, n_threads, in_kernel=None):
        """Probed lists (best first) per query, int64 (n_queries, n_probes).

        ``in_kernel``: the selection runs in one numba call (for a few
        queries) instead of after a BLAS product; by default as the planner
        chooses for the batch size.
        """
        n_queries = queries.shape[0]
        probes = np.empty((n_queries, n_probes), dtype=np.int64)
        scores = np.empty((n_queries, n_probes), dtype=np.float32)

        bound = self.coarse_bound(n_probes)
        if in_kernel is None:
            in_kernel = n_queries <= SMALL_BATCH_QUERIES
        if in_kernel:
            # One kernel call, no BLAS (the bound's dots included).
            if bound is None:
                kernels.coarse.select_probes_small(
                    queries, self.centers, self.center_sq_norms, self._use_l2, scores, probes
                )
            else:
                bound.select_few(queries, self.centers, self.center_sq_norms, self._use_l2, scores,
                                 probes)
            return probes

        # Each thread takes its queries block by block: a single-threaded
        # GEMM against the centers (or their bound's subspace), then the
        # selection over its dots.
        def task(start, stop):
            for block in range(start, stop, COARSE_BLOCK_QUERIES):
                rows = slice(block, min(stop, block + COARSE_BLOCK_QUERIES))
                if bound is None:
                    dots = queries[rows] @ self.centers.T
                    kernels.coarse.select_probes(
                        dots, self.center_sq_norms, self._use_l2, scores[rows], probes[rows]
                    )
                    continue
                query_aug, query_terms = bound.query_parts(queries[rows])
                kernels.coarse.select_probes_bounded(
                    queries[rows], self.centers, self.center_sq_norms, self._use_l2,
                    query_aug @ bound.center_aug.T, query_terms, bound.center_terms,
                    bound.scale, scores[rows], probes[rows],
                )

        with single_threaded_blas():
            run_chunks(task, n_queries, n_threads, min_chunk=64, chunks_per_thread=1)
        return probes

    def coarse_bound(self, n_probes):
        """The coarse lower bound (:mod:`ivfsq.ivf.coarse`) when it saves work
        at ``n_probes``, else None. Built from the centers on first use."""
        if self._coarse_bound is None:
            built = CoarseBound.build(
                self.centers, inner_product=self.metric.by_inner_product
            )
            self._coarse_bound = False if built is None else built
        bound = self._coarse_bound
        if bound is False or not bound.pays_off(n_probes):
            return None
        return bound

    def list_constants(self, queries, probes, n_threads):
        """``q . x_hat - weights . u`` for each probed list: ``q.c + q.vmin``;
        and ``|q|^2`` per query for L2 (zeros otherwise).

        ``q . c`` is recomputed in float64 for the probed lists only, so a
        query's constants do not depend on which other queries share its
        batch (BLAS blocking would); it is absent without residuals. The
        norms are float64 sums as well, the same as a single query's.
        """
        out = np.empty(probes.shape, dtype=np.float32)
        sq_norms = np.empty(probes.shape[0], dtype=np.float32)

        def task(start, stop):
            rows = slice(start, stop)
            kernels.encode.list_constants(
                queries[rows], self.centers, probes[rows], self.quantizer.vmin,
                self.by_residual, self._use_l2, out[rows], sq_norms[rows],
            )

        run_chunks(task, probes.shape[0], n_threads, min_chunk=64, chunks_per_thread=1)
        return out, sq_norms

    def plan(self, lists, n_queries, n_probes, n_threads, scan="auto", int_filter="auto",
             first_pass=0, per_query_filter=False):
        """The :class:`~ivfsq.ivf.planner.SearchPlan` for one block of
        queries against the snapshot ``lists`` (made once per snapshot and
        arguments: a plan depends on nothing else)."""
        n_probes = min(n_probes, self.centers.shape[0])
        n_queries = min(n_queries, SEARCH_BLOCK_QUERIES)  # what the plan depends on
        return self._tuning.get(
            lists, ("plan", n_queries, n_probes, n_threads, scan, int_filter, first_pass,
                    per_query_filter),
            lambda: plan_search(
                self.quantizer, lists, self.centers.shape[0], n_queries, n_probes, n_threads,
                scan=scan, int_filter=int_filter,
                sq4_int16_pays=lambda: self.sq4_int16_pays(lists), first_pass=first_pass,
                per_query_filter=per_query_filter,
            ),
        )

    def snapshot_value(self, lists, key, compute):
        """``compute()`` for the snapshot ``lists`` and ``key``, made once
        and kept as long as the snapshot (a backend's arguments derived from
        it, for instance)."""
        return self._tuning.get(lists, key, compute)

    def peek_snapshot_value(self, lists, key):
        """The value :meth:`snapshot_value` keeps for ``lists`` and ``key``,
        or None (nothing is computed)."""
        return self._tuning.peek(lists, key)

    def forget_snapshot_value(self, lists, key):
        """Drop what :meth:`snapshot_value` keeps for ``lists`` and ``key``."""
        self._tuning.discard(lists, key)

    def first_pass_layout(self, lists):
        """The block-interleaved 4-bit codes of the snapshot ``lists`` for
        the first pass (made on first use, once per snapshot)."""
        return self._tuning.get(
            lists, "first_pass_layout",
            lambda: fastscan.first_pass_layout(lists, self.quantizer.code_size),
        )

    def first_pass_nbytes(self, lists):
        """Bytes of the first pass's copy of ``lists``, 0 until a search made it."""
        layout = self._tuning.peek(lists, "first_pass_layout")
        return 0 if layout is None else sum(array.nbytes for array in layout)

    def search(self, prepared, k, n_probes, keep_words, n_threads, refine_ratio=1.0,
               scan="auto", int_filter="auto", device="cpu", first_pass=0, filter_memo=None):
        """Internal (smaller is better) distances and ids, (nq, k).

        ``prepared`` queries come from :meth:`prepare`. ``keep_words``: None,
        or uint32 bitsets of kept ids, one row for every query or one per
        query, searched as :mod:`ivfsq.ivf.filtering` says; ``filter_memo``:
        a dict that lives as long as those words (the filter's), where what
        is derived from them is kept between searches. With a precise store,
        ``ceil(refine_ratio * k)`` candidates per query are scored on the
        codes and re-ranked with exact distances. Large batches are searched
        in blocks of queries, all against one snapshot of the lists, each
        as the planner says (``scan`` and ``int_filter`` override it), on
        the backend of ``device`` (:mod:`ivfsq.backends`). ``first_pass``:
        the candidates per query of a 4-bit first pass (0: none).
        """
        lists = self.lists  # one snapshot for the whole search
        if keep_words is not None:
            def search_blocks(rows, group_probes, group_words):
                return self._search_blocks(prepared[rows], k, group_probes, group_words,
                                           n_threads, refine_ratio, scan, int_filter, device,
                                           first_pass, lists)

            return filtering.search(self, lists, prepared, k, n_probes, keep_words, n_threads,
                                    refine_ratio, search_blocks, device, filter_memo)
        return self._search_blocks(prepared, k, n_probes, None, n_threads, refine_ratio, scan,
                                   int_filter, device, first_pass, lists)

    def _search_blocks(self, prepared, k, n_probes, keep_words, n_threads, refine_ratio, scan,
                       int_filter, device, first_pass, lists=None):
        """:meth:`search` over ``n_probes`` lists of the snapshot ``lists``
        (the current one by default), in blocks as planned; ``keep_words``
        (as in :meth:`search`) is checked in the scan."""
        backend = backends.get(device)
        lists = self.lists if lists is None else lists
        n_queries = prepared.shape[0]
        per_query_filter = keep_words is not None and keep_words.shape[0] > 1
        plan = self.plan(lists, n_queries, n_probes, n_threads, scan, int_filter, first_pass,
                         per_query_filter)
        if n_queries <= plan.block_queries:
            return backend.search_block(self, plan, prepared, lists, k, n_probes, keep_words,
                                        n_threads, refine_ratio)
        distances = np.empty((n_queries, k), dtype=np.float32)
        neighbors = np.empty((n_queries, k), dtype=np.int64)
        for start in range(0, n_queries, plan.block_queries):
            # Each block is planned for its own size (the last may be small).
            plan = self.plan(lists, n_queries - start, n_probes, n_threads, scan, int_filter,
                             first_pass, per_query_filter)
            rows = slice(start, start + plan.block_queries)
            block_words = keep_words
            if keep_words is not None and keep_words.shape[0] > 1:
                block_words = keep_words[rows]  # the block's own bitsets
            distances[rows], neighbors[rows] = backend.search_block(
                self, plan, prepared[rows], lists, k, n_probes, block_words, n_threads,
                refine_ratio,
            )
        return distances, neighbors

    def one_query(self, key, make):
        """The single-query runner for ``key`` (the caller's search
        arguments, compared with ``==``) and the current snapshot of the
        lists: ``make(lists)`` returns it (or None) on the first call for
        them. One slot, replaced whenever the key or the snapshot changes:
        repeated single queries with the same arguments find it."""
        lists = self.lists
        slot = self._one_query
        if slot is not None and slot[1] is lists and slot[0] == key:
            return slot[2]
        runner = make(lists)
        self._one_query = (key, lists, runner)  # swapped whole: no lock
        return runner

    def one_query_runner(self, lists, k, n_probes, n_threads, refine_ratio=None, scan="auto",
                         int_filter="auto", device="cpu", first_pass=0):
        """A runner of :meth:`search` for one query against ``lists``, with
        these arguments: ``run(prepared)`` returns internal distances and
        ids, (1, k). None where the backend has none for the plan (see
        :func:`ivfsq.backends.cpu.search.one_query`)."""
        plan = self.plan(lists, 1, n_probes, n_threads, scan, int_filter, first_pass)
        return backends.get(device).one_query(self, plan, lists, k, n_probes, refine_ratio)

    def range_search(self, prepared, radius, n_probes, keep_words, n_threads,
                     int_filter="auto", device="cpu"):
        """Per query, the stored vectors with internal distance <= ``radius``
        (see :func:`ivfsq.backends.cpu.search.range_search`): CSR arrays
        ``offsets``, ``ids`` and internal distances. ``keep_words`` as in
        :meth:`search`."""
        return backends.get(device).range_search(self, prepared, radius, n_probes, keep_words,
                                                 n_threads, int_filter)

    def sq4_int16_pays(self, lists):
        """Whether int16 filter weights pay for these 4-bit codes: where the
        int8 ones leave too many rows of a list for exact scoring
        (:func:`ivfsq.backends.cpu.search.int8_excess` at least
        ``SQ4_WIDE_MIN_EXCESS``).

        Which pays depends on the data, not only on the row length, so the
        share is estimated on the snapshot's own vectors, once per snapshot.
        Results are the same either way up to float32 rounding (int8 weights
        score exactly with integer planes, int16 ones with the float weights).
        """
        if lists.size == 0:
            return False
        return self._tuning.get(
            lists, "sq4_int16_pays", lambda: search.int8_excess(self, lists) >= SQ4_WIDE_MIN_EXCESS
        )

    # ------------------------------------------------------------- decoding
    def decoded_vectors(self):
        """ids and decoded vectors (original space) of every stored entry."""
        lists = self.lists
        rows = lists.valid_rows()
        labels = np.repeat(np.arange(lists.n_lists), lists.list_sizes)
        centers, labels = self.code_reference(labels)
        decoded = self.quantizer.decode(lists.codes[rows], centers, labels)
        return lists.ids[rows], self.original_space(decoded)

    def codec_mismatch(self, other):
        """Why ``other``'s codes cannot be mixed with this engine's (a
        description), or None when they can: the same metric, centers,
        quantizer ranges, residual rule, rotation and precise store."""
        checks = [
            ("metric", self.metric == other.metric),
            ("dimension", self.centers.shape[1] == other.centers.shape[1]),
            ("number of lists", self.centers.shape[0] == other.centers.shape[0]),
            ("quantizer", self.quantizer.kind == other.quantizer.kind),
            ("by_residual", self.by_residual == other.by_residual),
            ("precise store", (self.lists.precise is None) == (other.lists.precise is None)
             and (self.lists.precise is None
                  or self.lists.precise.dtype == other.lists.precise.dtype)),
            ("rotation", (self.rotation is None) == (other.rotation is None)),
        ]
        for what, same in checks:
            if not same:
                return f"a different {what}"
        if not np.array_equal(self.centers, other.centers):
            return "different centers (it was trained separately)"
        reason = self.quantizer.mismatch(other.quantizer)
        if reason is not None:
            return reason
        if self.rotation is not None and not np.array_equal(self.rotation, other.rotation):
            return "different rotation (it was trained separately)"
        return None

    def merged(self, others):
        """A new engine holding this engine's vectors and the others' (same
        codec, see :meth:`codec_mismatch`; ids must not repeat)."""
        engines = [self, *others]
        snapshots = [engine.lists for engine in engines]
        ids = np.concatenate([lists.ids[lists.valid_rows()] for lists in snapshots])
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"indexes must not share ids, got id {int(unique[np.argmax(counts > 1)])} "
                f"in more than one"
            )
        merged = IvfSqEngine(
            self.metric, self.centers, self.quantizer,
            ListStorage.empty(self.centers.shape[0], self.quantizer.code_size,
                              self.centers.shape[1],
                              None if self.lists.precise is None else self.lists.precise.dtype),
            self.conservative_memory_allocation, by_residual=self.by_residual,
            rotation=self.rotation,
        )
        storage = merged.lists
        labels = [lists.list_of_rows(lists.valid_rows()) for lists in snapshots]
        all_labels = np.concatenate(labels)
        storage, destination = storage.reserve(all_labels, conservative=True)
        start = 0
        for lists, list_labels in zip(snapshots, labels):
            rows = lists.valid_rows()
            stop = start + rows.shape[0]
            storage.write(destination[start:stop], lists.codes[rows], lists.ids[rows],
                          lists.aux[rows], None if lists.precise is None else lists.precise[rows])
            start = stop
        merged.lists = storage
        merged.next_id = max(engine.next_id for engine in engines)
        return merged

    def reconstruct(self, ids):
        """Decoded vectors (original space) of ``ids`` (int64), in order.

        Raises ValueError naming the first id that is not stored.
        """
        lists = self.lists  # one snapshot
        rows, found = lists.locate(ids)
        if not found.all():
            missing = int(ids[np.argmin(found)])
            raise ValueError(f"ids must be stored in the index, got id {missing}, which is not")
        centers, labels = self.code_reference(lists.list_of_rows(rows))
        decoded = self.quantizer.decode(lists.codes[rows], centers, labels)
        return self.original_space(np.ascontiguousarray(decoded, dtype=np.float32))

    def remove(self, ids):
        """Delete the stored vectors with these ids (int64, distinct); ids
        not stored are ignored. Returns how many were removed.

        Searches that started before see the index as it was: the lists
        are replaced by a copy without the rows.
        """
        with self._extend_lock:
            rows, found = self.lists.locate(ids)
            if found.any():
                self.lists = self.lists.without_rows(rows[found])
            return int(found.sum())

    @property
    def list_imbalance(self):
        return imbalance_factor(self.lists.list_sizes)
