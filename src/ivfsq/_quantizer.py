"""Scalar quantization: range training, encoding and decoding.

This module owns the code format. For ``sq8``:

* the range of each dimension is ``[min - margin, max + margin]`` over the
  training residuals, ``margin = 0.05 * (max - min)``;
* ``delta = (max - min + 2 * margin) / 255`` (``1`` where the range is zero);
* ``code = clamp(round((r - vmin) / delta), 0, 255)`` (round half up);
* decoding gives ``x_hat = c + (vmin + code * delta)``, the level itself.

Values outside the trained range (from ``extend``) are clamped.
"""

import numpy as np

from ivfsq._cpu import kernels

QUANTIZERS = ("sq8",)
SQ8_LEVELS = 255
SQ8_MARGIN = 0.05


class ScalarQuantizer:
    """Per-dimension scalar quantizer state (``vmin`` and ``delta``, float32)."""

    def __init__(self, kind, vmin, delta):
        self.kind = kind
        self.vmin = np.ascontiguousarray(vmin, dtype=np.float32)
        self.delta = np.ascontiguousarray(delta, dtype=np.float32)

    @property
    def dim(self):
        return self.vmin.shape[0]

    @property
    def code_size(self):
        """Bytes of code per vector."""
        return self.dim

    @classmethod
    def train(cls, kind, residuals):
        """Learn the per-dimension range from ``residuals`` (float32, (n, dim))."""
        if kind != "sq8":
            raise ValueError(f"quantizer must be one of {list(QUANTIZERS)}, got {kind!r}")
        low = residuals.min(axis=0).astype(np.float64)
        high = residuals.max(axis=0).astype(np.float64)
        span = high - low
        margin = SQ8_MARGIN * span
        vmin = low - margin
        delta = (span + 2.0 * margin) / SQ8_LEVELS
        delta[span == 0.0] = 1.0
        return cls(kind, vmin.astype(np.float32), delta.astype(np.float32))

    def encode(self, vectors, centers, labels):
        """Codes (uint8, (n, code_size)) and decoded vectors (float32) of rows.

        ``vectors`` are float32 C-contiguous; ``centers[labels[i]]`` is the
        reference each row is quantized against.
        """
        n_rows = vectors.shape[0]
        codes = np.empty((n_rows, self.code_size), dtype=np.uint8)
        decoded = np.empty((n_rows, self.dim), dtype=np.float32)
        kernels.encode_sq8(
            vectors,
            np.ascontiguousarray(centers, dtype=np.float32),
            np.ascontiguousarray(labels, dtype=np.int64),
            self.vmin,
            self.delta,
            codes,
            decoded,
        )
        return codes, decoded

    def decode(self, codes, centers, labels):
        """Decoded vectors ``c + (vmin + code * delta)`` in float32."""
        levels = codes.astype(np.float32)
        return centers[labels] + (self.vmin + levels * self.delta)

    def weights(self, queries):
        """Per-query weights ``q * delta`` of the scan's dot product."""
        return np.ascontiguousarray(queries * self.delta, dtype=np.float32)

    def offsets(self, queries):
        """Per-query constant ``q . vmin``."""
        return queries.astype(np.float64) @ self.vmin.astype(np.float64)

    def to_arrays(self):
        return {"sq_vmin": self.vmin, "sq_delta": self.delta}

    @classmethod
    def from_arrays(cls, kind, arrays):
        return cls(kind, arrays["sq_vmin"], arrays["sq_delta"])

    @property
    def nbytes(self):
        return self.vmin.nbytes + self.delta.nbytes
