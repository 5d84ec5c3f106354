"""Transforms applied to vectors before quantization.

``rom``: a random orthogonal matrix ``R`` (float32, (dim, dim)). Rows are
rotated as ``x' = x @ R`` before clustering and quantization, and queries
the same way; ``x = x' @ R.T`` undoes it. An orthogonal rotation keeps L2
distances, inner products and norms, so search results are those of the
original space, while the variance of the data is spread evenly over the
dimensions (which helps a per-dimension or uniform scalar quantizer).

The matrix is drawn from a generator seeded by the index's ``seed`` (and a
fixed stream tag), so it is reproducible; it is also saved with the index.
"""

import numpy as np

from ivfsq._threads import default_n_threads, parallel_matmul

TRANSFORMS = ("rom",)
# Separates the rotation's random stream from the sampling / k-means stream.
_ROM_STREAM = 0x524F4D


def random_orthogonal(dim, seed):
    """A Haar-distributed random orthogonal matrix, float32 (dim, dim).

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q
    (Mezzadri 2007), computed in float64.
    """
    rng = np.random.default_rng([seed, _ROM_STREAM])
    gaussian = rng.standard_normal((dim, dim))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return np.ascontiguousarray((q * signs).astype(np.float32))


def rotate(vectors, rotation, n_threads=None):
    """``vectors @ rotation`` as a new float32 C-contiguous array."""
    n_threads = n_threads or default_n_threads()
    return parallel_matmul(np.asarray(vectors, dtype=np.float32), rotation, n_threads)


def unrotate(vectors, rotation, n_threads=None):
    """Undo :func:`rotate`: ``vectors @ rotation.T``."""
    n_threads = n_threads or default_n_threads()
    return parallel_matmul(np.asarray(vectors, dtype=np.float32), rotation.T, n_threads)
