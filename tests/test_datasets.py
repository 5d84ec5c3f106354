"""Tests for ivfsq.datasets: synthetic data, exact k-NN, recall, data folders."""

import numpy as np
import pytest

from ivfsq.datasets import (
    brute_force_knn,
    find_shared_dataset,
    load_dataset_dir,
    make_blobs_lowrank,
    recall_at_k,
)

METRICS = ["sqeuclidean", "euclidean", "inner_product", "cosine"]


# --------------------------------------------------------------------------
# naive float64 oracle
# --------------------------------------------------------------------------

def oracle_knn(base, queries, k, metric):
    """All-pairs float64 distances, ordered by (distance, id)."""
    b = np.asarray(base, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if metric in ("sqeuclidean", "euclidean"):
        dist = ((q[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        if metric == "euclidean":
            dist = np.sqrt(dist)
        key = dist
    elif metric == "inner_product":
        dist = q @ b.T
        key = -dist
    else:
        qn = np.linalg.norm(q, axis=1)
        bn = np.linalg.norm(b, axis=1)
        denom = qn[:, None] * bn[None, :]
        sim = np.divide(q @ b.T, denom, out=np.zeros_like(denom), where=denom > 0)
        dist = key = 1.0 - sim
    ids = np.broadcast_to(np.arange(b.shape[0]), key.shape)
    order = np.lexsort((ids, key), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def check_against_oracle(base, queries, k, metric, **kw):
    d, i = brute_force_knn(base, queries, k, metric, **kw)
    assert d.dtype == np.float32 and i.dtype == np.int64
    assert d.shape == i.shape == (len(queries), k)
    d_ref, i_ref = oracle_knn(base, queries, k, metric)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# make_blobs_lowrank
# --------------------------------------------------------------------------

def test_blobs_shape_dtype_contiguity():
    base = make_blobs_lowrank(500, 24)
    assert isinstance(base, np.ndarray)
    assert base.shape == (500, 24) and base.dtype == np.float32
    assert base.flags.c_contiguous
    base, queries = make_blobs_lowrank(300, 10, n_queries=7, dtype=np.float64)
    assert base.shape == (300, 10) and queries.shape == (7, 10)
    assert base.dtype == queries.dtype == np.float64
    assert base.flags.c_contiguous and queries.flags.c_contiguous
    assert np.isfinite(base).all() and np.isfinite(queries).all()


def test_blobs_deterministic():
    a = make_blobs_lowrank(1000, 32, n_queries=20, seed=3)
    b = make_blobs_lowrank(1000, 32, n_queries=20, seed=3)
    c = make_blobs_lowrank(1000, 32, n_queries=20, seed=4)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
    # The base does not depend on how many queries are requested.
    only_base = make_blobs_lowrank(1000, 32, seed=3)
    assert only_base.tobytes() == a[0].tobytes()


def test_blobs_queries_distinct_from_base():
    base, queries = make_blobs_lowrank(2000, 16, n_queries=200, seed=1)
    base_rows = {row.tobytes() for row in base}
    assert not any(row.tobytes() in base_rows for row in queries)
    assert len({row.tobytes() for row in queries}) == len(queries)
    # ... yet from the same distribution: similar per-dimension spread.
    ratio = queries.std(axis=0) / base.std(axis=0)
    assert np.all((ratio > 0.6) & (ratio < 1.6))


def explained(x, n_components):
    """Fraction of the variance of centred x held by the top singular values."""
    s2 = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    return s2[:n_components].sum() / s2.sum()


def test_blobs_low_intrinsic_dimension_not_noise():
    dim, r = 64, 8
    base = make_blobs_lowrank(4000, dim, intrinsic_dim=r, seed=0)
    assert explained(base, r + 4) > 0.9
    # The same test fails on uniform noise, so it does measure something.
    noise = np.random.default_rng(0).random((4000, dim))
    assert explained(noise, r + 4) < 0.5
    # Dimensions have very different variances, as in real data.
    var = base.var(axis=0)
    assert var.max() / var.min() > 20
    # Default intrinsic dimension for dim=64 is 16.
    base = make_blobs_lowrank(4000, dim, seed=0)
    assert explained(base, 16 + 4) > 0.9


def test_blobs_clustered():
    # Nearest-neighbour distances are much smaller than for a Gaussian with
    # the same covariance: the points are concentrated, not spread out.
    base = make_blobs_lowrank(3000, 32, intrinsic_dim=8, seed=2)
    gauss = np.random.default_rng(2).multivariate_normal(
        base.mean(axis=0), np.cov(base.T), size=3000)
    nn_base = brute_force_knn(base, base[:200], 2)[0][:, 1].mean()
    nn_gauss = brute_force_knn(gauss, gauss[:200], 2)[0][:, 1].mean()
    assert nn_base < 0.5 * nn_gauss


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(n_rows=0, dim=4), ValueError, "n_rows must be >= 1, got 0"),
        (dict(n_rows=10, dim=0), ValueError, "dim must be >= 1"),
        (dict(n_rows=10.0, dim=4), TypeError, "n_rows must be an integer"),
        (dict(n_rows=10, dim=4, n_queries=-1), ValueError, "n_queries must be >= 0"),
        (dict(n_rows=10, dim=4, intrinsic_dim=5), ValueError,
         r"intrinsic_dim must be <= dim \(4\), got 5"),
        (dict(n_rows=10, dim=4, n_clusters=0), ValueError, "n_clusters must be >= 1"),
        (dict(n_rows=10, dim=4, dtype=np.uint8), TypeError, "floating dtype"),
    ],
)
def test_blobs_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_blobs_lowrank(**kwargs)


# --------------------------------------------------------------------------
# brute_force_knn
# --------------------------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("batch_size", [None, 7])
def test_knn_matches_oracle_float(metric, batch_size):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 9)).astype(np.float32)
    queries = rng.standard_normal((13, 9))  # float64 queries are fine too
    for k in (1, 5, 60):  # 60 == n_base
        check_against_oracle(base, queries, k, metric, batch_size=batch_size)


@pytest.mark.parametrize("metric", METRICS)
def test_knn_uint8_input(metric):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(200, 16), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(10, 16), dtype=np.uint8)
    # Includes a zero row in each, and large values where uint8 math overflows.
    base[5] = 0
    queries[0] = 0
    check_against_oracle(base, queries, 10, metric, batch_size=64)


def test_knn_cosine_zero_vector():
    base = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = np.array([[2.0, 0.0], [0.0, 0.0]])
    d, i = brute_force_knn(base, queries, 4, "cosine")
    np.testing.assert_array_equal(i[0], [1, 0, 2, 3])
    np.testing.assert_allclose(d[0], [0.0, 1.0, 1.0, 2.0], atol=1e-7)
    # A zero query is at distance 1 from everything: all tie, ids ascending.
    np.testing.assert_array_equal(i[1], [0, 1, 2, 3])
    np.testing.assert_allclose(d[1], 1.0)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("batch_size", [None, 4])
def test_knn_ties_smaller_id_first(metric, batch_size):
    rng = np.random.default_rng(2)
    base = rng.integers(-3, 4, size=(23, 6)).astype(np.float32)
    base[[17, 3, 11, 20]] = [5, 5, 5, 5, 5, 5]  # four identical best rows
    query = np.full((1, 6), 6.0, dtype=np.float32)
    d, i = brute_force_knn(base, query, 3, metric, batch_size=batch_size)
    np.testing.assert_array_equal(i[0], [3, 11, 17])
    assert d[0, 0] == d[0, 1] == d[0, 2]
    check_against_oracle(base, query, 23, metric, batch_size=batch_size)


def test_knn_sorted_and_metric_relations():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((300, 12)).astype(np.float32)
    queries = rng.standard_normal((20, 12)).astype(np.float32)
    d_sq, i_sq = brute_force_knn(base, queries, 25, batch_size=50)
    d_eu, i_eu = brute_force_knn(base, queries, 25, "euclidean", batch_size=50)
    d_ip, _ = brute_force_knn(base, queries, 25, "inner_product", batch_size=50)
    assert np.all(np.diff(d_sq, axis=1) >= 0)
    assert np.all(np.diff(d_ip, axis=1) <= 0)
    np.testing.assert_array_equal(i_sq, i_eu)
    np.testing.assert_allclose(d_eu, np.sqrt(d_sq), rtol=1e-6)


def test_knn_memmap_base(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, size=(500, 8), dtype=np.uint8)
    path = tmp_path / "base.u8"
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=base.shape)
    mm[:] = base
    mm.flush()
    del mm
    ro = np.memmap(path, dtype=np.uint8, mode="r", shape=base.shape)
    queries = rng.standard_normal((15, 8)) * 50 + 128
    check_against_oracle(ro, queries, 12, "sqeuclidean", batch_size=128)
    # The same through np.save + np.load(mmap_mode="r").
    np.save(tmp_path / "b.npy", base)
    ro2 = np.load(tmp_path / "b.npy", mmap_mode="r")
    check_against_oracle(ro2, queries, 12, "inner_product", batch_size=100)


def test_knn_no_queries():
    d, i = brute_force_knn(np.ones((5, 3)), np.ones((0, 3)), 2)
    assert d.shape == i.shape == (0, 2)


def test_knn_errors():
    base = np.zeros((10, 4), dtype=np.float32)
    q = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"k \(11\).*number of base rows \(10\)"):
        brute_force_knn(base, q, 11)
    with pytest.raises(ValueError, match="k must be >= 1"):
        brute_force_knn(base, q, 0)
    with pytest.raises(ValueError, match="'sqeuclidean', 'euclidean', 'inner_product', 'cosine'.*'l1'"):
        brute_force_knn(base, q, 1, "l1")
    with pytest.raises(ValueError, match=r"same dimension as base \(4\)"):
        brute_force_knn(base, np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="base must be 2-D"):
        brute_force_knn(np.zeros(10), q, 1)
    with pytest.raises(TypeError, match="real numeric dtype"):
        brute_force_knn(base.astype(np.complex64), q, 1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        brute_force_knn(base, q, 1, batch_size=0)
    bad = base.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="base contains NaN"):
        brute_force_knn(bad, q, 1)


# --------------------------------------------------------------------------
# recall_at_k
# --------------------------------------------------------------------------

def test_recall_hand_made():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(truth, truth) == 1.0
    assert recall_at_k(np.array([[4, 3, 2, 1], [8, 7, 6, 5]]), truth) == 1.0
    assert recall_at_k(np.array([[1, 9, 9, 2], [0, 0, 0, 0]]), truth) == pytest.approx(2 / 8)
    # -1 means "no result" and never matches, even if truth is padded with -1.
    found = np.array([[1, -1, -1, -1], [5, 6, -1, -1]])
    assert recall_at_k(found, truth) == pytest.approx(3 / 8)
    assert recall_at_k(found, np.array([[1, -1, -1, -1], [5, 6, 7, 8]])) == pytest.approx(3 / 8)
    # k cuts both sides: found[:, :2] against truth[:, :2].
    assert recall_at_k(np.array([[2, 1, 0, 0], [6, 3, 5, 0]]), truth, k=2) == pytest.approx(3 / 4)
    # k defaults to found's width; truth may be wider (gt files hold 100).
    assert recall_at_k(np.array([[3], [9]]), truth) == pytest.approx(0.0)
    assert recall_at_k(np.array([[1], [5]]), truth) == 1.0
    # Repeated ids count once (set semantics).
    assert recall_at_k(np.array([[1, 1, 1, 1]]), truth[:1]) == pytest.approx(1 / 4)


def test_recall_matches_set_definition_and_is_fast():
    import time

    rng = np.random.default_rng(5)
    truth = np.stack([rng.permutation(1000)[:100] for _ in range(300)])
    found = rng.integers(-1, 1000, size=(300, 100))
    found[:, :50] = truth[:, 20:70]
    for k in (1, 10, 100):
        expected = np.mean([len(set(found[i, :k]) & set(truth[i, :k])) / k
                            for i in range(len(truth))])
        assert recall_at_k(found, truth, k) == pytest.approx(expected)
    big_truth = np.tile(truth, (34, 1))[:10000]
    big_found = np.tile(found, (34, 1))[:10000]
    start = time.perf_counter()
    recall_at_k(big_found, big_truth)
    assert time.perf_counter() - start < 2.0  # ~0.1 s; loose for slow CI


def test_recall_errors():
    t = np.zeros((3, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="same number of rows"):
        recall_at_k(t[:2], t)
    with pytest.raises(ValueError, match=r"k \(5\) must not exceed"):
        recall_at_k(t, t, k=5)
    with pytest.raises(TypeError, match="found must be an integer array"):
        recall_at_k(t.astype(float), t)
    with pytest.raises(ValueError, match="truth must be 2-D"):
        recall_at_k(t, t[0])


# --------------------------------------------------------------------------
# data set folders
# --------------------------------------------------------------------------

def make_folder(root, name="toy", gts=("l2", "ip")):
    folder = root / name
    folder.mkdir()
    rng = np.random.default_rng(6)
    base = rng.integers(0, 256, size=(50, 4), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(3, 4), dtype=np.uint8)
    np.save(folder / "base.npy", base)
    np.save(folder / "query.npy", queries)
    for tag in gts:
        metric = {"l2": "sqeuclidean", "ip": "inner_product", "cosine": "cosine"}[tag]
        d, i = brute_force_knn(base, queries, 10, metric)
        np.save(folder / f"gt_{tag}.npy", i.astype(np.int32))
        np.save(folder / f"gt_{tag}_dist.npy", d)
    return folder, base, queries


def test_load_dataset_dir(tmp_path):
    folder, base, queries = make_folder(tmp_path)
    ds = load_dataset_dir(folder)
    assert ds["name"] == "toy" and ds["metric"] == "sqeuclidean"
    assert isinstance(ds["base"], np.memmap)
    np.testing.assert_array_equal(ds["base"], base)
    np.testing.assert_array_equal(ds["queries"], queries)
    assert ds["gt"].dtype == np.int32 and ds["gt"].shape == (3, 10)
    assert ds["gt_dist"].shape == (3, 10)
    _, ids = brute_force_knn(ds["base"], ds["queries"], 10)
    np.testing.assert_array_equal(ids, ds["gt"])

    for asked, metric in [("ip", "inner_product"), ("inner_product", "inner_product"),
                          ("euclidean", "sqeuclidean"), ("l2", "sqeuclidean")]:
        ds = load_dataset_dir(str(folder), asked, mmap=False)
        assert ds["metric"] == metric and ds["gt"] is not None
        assert not isinstance(ds["base"], np.memmap)
    # Ground truth for a metric that is absent: None, not an error.
    ds = load_dataset_dir(folder, "cosine")
    assert ds["metric"] == "cosine" and ds["gt"] is None and ds["gt_dist"] is None


def test_load_dataset_dir_preference_and_no_gt(tmp_path):
    folder, _, _ = make_folder(tmp_path, "a", gts=("ip", "cosine"))
    assert load_dataset_dir(folder)["metric"] == "cosine"
    folder, _, _ = make_folder(tmp_path, "b", gts=())
    ds = load_dataset_dir(folder)
    assert ds["gt"] is None and ds["metric"] is None


def test_load_dataset_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset_dir(tmp_path / "nowhere")
    folder, _, _ = make_folder(tmp_path)
    with pytest.raises(ValueError, match="'l2', .*got 'manhattan'"):
        load_dataset_dir(folder, "manhattan")
    (folder / "query.npy").unlink()
    with pytest.raises(FileNotFoundError, match="query.npy"):
        load_dataset_dir(folder)
    np.save(folder / "query.npy", np.zeros((3, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="dimension 5 but base.npy has 4"):
        load_dataset_dir(folder)
    np.save(folder / "query.npy", np.zeros((2, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="gt_l2.npy.*integer ids of shape"):
        load_dataset_dir(folder)


def test_find_shared_dataset_env(tmp_path, monkeypatch):
    make_folder(tmp_path, "mine")
    monkeypatch.setenv("IVFSQ_DATA_DIR", str(tmp_path))
    assert find_shared_dataset("mine") == tmp_path / "mine"
    assert find_shared_dataset("surely-not-a-data-set") is None
    with pytest.raises(TypeError, match="name must be a str"):
        find_shared_dataset(3)
    with pytest.raises(ValueError, match="plain folder name"):
        find_shared_dataset("a/b")


def test_find_shared_dataset_from_cwd(tmp_path, monkeypatch):
    # shared/data/<name> next to (a parent of) the working directory.
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    make_folder(data, "cwd-only-set")
    work = tmp_path / "clone" / "sub"
    work.mkdir(parents=True)
    monkeypatch.delenv("IVFSQ_DATA_DIR", raising=False)
    monkeypatch.chdir(work)
    assert find_shared_dataset("cwd-only-set") == data / "cwd-only-set"


def test_siftsmall_ground_truth():
    folder = find_shared_dataset("siftsmall")
    if folder is None:
        pytest.skip("shared siftsmall data set not found")
    ds = load_dataset_dir(folder)
    assert ds["metric"] == "sqeuclidean" and ds["base"].dtype == np.uint8
    dist, ids = brute_force_knn(ds["base"], ds["queries"], 10, batch_size=4096)
    assert recall_at_k(ids, ds["gt"], 10) >= 0.999
    if ds["gt_dist"] is not None:
        np.testing.assert_allclose(dist, ds["gt_dist"][:, :10], rtol=1e-6)


def test_make_blobs_lowrank_writes_into_out(tmp_path):
    expected, queries = make_blobs_lowrank(70000, 16, n_queries=5, seed=3)
    mapped = np.lib.format.open_memmap(tmp_path / "base.npy", mode="w+", dtype=np.float32,
                                       shape=(70000, 16))
    base, same_queries = make_blobs_lowrank(70000, 16, n_queries=5, seed=3, out=mapped)
    assert base is mapped
    np.testing.assert_array_equal(np.load(tmp_path / "base.npy"), expected)
    np.testing.assert_array_equal(same_queries, queries)
    with pytest.raises(ValueError, match="out must be an array of shape"):
        make_blobs_lowrank(10, 16, out=np.empty((10, 15), np.float32))
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous"):
        make_blobs_lowrank(10, 16, out=np.empty((16, 10), np.float32).T)
