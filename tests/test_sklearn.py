"""ivfsq.sklearn.IVFSQTransformer against scikit-learn's KNeighborsTransformer,
in pipelines, and scikit-learn's own estimator checks."""

import pickle

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.cluster import SpectralClustering  # noqa: E402
from sklearn.datasets import make_blobs, make_s_curve  # noqa: E402
from sklearn.manifold import TSNE, Isomap, trustworthiness  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402
from sklearn.neighbors import KNeighborsTransformer  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from ivfsq.datasets import make_blobs_lowrank  # noqa: E402
from ivfsq.sklearn import IVFSQTransformer  # noqa: E402

# Every list probed and exact re-ranking: the graph is the exact one.
EXACT = dict(reorder=True, n_probes=10_000)


@parametrize_with_checks([IVFSQTransformer(), IVFSQTransformer(
    mode="connectivity", quantizer="sq4", reorder=True)])
def test_sklearn_estimator_checks(estimator, check):
    # All of scikit-learn's checks that apply run; the array API check
    # skips itself unless SCIPY_ARRAY_API is set (the transformer takes
    # NumPy-convertible input).
    check(estimator)


@pytest.fixture(scope="module")
def data():
    base, queries = make_blobs_lowrank(3000, 24, n_queries=200, seed=5)
    return base, queries


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("mode", ["distance", "connectivity"])
def test_exact_settings_give_kneighborstransformers_graph(data, metric, mode):
    base, queries = data
    ours = IVFSQTransformer(n_neighbors=7, mode=mode, metric=metric, **EXACT).fit(base)
    theirs = KNeighborsTransformer(n_neighbors=7, mode=mode, metric=metric).fit(base)
    for X in (base, queries):
        got, want = ours.transform(X), theirs.transform(X)
        # float64, as scikit-learn's graph but for its float32 cosine one.
        assert got.format == "csr" and got.dtype == np.float64
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.data, want.data, rtol=1e-4, atol=1e-4)


def test_default_graph_is_close_and_full(data):
    base, _ = data
    graph = IVFSQTransformer(n_neighbors=10).fit_transform(base)
    exact = KNeighborsTransformer(n_neighbors=10).fit_transform(base)
    assert np.all(np.diff(graph.indptr) == 11)  # the sample itself and 10
    rows = graph.indices.reshape(-1, 11)
    want = exact.indices.reshape(-1, 11)
    recall = np.mean([len(set(a) & set(b)) / 11 for a, b in zip(rows, want)])
    assert recall > 0.9
    assert np.mean(rows[:, 0] == np.arange(len(base))) > 0.99  # itself first
    assert np.all(graph.data >= 0)


@pytest.mark.parametrize("target, reorder", [(0.8, False), (0.99, True)])
def test_auto_n_probes_is_the_fewest_that_reach_the_target(data, target, reorder):
    from ivfsq.ivf.tune import probe_counts

    base, _ = data
    transformer = IVFSQTransformer(n_neighbors=10, target_recall=target,
                                   reorder=reorder).fit(base)
    assert transformer.estimated_recall_ >= target
    chosen = transformer.n_probes_
    ladder = probe_counts(transformer.index_.n_lists)
    assert chosen in ladder
    if chosen > 1:
        fewer = ladder[ladder.index(chosen) - 1]
        below = IVFSQTransformer(n_neighbors=10, n_probes=fewer, reorder=reorder).fit(base)
        assert below.estimated_recall_ < target
    # The estimate is the recall of the graph's rows of the sample.
    graph = transformer.transform(base)
    exact = KNeighborsTransformer(n_neighbors=10).fit_transform(base)
    rows = graph.indices.reshape(-1, 11)
    want = exact.indices.reshape(-1, 11)
    recall = np.mean([len(set(a) & set(b)) / 11 for a, b in zip(rows, want)])
    assert abs(recall - transformer.estimated_recall_) < 0.03


@pytest.mark.parametrize("reorder, hint", [(False, "reorder=True"),
                                           (True, "a larger refine_ratio")])
def test_an_unreachable_target_searches_every_list_and_warns(data, reorder, hint):
    base, _ = data
    with pytest.warns(UserWarning, match=f"target_recall=1.0 is not reached.*{hint}"):
        transformer = IVFSQTransformer(n_neighbors=10, target_recall=1.0, quantizer="sq4",
                                       reorder=reorder, refine_ratio=1.0).fit(base)
    assert transformer.n_probes_ == transformer.index_.n_lists
    assert transformer.estimated_recall_ < 1.0


def test_rows_stay_full_when_the_probed_lists_are_short(data):
    base, queries = data
    transformer = IVFSQTransformer(n_neighbors=150, n_lists=64, n_probes=1).fit(base)
    graph = transformer.transform(queries)
    assert np.all(np.diff(graph.indptr) == 151)
    rows = graph.indices.reshape(-1, 151)
    assert rows.min() >= 0 and all(len(set(row)) == 151 for row in rows)


def test_isomap_pipeline_matches_the_exact_pipeline():
    X = make_s_curve(800, random_state=0)[0].astype(np.float32)
    ours = make_pipeline(IVFSQTransformer(n_neighbors=10, **EXACT),
                         Isomap(n_neighbors=10, metric="precomputed"))
    theirs = make_pipeline(KNeighborsTransformer(n_neighbors=10),
                           Isomap(n_neighbors=10, metric="precomputed"))
    got, want = ours.fit_transform(X), theirs.fit_transform(X)
    # Components are defined up to sign.
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-3, atol=1e-3)


def test_tsne_pipeline_keeps_neighbourhoods(data):
    base, _ = data
    X = base[:600]
    pipeline = make_pipeline(
        IVFSQTransformer(n_neighbors=31, metric="sqeuclidean"),
        TSNE(metric="precomputed", perplexity=10, init="random", max_iter=250,
             random_state=0))
    embedding = pipeline.fit_transform(X)
    assert embedding.shape == (600, 2)
    assert trustworthiness(X, embedding, n_neighbors=10) > 0.85


# Separate clusters give a graph of separate components, as they should.
@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_spectral_clustering_pipeline_finds_the_clusters():
    X, labels = make_blobs(n_samples=900, centers=4, n_features=12, cluster_std=1.0,
                           random_state=0)
    graph = IVFSQTransformer(n_neighbors=10, mode="connectivity").fit_transform(X)
    found = SpectralClustering(n_clusters=4, affinity="precomputed_nearest_neighbors",
                               n_neighbors=10, random_state=0).fit_predict(graph)
    assert adjusted_rand_score(labels, found) > 0.99


def test_n_jobs_follows_joblib(data):
    from ivfsq._threads import default_n_threads

    base, queries = data
    transformer = IVFSQTransformer(n_neighbors=4, n_jobs=1).fit(base)
    one = transformer.transform(queries)
    # The same index searched on every CPU gives the same graph.
    every = transformer.set_params(n_jobs=-1).transform(queries)
    np.testing.assert_array_equal(every.indices, one.indices)
    assert IVFSQTransformer(n_jobs=-1)._resources().n_threads == default_n_threads()
    assert IVFSQTransformer(n_jobs=-2)._resources().n_threads == max(1, default_n_threads() - 1)
    assert IVFSQTransformer(n_jobs=-100)._resources().n_threads == 1


def test_clone_params_and_pickle(data):
    base, queries = data
    transformer = IVFSQTransformer(n_neighbors=4, n_probes=8, quantizer="sq4")
    copy = clone(transformer).set_params(n_probes=3)
    assert copy.get_params()["n_probes"] == 3 and transformer.n_probes == 8
    assert copy.get_params()["quantizer"] == "sq4"
    transformer.fit(base)
    restored = pickle.loads(pickle.dumps(transformer))
    a, b = transformer.transform(queries), restored.transform(queries)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("params, message", [
    (dict(metric="inner_product"), "metric"),
    (dict(mode="weights"), "mode"),
    (dict(n_neighbors=0), "n_neighbors"),
    (dict(n_lists=5000), "n_lists"),
    (dict(quantizer="pq"), "quantizer"),
    (dict(n_jobs=0), "n_jobs"),
    (dict(n_probes="many"), "n_probes"),
    (dict(target_recall=1.5), "target_recall"),
])
def test_bad_parameters_name_themselves(data, params, message):
    with pytest.raises(ValueError, match=message):
        IVFSQTransformer(**params).fit(data[0])


def test_too_many_neighbours_and_wrong_width(data):
    base, queries = data
    transformer = IVFSQTransformer(n_neighbors=5, n_lists=4).fit(base[:5])
    with pytest.raises(ValueError, match="n_neighbors = 6, n_samples_fit = 5"):
        transformer.transform(queries)
    transformer.fit(base)
    with pytest.raises(ValueError, match="features"):
        transformer.transform(queries[:, :10])
