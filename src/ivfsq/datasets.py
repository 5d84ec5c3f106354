"""Data helpers for ivfsq: synthetic data, exact k-NN ground truth, recall,
and loading of the shared evaluation data sets.

Everything here is pure NumPy, so it imports without numba and can be used
to build ground truth for checking the index itself.

* :func:`make_blobs_lowrank` -- structured synthetic vectors with a low
  intrinsic dimension (clusters on a curved low-dimensional manifold), much
  closer to real embeddings or SIFT than uniform noise.
* :func:`brute_force_knn` -- exact k nearest neighbours by blocked GEMM with
  bounded memory (works on a memory-mapped base larger than RAM).
* :func:`recall_at_k` -- recall of found ids against ground-truth ids.
* :func:`load_dataset_dir` / :func:`find_shared_dataset` -- read a data set
  folder (``base.npy``, ``query.npy``, ``gt_<metric>.npy``).
* :func:`load_vectors` (``.npy``, TEXMEX ``.fvecs``/``.bvecs``/``.ivecs``,
  memory-mapped), :func:`read_ann_hdf5` (ann-benchmarks files, with the
  optional h5py) and :func:`load_data` (any of these, or a folder).

The functions live in :mod:`ivfsq.data` (one module per concern); this
module is their public home.
"""

from ivfsq.data.groundtruth import METRICS, brute_force_knn, recall_at_k  # noqa: F401
from ivfsq.data.loaders import (  # noqa: F401
    VECTOR_SUFFIXES,
    find_shared_dataset,
    load_data,
    load_dataset_dir,
    load_vectors,
    read_ann_hdf5,
    read_texmex,
)
from ivfsq.data.synthetic import make_blobs_lowrank

__all__ = [
    "make_blobs_lowrank",
    "brute_force_knn",
    "recall_at_k",
    "load_dataset_dir",
    "find_shared_dataset",
    "load_data",
    "load_vectors",
    "read_texmex",
    "read_ann_hdf5",
]
