"""The metric registry: everything the library knows about a metric.

Internally every metric is a distance where smaller is better: squared L2
for ``sqeuclidean`` and ``euclidean``, the negated inner product for
``inner_product``, ``1 - cos`` for ``cosine``. A record says which score
the kernels compute (its *family*), how inputs are prepared, which per-row
side value the lists store, and how internal distances and radii convert
to and from the public ones. Adding a metric is adding its record here
(and a kernel case only when its family is new).

This module imports NumPy only, so light modules (data sets, file format)
can use it without numba.

>>> from ivfsq import metrics
>>> metrics.NAMES
('sqeuclidean', 'euclidean', 'inner_product', 'cosine')
>>> metric = metrics.get("inner_product")
>>> metric.family, metric.higher_is_better, metric.pad_distance
('ip', True, -inf)
>>> metric.radius_to_internal(0.5)
-0.5
"""

from dataclasses import dataclass

import numpy as np

# float32, as the distances: a Python float would be converted at each call.
_ZERO = np.float32(0.0)

__all__ = ["Metric", "METRICS", "NAMES", "FAMILIES", "get", "of_family"]

# The kernels' score cases: squared L2 (with the rows' squared norms), the
# negated inner product, and 1 - cos (with the rows' inverse norms).
FAMILIES = ("l2", "ip", "cosine")


@dataclass(frozen=True)
class Metric:
    """One metric: its kernel family and its conversions.

    Attributes
    ----------
    name : str
        The public name (``IndexParams(metric=...)``).
    family : {"l2", "ip", "cosine"}
        The score the kernels compute; also the tag of ground-truth files
        (``gt_<family>.npy``).
    normalized : bool
        Rows and queries are scaled to unit L2 norm before anything else
        (a zero row stays zero); their magnitudes are not limited.
    higher_is_better : bool
        Public distances are similarities, sorted descending.
    root : bool
        The public distance is the square root of the internal one.
    """

    name: str
    family: str
    normalized: bool = False
    higher_is_better: bool = False
    root: bool = False

    @property
    def by_inner_product(self):
        """Whether the coarse quantizer ranks lists by largest dot product
        (k-means and assignment included) rather than by L2 distance."""
        return self.family in ("ip", "cosine")

    @property
    def pad_distance(self):
        """The public distance of a missing result (id -1)."""
        return -np.inf if self.higher_is_better else np.inf

    def side_values(self, decoded):
        """The per-row value the lists store beside the codes, from the
        decoded rows (float64): squared norms for l2, inverse norms for
        cosine (0 for a zero row), zeros for ip."""
        sq_norms = np.einsum("ij,ij->i", decoded, decoded, dtype=np.float64)
        if self.family == "cosine":
            norms = np.sqrt(sq_norms)
            return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        if self.family == "ip":
            return np.zeros_like(sq_norms)
        return sq_norms

    def to_public(self, distances):
        """Internal distances to public ones, in place; returns the array.

        Squared L2 computed from expanded dots can round below zero: it is
        clamped at 0 (before the square root for ``euclidean``)."""
        if self.family == "l2":
            np.maximum(distances, _ZERO, out=distances)
            if self.root:
                np.sqrt(distances, out=distances)
        elif self.higher_is_better:
            np.negative(distances, out=distances)
        return distances

    def sort_key(self, distances):
        """Public distances as an ascending order key (a new array): the
        order of :meth:`to_public`'s input. Its own inverse."""
        return -distances if self.higher_is_better else distances.copy()

    def radius_to_internal(self, radius):
        """A public range-search radius as an internal bound (``<=``);
        a negative ``euclidean`` radius admits nothing."""
        if self.root:
            return radius * radius if radius >= 0 else -1.0
        return -radius if self.higher_is_better else radius


METRICS = {
    metric.name: metric
    for metric in (
        Metric("sqeuclidean", "l2"),
        Metric("euclidean", "l2", root=True),
        Metric("inner_product", "ip", higher_is_better=True),
        Metric("cosine", "cosine", normalized=True),
    )
}
NAMES = tuple(METRICS)


def get(name):
    """The record of metric ``name``; ValueError naming the choices."""
    metric = METRICS.get(name) if isinstance(name, str) else None
    if metric is None:
        raise ValueError(f"metric must be one of {', '.join(map(repr, NAMES))}, got {name!r}")
    return metric


def of_family(family):
    """The first registered metric of a kernel family (its canonical name)."""
    for metric in METRICS.values():
        if metric.family == family:
            return metric
    raise ValueError(f"family must be one of {', '.join(map(repr, FAMILIES))}, got {family!r}")
