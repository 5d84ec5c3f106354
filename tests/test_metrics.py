"""The metric registry: its records and conversions against plain formulas."""

import numpy as np
import pytest

from ivfsq import metrics
from ivfsq.neighbors import ivf_sq


def test_registry_names_and_families():
    assert metrics.NAMES == ("sqeuclidean", "euclidean", "inner_product", "cosine")
    assert {metric.family for metric in metrics.METRICS.values()} == set(metrics.FAMILIES)
    assert metrics.of_family("l2").name == "sqeuclidean"
    with pytest.raises(ValueError, match="metric must be one of 'sqeuclidean'.*got 'l1'"):
        metrics.get("l1")
    with pytest.raises(ValueError, match="family must be one of"):
        metrics.of_family("hamming")


def test_every_registered_metric_is_accepted_by_the_index_params():
    for name in metrics.NAMES:
        assert ivf_sq.IndexParams(metric=name).metric == name


@pytest.mark.parametrize("name", metrics.NAMES)
def test_conversions_match_the_plain_formulas(name):
    metric = metrics.get(name)
    internal = np.array([-1e-6, 0.0, 0.25, 4.0], dtype=np.float32)
    public = metric.to_public(internal.copy())
    expected = {
        "sqeuclidean": np.maximum(internal, 0),
        "euclidean": np.sqrt(np.maximum(internal, 0)),
        "inner_product": -internal,
        "cosine": internal,
    }[name]
    np.testing.assert_array_equal(public, expected)
    # The sort key orders public distances as the internal ones are ordered.
    order = np.argsort(metric.sort_key(public[1:]), kind="stable")
    np.testing.assert_array_equal(order, np.argsort(internal[1:], kind="stable"))
    assert metric.pad_distance == (-np.inf if name == "inner_product" else np.inf)
    # A radius keeps exactly the internal distances whose public value is within it.
    for radius in (0.5, 2.0, -0.5):
        bound = metric.radius_to_internal(radius)
        kept = internal[1:] <= bound
        within = public[1:] >= radius if metric.higher_is_better else public[1:] <= radius
        np.testing.assert_array_equal(kept, within)


@pytest.mark.parametrize("name", metrics.NAMES)
def test_side_values(name):
    decoded = np.array([[3.0, 4.0], [0.0, 0.0]])
    values = metrics.get(name).side_values(decoded)
    expected = {"l2": [25.0, 0.0], "ip": [0.0, 0.0], "cosine": [0.2, 0.0]}
    np.testing.assert_allclose(values, expected[metrics.get(name).family])
