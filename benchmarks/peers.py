"""The peer libraries of the side-by-side benchmarks: how each index is
built, sized and searched.

FAISS (``IndexIVFScalarQuantizer`` and ``IndexHNSWSQ``), hnswlib, usearch
and ScaNN. Each library is imported inside the functions that use it, so a
script that imports this module runs without the libraries it does not ask
for. Every ``sweep_*`` returns one result dict per value of its search knob,
measured with :func:`common.measure`; every ``build_*`` returns ``(index,
seconds)`` with the build (and any normalisation of the base) inside the
timing.
"""

import os
import tempfile

import numpy as np
from common import measure, time_call

KMEANS_N_ITERS = 20
TRAIN_POINTS_PER_LIST = 256
TRAIN_SEED = 0
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_VALUES = (10, 20, 40, 80, 160, 320)
FAISS_HNSW_M = 32
FAISS_HNSW_EF_CONSTRUCTION = 80
SCANN_DIMS_PER_BLOCK = 2
SCANN_REORDER_NEIGHBORS = 100
# ScaNN's anisotropic quantization weight, for the dot-product distance only.
SCANN_ANISOTROPIC_THRESHOLD = 0.2


def training_rows(n_rows, n_lists, seed=TRAIN_SEED):
    """Row numbers of the k-means / quantizer training sample.

    The same procedure as ``ivfsq.ivf.engine.IvfSqEngine.train`` (seeded
    ``default_rng(seed).choice`` without replacement, sorted), so FAISS is
    trained on exactly the rows ivfsq samples internally while that code is
    unchanged.
    """
    n_train = min(n_rows, n_lists * TRAIN_POINTS_PER_LIST)
    if n_train == n_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=n_train, replace=False))


def normalized(vectors):
    """A row-normalised float32 copy (for FAISS with the cosine metric)."""
    import faiss

    out = np.array(vectors, dtype=np.float32, copy=True)
    faiss.normalize_L2(out)
    return out


# --------------------------------------------------------------------------
# FAISS IndexIVFScalarQuantizer
# --------------------------------------------------------------------------

def build_faiss(base, metric, n_lists, threads):
    """Build FAISS IndexIVFScalarQuantizer (QT_8bit, by residual).

    Timed: normalising the base (cosine only), gathering the training rows,
    ``train`` and ``add``. Returns ``(index, seconds)``.
    """
    import faiss

    faiss.omp_set_num_threads(threads)
    rows = training_rows(base.shape[0], n_lists)
    dim = base.shape[1]
    if metric == "sqeuclidean":
        faiss_metric, coarse = faiss.METRIC_L2, faiss.IndexFlatL2(dim)
    else:  # cosine (on normalised vectors) and inner_product
        faiss_metric, coarse = faiss.METRIC_INNER_PRODUCT, faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(
        coarse, dim, n_lists, faiss.ScalarQuantizer.QT_8bit, faiss_metric
    )
    index.by_residual = True
    index.cp.niter = KMEANS_N_ITERS
    index.cp.max_points_per_centroid = 1 << 30  # we already sampled: no subsampling

    def build():
        vectors = normalized(base) if metric == "cosine" else base
        index.train(np.ascontiguousarray(vectors[rows]))
        index.add(vectors)
        return index

    return time_call(build)


def faiss_bytes_per_vector(index):
    """Bytes per vector of the FAISS index, two ways.

    ``serialized``: ``len(faiss.serialize_index(index)) / N`` (codes, 8-byte
    ids, centroids, quantizer ranges, headers). ``lists``: code size + 8 byte
    id, i.e. the inverted-list payload only.
    """
    return faiss_serialized_bytes_per_vector(index), index.code_size + 8


def faiss_serialized_bytes_per_vector(index):
    """``len(faiss.serialize_index(index)) / N`` of any FAISS index."""
    import faiss

    return len(faiss.serialize_index(index)) / index.ntotal


def _measure_faiss(index, queries, gt, metric, args):
    """One sweep point of a FAISS index as it is set now. For cosine,
    normalising the queries is part of each timed search (ivfsq normalises
    inside its search too)."""
    import faiss

    def prepare(rows):
        return normalized(rows) if metric == "cosine" else rows

    def search_batch():
        return index.search(prepare(queries), args.k)[1]

    def search_one(i):
        return index.search(prepare(queries[i:i + 1]), args.k)

    return measure(search_batch, search_one, faiss.omp_set_num_threads, queries, gt, args)


def sweep_faiss(index, queries, gt, metric, args, n_probes_values):
    """Measure FAISS IVF at every ``n_probes``; returns a list of result dicts."""
    results = []
    for n_probes in n_probes_values:
        index.nprobe = min(n_probes, index.nlist)
        results.append({**_measure_faiss(index, queries, gt, metric, args),
                        "n_probes": n_probes})
    return results


# --------------------------------------------------------------------------
# FAISS IndexHNSWSQ
# --------------------------------------------------------------------------

def build_faiss_hnsw_sq(base, metric, threads):
    """Build FAISS ``IndexHNSWSQ`` (QT_8bit, M=32, efConstruction=80).

    The scalar quantizer is trained on the whole base, then the base is
    added. Cosine data is normalised and searched as inner product (the
    normalisation is timed). Returns ``(index, seconds)``.
    """
    import faiss

    faiss.omp_set_num_threads(threads)
    faiss_metric = faiss.METRIC_L2 if metric == "sqeuclidean" else faiss.METRIC_INNER_PRODUCT

    def build():
        index = faiss.IndexHNSWSQ(base.shape[1], faiss.ScalarQuantizer.QT_8bit, FAISS_HNSW_M,
                                  faiss_metric)
        index.hnsw.efConstruction = FAISS_HNSW_EF_CONSTRUCTION
        vectors = normalized(base) if metric == "cosine" else base
        index.train(vectors)
        index.add(vectors)
        return index

    return time_call(build)


def sweep_faiss_hnsw(index, queries, gt, metric, args, ef_values):
    """Measure a FAISS HNSW index at every ``efSearch`` in ``ef_values`` (>= k)."""
    results = []
    for ef in sorted({max(ef, args.k) for ef in ef_values}):
        index.hnsw.efSearch = ef
        results.append({**_measure_faiss(index, queries, gt, metric, args), "ef": ef})
    return results


# --------------------------------------------------------------------------
# hnswlib
# --------------------------------------------------------------------------

def build_hnswlib(hnswlib, base, metric, threads):
    """Build an hnswlib index (M=16, ef_construction=200); return ``(index, seconds)``."""
    space = {"sqeuclidean": "l2", "cosine": "cosine", "inner_product": "ip"}[metric]
    index = hnswlib.Index(space=space, dim=base.shape[1])

    def build():
        index.init_index(max_elements=base.shape[0], ef_construction=HNSW_EF_CONSTRUCTION,
                         M=HNSW_M, random_seed=100)
        index.set_num_threads(threads)
        index.add_items(base, np.arange(base.shape[0]))
        return index

    return time_call(build)


def hnswlib_bytes_per_vector(index, n_rows):
    """Serialized size of an hnswlib index per vector (vectors + graph)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "hnsw.bin")
        index.save_index(path)
        return os.path.getsize(path) / n_rows


def sweep_hnswlib(index, queries, gt, args, ef_values=HNSW_EF_VALUES):
    """Measure hnswlib at every ef in ``ef_values`` (ef >= k)."""
    results = []
    for ef in sorted({max(ef, args.k) for ef in ef_values}):
        index.set_ef(ef)

        def search_batch():
            return index.knn_query(queries, k=args.k)[0]

        def search_one(i):
            return index.knn_query(queries[i:i + 1], k=args.k)

        result = measure(search_batch, search_one, index.set_num_threads, queries, gt, args)
        result["ef"] = ef
        results.append(result)
    return results


# --------------------------------------------------------------------------
# usearch
# --------------------------------------------------------------------------

def usearch_dtype(metric):
    """usearch's int8 vectors for cosine; float16 otherwise: usearch scales
    every vector to unit norm before rounding it to int8 (for every metric),
    so int8 cannot hold L2 or inner-product data (fashion-mnist L2 recall@10
    stayed at 0.46)."""
    return "i8" if metric == "cosine" else "f16"


def build_usearch(base, metric, threads):
    """Build a usearch HNSW index (connectivity 16, expansion_add 200) with
    :func:`usearch_dtype` vectors; return ``(index, seconds)``."""
    from usearch.index import Index as UsearchIndex

    kind = {"sqeuclidean": "l2sq", "cosine": "cos", "inner_product": "ip"}[metric]

    def build():
        index = UsearchIndex(ndim=base.shape[1], metric=kind, dtype=usearch_dtype(metric),
                             connectivity=HNSW_M, expansion_add=HNSW_EF_CONSTRUCTION)
        index.add(np.arange(base.shape[0]), base, threads=threads)
        return index

    return time_call(build)


def sweep_usearch(index, queries, gt, args, ef_values=HNSW_EF_VALUES):
    """Measure usearch at every expansion_search in ``ef_values`` (>= k)."""
    results = []
    scaled = np.ascontiguousarray(queries)
    threads = {"n": args.threads}

    def set_threads(n):
        threads["n"] = n

    for ef in sorted({max(ef, args.k) for ef in ef_values}):
        index.expansion_search = ef

        def search_batch():
            return index.search(scaled, args.k, threads=threads["n"]).keys.astype(np.int64)

        def search_one(i):
            return index.search(scaled[i], args.k, threads=1)

        result = measure(search_batch, search_one, set_threads, queries, gt, args)
        result["ef"] = ef
        results.append(result)
    return results


# --------------------------------------------------------------------------
# ScaNN
# --------------------------------------------------------------------------

def unit_rows(vectors):
    """Rows scaled to unit L2 norm (a float32 copy; zero rows stay zero), as
    a ScaNN user normalises cosine data with NumPy."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def build_scann(base, metric, n_lists, threads, k):
    """Build a ScaNN searcher: a k-means tree of ``n_lists`` leaves, 4-bit
    anisotropic hashing of pairs of dimensions, exact re-ranking.

    ``dot_product`` for cosine (on L2-normalised vectors; the normalisation
    is timed) and inner product, with spherical partitioning and the
    anisotropic threshold 0.2; ``squared_l2`` for L2, with ScaNN's default
    (no anisotropic weight). The tree is trained on as many rows as the IVF
    indexes (``n_lists * 256``, capped at N), with ``threads`` training
    threads; the searcher then searches with ``threads`` threads.
    Returns ``(searcher, seconds)``.
    """
    import scann

    dot = metric != "sqeuclidean"
    ah_options = {"anisotropic_quantization_threshold": SCANN_ANISOTROPIC_THRESHOLD} if dot else {}
    n_train = len(training_rows(base.shape[0], n_lists))

    def build():
        vectors = unit_rows(base) if metric == "cosine" else base
        searcher = (
            scann.scann_ops_pybind.builder(vectors, k, "dot_product" if dot else "squared_l2")
            .tree(num_leaves=n_lists, num_leaves_to_search=max(1, n_lists // 16),
                  training_sample_size=n_train, spherical=dot, quantize_centroids=True)
            .score_ah(SCANN_DIMS_PER_BLOCK, **ah_options)
            .reorder(SCANN_REORDER_NEIGHBORS)
            .set_n_training_threads(threads)
            .build()
        )
        searcher.set_num_threads(threads)
        return searcher

    return time_call(build)


def scann_bytes_per_vector(searcher, n_rows):
    """Size of ScaNN's serialized searcher per vector: the sum of the files
    ``serialize`` writes (codes, tree, token of each row and the float32
    rows kept for re-ranking)."""
    with tempfile.TemporaryDirectory() as folder:
        searcher.serialize(folder)
        total = sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())
    return total / n_rows


def sweep_scann(searcher, queries, gt, metric, args, leaves_values, pre_reorder):
    """Measure ScaNN at every ``leaves_to_search`` in ``leaves_values`` with
    ``pre_reorder`` candidates re-ranked exactly.

    Batches go to ``search_batched_parallel`` (ScaNN's own thread pool, sized
    by ``set_num_threads``); single queries to ``search``. For cosine,
    normalising the queries is part of each timed search. ScaNN returns
    uint32 ids; the batch search converts them to int64.
    """
    prepare = unit_rows if metric == "cosine" else (lambda rows: rows)
    results = []
    for leaves in leaves_values:
        def search_batch():
            ids, _ = searcher.search_batched_parallel(
                prepare(queries), args.k, leaves_to_search=leaves,
                pre_reorder_num_neighbors=pre_reorder)
            return ids.astype(np.int64)

        def search_one(i):
            return searcher.search(prepare(queries[i]), args.k, leaves_to_search=leaves,
                                   pre_reorder_num_neighbors=pre_reorder)

        result = measure(search_batch, search_one, searcher.set_num_threads, queries, gt, args)
        result["leaves"] = leaves
        result["pre_reorder"] = pre_reorder
        results.append(result)
    return results
