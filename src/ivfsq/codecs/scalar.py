"""Scalar quantization: range training, encoding and decoding.

This module owns the code format. A quantizer maps each coordinate ``r`` of
a residual (or of a raw vector when ``by_residual=False``) to an integer
level ``code in [0, L]`` with ``L = 255`` (8 bits) or ``L = 15`` (4 bits):

* the range ``[lo, hi]`` of each dimension comes from the training sample by
  a range statistic (see :func:`train_range`); the ``*_uniform`` kinds use one
  range for all dimensions;
* ``vmin = lo``, ``delta = (hi - lo) / L`` (``1`` where the range is zero);
* ``code = clamp(round((r - vmin) / delta), 0, L)`` (round half up);
* decoding gives ``x_hat = c + (vmin + code * delta)``, the level itself
  (``c`` is the list's center, or 0 without residuals).

``minmax`` at 8 bits widens the range by a 5 % margin each side, as cuVS
does (values added later by ``extend`` beyond the sample's range are then
rarely clamped). At 4 bits every level counts, so no margin is added.

Code layout: 8-bit codes take one byte per dimension. 4-bit codes pack two
dimensions per byte, ``ceil(dim / 2)`` bytes per vector: dimension ``2j`` in
the low nibble of byte ``j`` and dimension ``2j + 1`` in its high nibble; for
an odd ``dim`` the last high nibble is 0. Values outside the trained range
are clamped.
"""

import numpy as np

from ivfsq._threads import run_chunks
from ivfsq.backends.cpu import kernels

# Queries per chunk when the weights are computed on several threads.
WEIGHTS_MIN_CHUNK = 256

RANGE_STATS = ("minmax", "quantile", "mse")
SQ8_MARGIN = 0.05
# Rows of the training sample used by the quantile and mse statistics.
STAT_ROWS = 65536
MSE_ROWS = 16384
# Two-sided clip fractions the mse statistic chooses from (0 is min/max).
MSE_CLIP_FRACTIONS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 5e-2)
DEFAULT_RANGE_QUANTILE = 0.001
# The smallest valid step: the smallest positive normal float32. A smaller
# one (subnormal or zero) makes the search weights ``q * delta`` underflow.
MIN_DELTA = float(np.finfo(np.float32).tiny)


def _strided_rows(values, n_rows):
    """At most ``n_rows`` rows of ``values``, evenly spread."""
    if values.shape[0] <= n_rows:
        return values
    step = -(-values.shape[0] // n_rows)
    return values[::step]


def _quantization_mse(values, lo, hi, levels):
    """Mean squared error per column of quantizing ``values`` to [lo, hi]."""
    span = hi - lo
    delta = np.where(span > 0, span / levels, 1.0)
    out = np.empty(values.shape[1], dtype=np.float64)
    # float32 values are widened inside the kernel (the same float64 sums).
    kernels.encode.quantization_mse(
        np.ascontiguousarray(values), np.ascontiguousarray(lo, np.float64),
        np.ascontiguousarray(delta, np.float64), float(levels), out,
    )
    return out


def _quantiles(columns, fractions):
    """Per-column quantiles (NumPy's default "linear" rule), one sort for all
    fractions: ``np.quantile`` with many fractions is much slower. Columns
    are sorted as contiguous rows of the transpose (faster than a strided
    sort along axis 0)."""
    ordered = np.sort(np.ascontiguousarray(columns.T), axis=1)
    positions = np.asarray(fractions) * (ordered.shape[1] - 1)
    below = np.floor(positions).astype(np.int64)
    above = np.minimum(below + 1, ordered.shape[1] - 1)
    weight = (positions - below)[:, None]
    low = ordered[:, below].T.astype(np.float64)
    high = ordered[:, above].T.astype(np.float64)
    return low * (1.0 - weight) + high * weight


def train_range(values, bits, range_stat, range_quantile, uniform):
    """``(lo, hi)`` float64 arrays (one per column) of the quantization range.

    ``values``: (n, dim) float32. ``minmax``: the extremes (with the 5 %
    margin at 8 bits). ``quantile``: the ``range_quantile`` and
    ``1 - range_quantile`` quantiles. ``mse``: per column (or globally when
    ``uniform``), the symmetric quantile clip among ``MSE_CLIP_FRACTIONS``
    that minimises the quantization error on the sample.
    """
    levels = (1 << bits) - 1
    dim = values.shape[1]
    if range_stat == "minmax":
        if uniform:
            lo = np.full(dim, float(values.min()))
            hi = np.full(dim, float(values.max()))
        else:
            lo = values.min(axis=0).astype(np.float64)
            hi = values.max(axis=0).astype(np.float64)
        if bits == 8:
            margin = SQ8_MARGIN * (hi - lo)
            lo, hi = lo - margin, hi + margin
        return lo, hi
    # Sorted and scanned in float32 (the values' own precision; quantiles and
    # errors are computed in float64 from them): half the memory traffic.
    if range_stat == "quantile":
        stat_values = np.ascontiguousarray(_strided_rows(values, STAT_ROWS))
        fractions = [range_quantile]
    else:
        # The MSE_ROWS rows of the STAT_ROWS ones (same rows, same ranges).
        stat_values = _strided_rows(_strided_rows(values, STAT_ROWS), MSE_ROWS)
        stat_values = np.ascontiguousarray(stat_values)
        fractions = MSE_CLIP_FRACTIONS
    columns = stat_values.reshape(-1, 1) if uniform else stat_values
    fractions = np.asarray(fractions, dtype=np.float64)
    bounds = _quantiles(columns, np.concatenate([fractions, 1.0 - fractions]))
    los, his = bounds[: len(fractions)], bounds[len(fractions) :]
    if len(fractions) == 1:
        lo, hi = los[0], his[0]
    else:
        errors = np.stack(
            [_quantization_mse(columns, lo, hi, levels) for lo, hi in zip(los, his)]
        )
        best = np.argmin(errors, axis=0)  # the first (widest) clip wins ties
        columns_index = np.arange(best.shape[0])
        lo, hi = los[best, columns_index], his[best, columns_index]
    if uniform:
        lo, hi = np.full(dim, lo[0]), np.full(dim, hi[0])
    return lo, hi


class ScalarQuantizer:
    """Scalar quantizer state: ``vmin`` and ``delta`` per dimension (float32).

    ``spec`` is its registry entry (:class:`ivfsq.codecs.CodecKind`): the
    bits per code and whether the ranges are uniform, in which case every
    dimension holds the same values.
    """

    SECTIONS = ("sq_vmin", "sq_delta")

    def __init__(self, spec, vmin, delta):
        self.spec = spec
        self.kind = spec.name
        self.bits = spec.bits
        self.vmin = np.ascontiguousarray(vmin, dtype=np.float32)
        self.delta = np.ascontiguousarray(delta, dtype=np.float32)
        # Where the AVX2 dots can run these codes (IVFSQ_INT_DOTS aside).
        self._int_weights_if_on = kernels.simd.n_int_weights(self.bits, self.code_size)

    @property
    def dim(self):
        return self.vmin.shape[0]

    @staticmethod
    def code_size_of(bits, dim):
        """Bytes of code per vector: ``dim`` (8 bits) or ``ceil(dim / 2)`` (4 bits)."""
        return dim if bits == 8 else (dim + 1) // 2

    @property
    def code_size(self):
        return self.code_size_of(self.bits, self.dim)

    @classmethod
    def train(cls, spec, values, range_stat, range_quantile=DEFAULT_RANGE_QUANTILE):
        """Learn the ranges from ``values`` (float32, (n, dim)), e.g. residuals."""
        bits = spec.bits
        lo, hi = train_range(values, bits, range_stat, range_quantile, spec.uniform)
        step = (hi - lo) / ((1 << bits) - 1)
        # A step that is not a normal float32 (zero range, or one so narrow
        # that the step underflows) is 1: every value of such a dimension
        # then has one level, and the state passes check_state.
        delta = np.where(step >= MIN_DELTA, step, 1.0)
        return cls(spec, lo.astype(np.float32), delta.astype(np.float32))

    def encode(self, vectors, centers, labels):
        """Codes (uint8, (n, code_size)) and decoded vectors (float32) of rows.

        ``vectors`` are float32 C-contiguous; ``centers[labels[i]]`` is the
        reference each row is quantized against.
        """
        n_rows = vectors.shape[0]
        codes = np.zeros((n_rows, self.code_size), dtype=np.uint8)
        decoded = np.empty((n_rows, self.dim), dtype=np.float32)
        kernels.encode.encode_sq(
            vectors,
            np.ascontiguousarray(centers, dtype=np.float32),
            np.ascontiguousarray(labels, dtype=np.int64),
            self.vmin,
            self.delta,
            self.bits,
            codes,
            decoded,
        )
        return codes, decoded

    def unpack(self, codes):
        """Integer levels (uint8, (n, dim)) of packed codes."""
        if self.bits == 8:
            return codes
        levels = np.empty((codes.shape[0], 2 * codes.shape[1]), dtype=np.uint8)
        levels[:, 0::2] = codes & 0x0F
        levels[:, 1::2] = codes >> 4
        return levels[:, : self.dim]

    def decode(self, codes, centers, labels):
        """Decoded vectors ``c + (vmin + code * delta)`` in float32."""
        levels = self.unpack(codes).astype(np.float32)
        return centers[labels] + (self.vmin + levels * self.delta)

    def weights(self, queries, n_threads=1):
        """Per-query weights of the scan's dot product, laid out for the codes.

        8 bits: ``q * delta``. 4 bits: the weights of the low nibbles (even
        dimensions) then those of the high nibbles (odd dimensions), each
        ``code_size`` long, zero for the padding dimension of an odd ``dim``.
        """
        n_weights = self.dim if self.bits == 8 else 2 * self.code_size
        out = np.zeros((queries.shape[0], n_weights), dtype=np.float32)

        def task(start, stop):
            kernels.encode.query_weights(
                queries[start:stop], self.delta, self.bits, self.code_size, out[start:stop]
            )

        run_chunks(task, queries.shape[0], n_threads, min_chunk=WEIGHTS_MIN_CHUNK,
                   chunks_per_thread=1)
        return out

    @property
    def n_int_weights(self):
        """Integer weights per query of the scan filter, 0 when it is off.

        It is on where :mod:`ivfsq.backends.cpu.kernels.simd` has its AVX2 dots and a code
        row holds at least one chunk: ``dim >= 16`` for 8-bit codes (int16
        weights), ``dim >= 64`` for 4-bit codes (int8 weights, or int16 ones
        where the search plan says so: :mod:`ivfsq.ivf.planner`).
        """
        return self._int_weights_if_on if kernels.simd.HAS_INT_DOTS else 0

    def int_weights_buffer(self, n_queries, enabled=True, wide=False):
        """Integer weights for ``n_queries`` queries, not initialized: the
        kernels write every one (no columns when the filter is off or not
        ``enabled``). ``wide``: int16 weights for 4-bit codes (8-bit codes
        always take int16 ones)."""
        dtype = kernels.simd.weight_dtype(self.bits, wide)
        n_columns = self.n_int_weights * kernels.simd.n_planes(self.bits, dtype) if enabled else 0
        return np.empty((n_queries, n_columns), dtype=dtype)

    def int_weights(self, weights, enabled=True, n_threads=1, wide=False):
        """The integer filter's weights and ``kernels.common.INT_PARAMS`` values per
        query (scale, error bound above, error bound below, the other planes'
        scales), from :meth:`weights`' output; arrays with no columns when it
        is off (or not ``enabled`` by the caller). ``wide`` as in
        :meth:`int_weights_buffer`."""
        n_queries = weights.shape[0]
        out = self.int_weights_buffer(n_queries, enabled, wide)
        params = np.zeros((n_queries, kernels.common.INT_PARAMS), dtype=np.float32)
        if out.shape[1]:
            def task(start, stop):
                rows = slice(start, stop)
                kernels.encode.query_int_weights(
                    weights[rows], self.bits, self.code_size, out[rows], params[rows]
                )

            run_chunks(task, n_queries, n_threads, min_chunk=WEIGHTS_MIN_CHUNK,
                       chunks_per_thread=1)
        return out, params

    def to_arrays(self):
        """The file sections (:attr:`SECTIONS`) of this codec."""
        return {"sq_vmin": self.vmin, "sq_delta": self.delta}

    def mismatch(self, other):
        """Why rows coded by ``other`` cannot be mixed with this codec's (a
        description), or None when they can: the same kind and ranges."""
        if self.kind != other.kind:
            return "a different quantizer"
        for what, mine, theirs in (("vmin", self.vmin, other.vmin),
                                   ("delta", self.delta, other.delta)):
            if not np.array_equal(mine, theirs):
                return f"different quantizer ranges ({what}) (it was trained separately)"
        return None

    @classmethod
    def from_arrays(cls, spec, arrays, dim=None):
        """The quantizer of :meth:`to_arrays`' output, checked: raises
        ValueError naming what is wrong (see :meth:`check_state`)."""
        kind = spec.name
        for name in cls.SECTIONS:
            array = arrays.get(name)
            if array is None:
                raise ValueError(f"the {kind} quantizer needs an array {name!r}")
            # Checked before the constructor, which would convert silently.
            if array.dtype != np.float32 or array.ndim != 1:
                raise ValueError(
                    f"quantizer array {name!r} must be float32 (dim,), found {array.dtype} "
                    f"{array.shape}"
                )
        quantizer = cls(spec, arrays["sq_vmin"], arrays["sq_delta"])
        quantizer.check_state(dim)
        return quantizer

    def check_state(self, dim=None):
        """Raise ValueError naming the first broken invariant of a valid
        state: ``vmin`` and ``delta`` float32 of shape ``(dim,)``; ``vmin``
        finite; ``delta`` finite and at least :data:`MIN_DELTA` (a positive
        normal float32: search weights are ``q * delta`` and encoding
        divides by it); the ``*_uniform`` kinds hold one
        ``vmin`` and one ``delta`` in every dimension."""
        dim = self.dim if dim is None else dim
        for name, array in (("vmin", self.vmin), ("delta", self.delta)):
            if array.dtype != np.float32 or array.shape != (dim,):
                raise ValueError(
                    f"quantizer {name} must be float32 ({dim},), found {array.dtype} "
                    f"{array.shape}"
                )
        for what, name, array in (("minimum", "vmin", self.vmin), ("step", "delta", self.delta)):
            bad = ~np.isfinite(array)
            if bad.any():
                where = int(np.argmax(bad))
                raise ValueError(
                    f"quantizer {what} ({name}) must be finite, got {array[where]} in "
                    f"dimension {where}"
                )
        small = ~(self.delta >= MIN_DELTA)
        if small.any():
            where = int(np.argmax(small))
            raise ValueError(
                f"quantizer step (delta) must be > 0 and at least {MIN_DELTA:.3g} (a normal "
                f"float32), got {self.delta[where]:.3g} in dimension {where}"
            )
        if self.spec.uniform:
            for name, array in (("vmin", self.vmin), ("delta", self.delta)):
                differs = array != array[0]
                if differs.any():
                    where = int(np.argmax(differs))
                    raise ValueError(
                        f"a {self.kind} quantizer must hold one {name} in every dimension, "
                        f"got {array[0]} in dimension 0 and {array[where]} in dimension {where}"
                    )

    def check_codes(self, codes):
        """Raise ValueError unless ``codes`` are codes of this quantizer:
        uint8, ``(n, code_size)`` (``dim`` bytes at 8 bits, ``ceil(dim / 2)``
        at 4), and for 4 bits and an odd ``dim`` the padding nibble (the
        last byte's high half) 0."""
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise ValueError(
                f"codes of a {self.kind} quantizer of dim {self.dim} must be uint8 "
                f"(n, {self.code_size}), found {codes.dtype} {codes.shape}"
            )
        if self.bits == 4 and self.dim % 2 and codes.shape[0]:
            padded = (codes[:, -1] >> 4) != 0
            if padded.any():
                raise ValueError(
                    f"the padding nibble of 4-bit codes (high half of the last byte, dim "
                    f"{self.dim} is odd) must be 0, got {int(codes[np.argmax(padded), -1] >> 4)} "
                    f"in row {int(np.argmax(padded))}"
                )

    @property
    def nbytes(self):
        return self.vmin.nbytes + self.delta.nbytes
