"""The sharded and replicated index on a local Ray cluster, compared with
one ivfsq index built from the same trained codec."""

import time

import numpy as np
import pytest
from conftest import METRICS

ray = pytest.importorskip("ray")

from ivfsq import distributed  # noqa: E402
from ivfsq.datasets import make_blobs_lowrank  # noqa: E402
from ivfsq.neighbors import filters, ivf_sq  # noqa: E402

N_ROWS = 6000


@pytest.fixture(scope="module", autouse=True)
def cluster():
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    except Exception as error:  # pragma: no cover - depends on the machine
        pytest.skip(f"a local Ray cluster could not start: {error}")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    return make_blobs_lowrank(N_ROWS, 24, n_queries=60, seed=3)


def single_index(trained_bytes_path, base):
    """One ivfsq index with every vector, from the same trained codec."""
    index = ivf_sq.load(trained_bytes_path)
    return ivf_sq.extend(index, base, np.arange(base.shape[0]))


def assert_same(first, second):
    # Ids equal; distances up to float32 rounding (batches of a few queries
    # take the one-call path, whose constants are summed in another order).
    np.testing.assert_array_equal(first[1], second[1])
    scale = 1.0 + float(np.abs(second[0]).max())
    np.testing.assert_allclose(first[0], second[0], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("metric", METRICS)
def test_sharded_search_equals_one_index(data, tmp_path, metric):
    base, queries = data
    trained = distributed.train(ivf_sq.IndexParams(n_lists=24, metric=metric), base[:3000])
    ivf_sq.save(tmp_path / "trained.ivfsq", trained)
    index = distributed.ShardedIndex.create(trained, n_shards=3)
    # Parts of different kinds: an array, an object ref, a .npy path the
    # actor maps itself.
    parts = np.array_split(base, 3)
    np.save(tmp_path / "part2.npy", parts[2])
    distributed.extend(index, [parts[0], ray.put(parts[1]), str(tmp_path / "part2.npy")])
    assert len(index) == N_ROWS
    single = single_index(tmp_path / "trained.ivfsq", base)
    params = ivf_sq.SearchParams(n_probes=6)
    assert_same(distributed.search(params, index, queries, 10),
                ivf_sq.search(params, single, queries, 10))
    # Filters, and batches streamed a few queries at a time. A filter
    # keeping at least 90 % scans the same lists in every shard as in one
    # index: the same results.
    keep = np.ones(N_ROWS, dtype=bool)
    keep[np.random.default_rng(0).choice(N_ROWS, size=N_ROWS // 20, replace=False)] = False
    keep_filter = filters.from_bitset(keep)
    assert_same(distributed.search(params, index, queries, 7, filter=keep_filter, batch_size=7),
                ivf_sq.search(params, single, queries, 7, filter=keep_filter))
    # A more selective one: each shard walks its own lists as far as its
    # own kept rows need (see ivfsq.ivf.filtering), so the results are
    # kept ids and nearly the same as one index's, not identical.
    keep = np.random.default_rng(0).random(N_ROWS) < 0.5
    keep_filter = filters.from_bitset(keep)
    _, sharded = distributed.search(params, index, queries, 7, filter=keep_filter, batch_size=7)
    _, one = ivf_sq.search(params, single, queries, 7, filter=keep_filter)
    assert keep[sharded].all() and (sharded >= 0).all()
    assert np.mean([len(set(a) & set(b)) / 7 for a, b in zip(sharded, one)]) > 0.95
    # A bitmap (one keep-mask per query) goes to each batch's shards row by
    # row: every query gets only its kept ids, k of them.
    masks = np.random.default_rng(1).random((queries.shape[0], N_ROWS)) < 0.3
    _, found = distributed.search(params, index, queries, 7, filter=filters.from_bitmap(masks),
                                  batch_size=7)
    assert (found >= 0).all()
    assert all(masks[q, found[q]].all() for q in range(queries.shape[0]))


def test_replicated_mode_and_precise_stores(data, tmp_path):
    base, queries = data
    trained = distributed.train(ivf_sq.IndexParams(n_lists=24, quantizer="sq4",
                                                   transform="rom"), base[:3000])
    ivf_sq.save(tmp_path / "trained.ivfsq", trained)
    index = distributed.ShardedIndex.create(trained, n_shards=2, mode="replicated")
    distributed.extend(index, [base[:2500], base[2500:]])  # every part to every replica
    assert len(index) == N_ROWS
    single = single_index(tmp_path / "trained.ivfsq", base)
    params = ivf_sq.SearchParams(n_probes=5)
    # Batches alternate between the replicas; each gives the same answer.
    assert_same(distributed.search(params, index, queries, 10, batch_size=16),
                ivf_sq.search(params, single, queries, 10))


def test_extend_remove_save_load_and_a_dead_shard(data, tmp_path):
    base, queries = data
    trained = distributed.train(ivf_sq.IndexParams(n_lists=24), base[:3000])
    ivf_sq.save(tmp_path / "trained.ivfsq", trained)
    index = distributed.ShardedIndex.create(trained, n_shards=3)
    distributed.extend(index, np.array_split(base[:4500], 3))
    # Later vectors continue the ids; one array is routed over the shards.
    distributed.extend(index, base[4500:])
    assert len(index) == N_ROWS and index.next_id == N_ROWS
    removed = np.arange(0, N_ROWS, 5)
    assert distributed.remove(index, removed) == removed.shape[0]
    single = single_index(tmp_path / "trained.ivfsq", base)
    ivf_sq.remove(single, removed)
    params = ivf_sq.SearchParams(n_probes=24)
    expected = ivf_sq.search(params, single, queries, 10)
    assert_same(distributed.search(params, index, queries, 10), expected)
    assert not np.isin(expected[1], removed).any()

    distributed.save(index, tmp_path / "sharded")
    loaded = distributed.load(tmp_path / "sharded")
    assert len(loaded) == N_ROWS - removed.shape[0]
    assert_same(distributed.search(params, loaded, queries, 10), expected)

    # A dead actor: a clear error naming the shard; then that shard alone
    # is restored from its file.
    ray.kill(loaded._actors[1])
    # ray.kill returns before the actor is gone: wait until a call to it fails.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(loaded._actors[1].size.remote(), timeout=10)
        except ray.exceptions.RayError:
            break
        time.sleep(0.05)
    with pytest.raises(distributed.ShardError, match="shard 1 of 3 is unavailable"):
        distributed.search(params, loaded, queries, 10)
    distributed.restore_shard(loaded, 1, tmp_path / "sharded" / "shard-1.ivfsq")
    assert_same(distributed.search(params, loaded, queries, 10), expected)


def test_bad_input(data, tmp_path):
    base, queries = data
    trained = distributed.train(ivf_sq.IndexParams(n_lists=24), base[:3000])
    index = distributed.ShardedIndex.create(trained, n_shards=2)
    with pytest.raises(ValueError, match="one entry per shard"):
        distributed.extend(index, [base])
    with pytest.raises(ValueError, match="mode must be one of"):
        distributed.ShardedIndex.create(trained, n_shards=2, mode="mirrored")
    with pytest.raises(ValueError, match="queries must have shape"):
        distributed.search(ivf_sq.SearchParams(), index, queries[:, :5], 10)
    with pytest.raises(TypeError, match="index must be a distributed.ShardedIndex"):
        distributed.search(ivf_sq.SearchParams(), trained, queries, 10)
    with pytest.raises(ValueError, match="not a readable ivfsq.distributed manifest"):
        distributed.load(tmp_path)
    with pytest.raises(ValueError, match="shard must be < n_shards"):
        distributed.restore_shard(index, 5, tmp_path / "x.ivfsq")
