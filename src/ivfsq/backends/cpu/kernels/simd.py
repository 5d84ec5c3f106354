"""Integer dot products of code rows with integer query weights (AVX2).

The scan's float kernels convert every code to float32 and run one fused
multiply-add per dimension and query. AVX2 has integer multiply-adds that
do more per instruction:

- 4-bit codes: ``vpmaddubsw`` multiplies 32 unsigned bytes by 32 signed
  bytes and adds adjacent pairs into 16-bit lanes, four times the work of one
  8-lane FMA. Codes (at most 15) times int8 weights in [-127, 127] add up to
  at most 3,810 per pair: no saturation. ``vpmaddwd`` against ones then
  widens the pairs into 32-bit accumulators.
  On short rows (``SQ4_WIDE_MAX_CODE_BYTES``) the weights are int16
  instead: 32 code bytes are read as sixteen 16-bit lanes, whose four
  nibbles shifts and masks set apart, and ``vpmaddwd`` multiplies them:
  twice the multiplies, but a bound as tight as the 8-bit codes' (up to
  15-bit weights).
- 8-bit codes: 16 bytes are zero-extended to 16-bit lanes and ``vpmaddwd``
  multiplies them by int16 weights, adding pairs into 32-bit lanes (twice the
  work of one FMA, with no int -> float conversions). The weights have up to
  15 bits: at most ``(2**31 - 1) // (255 * code_size)`` in magnitude, so no
  32-bit sum can overflow (:func:`sq8_weight_limit`).

The integer dot is a filter: the kernels in :mod:`ivfsq.backends.cpu.kernels`
bound its error and score exactly every vector that the bound cannot rule
out: with the float weights, or, for 4-bit codes with int8 weights, with
two more integer dots against the weights' rounding residuals
(:data:`SQ4_PLANES`). Search results do not depend on which path ran, up to
float32 rounding.

numba has no vector types, so the loops are written in LLVM IR through
``numba.extending.intrinsic``. They are compiled only on x86-64 CPUs with
AVX2 (when numba targets the host CPU, or a CPU name with ``+avx2``
features); elsewhere :data:`HAS_INT_DOTS` is false and the same names are
plain numba loops, so that kernels referring to them still compile, though
the scan then never calls them. ``IVFSQ_INT_DOTS=0`` turns the integer path
off (without changing the compiled code). numba's disk cache of the
kernels that call these is keyed on every file of this package (see
:mod:`ivfsq._numba_cache`), so editing the IR here recompiles them.

Layout of the weights (one row per query, ``n_chunks * WEIGHTS_PER_CHUNK``
weights of dtype :func:`weight_dtype`): a code row of ``code_size >=
CHUNK_BYTES`` bytes is read in ``n_chunks = ceil(code_size / CHUNK_BYTES)``
chunks; chunk ``c`` starts at byte ``min(CHUNK_BYTES c, code_size -
CHUNK_BYTES)``, so the last one may overlap the one before it, and the
weights of the bytes it re-reads are zero. For 4-bit codes a chunk is 32
bytes with 64 weights: int8 ones are those of the 32 low nibbles then those
of the 32 high nibbles; int16 ones come in four groups of 16, the low
nibbles of the chunk's even bytes (0, 2, ..., 30), their high nibbles, the
low nibbles of its odd bytes, their high nibbles (the order in which a
16-bit lane ``byte[2t] + 256 byte[2t + 1]`` yields them). For 8-bit codes a
chunk is 16 bytes with 16 int16 weights.

Besides one row against one query's weights (``dot_*``) there are one row
against four queries' (``dots4_*``, the list-major scan) and four
consecutive rows against one query's (``dots_4rows_*``, the per-query scan
of short rows: each weight is loaded once for the four, and the four sums
reduced together).
With int8 weights for 4-bit codes, a row holds :data:`SQ4_PLANES` such
layouts one after the other (:func:`n_planes`).
"""

import os
import platform

import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.extending import intrinsic

# Plain ints as well as the tables: numba kernels read module-level ints.
SQ4_CHUNK_BYTES = 32
SQ8_CHUNK_BYTES = 16
CHUNK_BYTES = {4: SQ4_CHUNK_BYTES, 8: SQ8_CHUNK_BYTES}
WEIGHTS_PER_CHUNK = {4: 2 * SQ4_CHUNK_BYTES, 8: SQ8_CHUNK_BYTES}
# Largest |weight| that cannot saturate vpmaddubsw's 16-bit pair sums.
SQ4_WEIGHT_LIMIT = 127
# 8-bit codes: int16 weights, and no 32-bit sum of code_size products of a
# code (at most 255) and a weight may overflow; below 255 levels the filter
# is too coarse to pay (code rows past 33,000 bytes).
SQ8_MAX_WEIGHT_LIMIT = 32767
SQ8_MIN_WEIGHT_LIMIT = 255
# 4-bit codes with int8 weights: each query's float weights ``w`` are split
# into this many int8 planes, ``w ~ s1 W1 + s2 W2 + s3 W3``, each plane the
# rounded residual of the ones before it (see encode.int_weights_row).
# The first is the filter's; the exact score of a row it lets through is
# ``s1 (W1 . u) + s2 (W2 . u) + s3 (W3 . u)``, summed in float64: two more
# integer dots instead of a float one, which costs more than both. It is
# within float32 rounding of ``w . u``: each
# plane's step is 1/254 of the one before, and the last residual is about
# ``max|w| / 2**24``.
SQ4_PLANES = 3


# 4-bit codes take int8 weights by default. On rows of at most this many
# bytes they may take int16 ones instead (the nibbles widened to 16-bit
# lanes for ``vpmaddwd``): twice the multiplies of ``vpmaddubsw``, but a
# bound as tight as the 8-bit codes'. On longer rows the extra multiplies
# cost more than the tighter bound saves (the dated benchmark pages have the
# runs). Whether an index takes them is estimated on its own data
# (``IvfSqEngine.sq4_int16_pays``), and the search plan carries the choice.
SQ4_WIDE_MAX_CODE_BYTES = 64


def weight_dtype(bits, wide=False):
    """dtype of the integer weights: int16 for 8-bit codes, int8 for 4-bit
    ones (int16 where ``wide``)."""
    return np.dtype(np.int16 if bits == 8 or wide else np.int8)


def _sq4_wide_weight_limit(code_size):
    """Largest |int16 weight| for 4-bit code rows of ``code_size`` bytes:
    no 32-bit sum of ``2 code_size`` products of a nibble (at most 15) and a
    weight may overflow."""
    return min(SQ8_MAX_WEIGHT_LIMIT, 2147483647 // (30 * code_size))


sq4_wide_weight_limit = njit(inline="always")(_sq4_wide_weight_limit)


def _sq8_weight_limit(code_size):
    """Largest |int16 weight| for 8-bit code rows of ``code_size`` bytes."""
    return min(SQ8_MAX_WEIGHT_LIMIT, 2147483647 // (255 * code_size))


sq8_weight_limit = njit(inline="always")(_sq8_weight_limit)  # for the kernels


def weight_limit(bits, code_size, dtype=None):
    """Largest |integer weight| of the filter for these codes (with weights
    of ``dtype``, by default :func:`weight_dtype`'s)."""
    if dtype is None:
        dtype = weight_dtype(bits)
    if bits == 4:
        if np.dtype(dtype).itemsize == 1:
            return SQ4_WEIGHT_LIMIT
        return _sq4_wide_weight_limit(code_size)
    return _sq8_weight_limit(code_size)


def n_planes(bits, dtype):
    """Planes of integer weights per query: :data:`SQ4_PLANES` for 4-bit
    codes with int8 weights, else 1."""
    return SQ4_PLANES if bits == 4 and np.dtype(dtype).itemsize == 1 else 1


def n_int_weights(bits, code_size):
    """Integer weights per query and plane (:func:`n_planes`) for these
    codes, 0 where the AVX2 dots cannot run them (rows shorter than one
    chunk, or too long for 8 bits)."""
    if code_size < CHUNK_BYTES[bits]:
        return 0
    if bits == 8 and _sq8_weight_limit(code_size) < SQ8_MIN_WEIGHT_LIMIT:
        return 0
    return -(-code_size // CHUNK_BYTES[bits]) * WEIGHTS_PER_CHUNK[bits]


def _target_has_avx2():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if config.CPU_NAME is not None and config.CPU_NAME != "host":
        return "+avx2" in (config.CPU_FEATURES or "")
    try:
        from llvmlite import binding

        return bool(binding.get_host_cpu_features().get("avx2", False))
    except Exception:  # feature query unavailable: stay on the float path
        return False


# Which code the dots compile to depends on the CPU only (numba's disk cache
# of the kernels is keyed on the CPU); the environment switch only decides
# whether the scans use them. Were it to pick the code too, a kernel cached
# in a run with IVFSQ_INT_DOTS=0 would bring the portable loops into later
# runs that use the filter (and make their SQ4 batches much slower).
HAS_AVX2_DOTS = _target_has_avx2()
HAS_INT_DOTS = os.environ.get("IVFSQ_INT_DOTS", "1") != "0" and HAS_AVX2_DOTS

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V16I8 = ir.VectorType(_I8, 16)
_V32I8 = ir.VectorType(_I8, 32)
_V16I16 = ir.VectorType(_I16, 16)
_V8I32 = ir.VectorType(_I32, 8)
_V4I32 = ir.VectorType(_I32, 4)


def _declare(module, name, return_type, arg_types):
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(return_type, arg_types), name=name)


def _const(value):
    return ir.Constant(_I64, value)


def _row_dots_ir(n_queries, bits, at_column=False, n_rows=1):
    """An intrinsic ``f(codes, row, weights, queries, n_chunks)``: the int32
    dots of code row ``row`` with weight rows ``queries`` (an int, or a tuple
    of ``n_queries`` ints). ``at_column``: one more argument, the column of
    the weight rows where the weights start (a plane past the first).
    ``n_rows`` > 1 (with one query): the dots of rows ``row .. row + n_rows
    - 1`` with weight row ``queries`` (an int), a tuple."""
    nibbles = bits == 4
    n_members = max(n_queries, n_rows)
    chunk_bytes = CHUNK_BYTES[bits]
    weights_per_chunk = WEIGHTS_PER_CHUNK[bits]

    def codegen(context, builder, signature, args):
        codes_value, row, weights_value, queries, n_chunks = args[:5]
        # 4-bit codes take int8 weights (vpmaddubsw) or int16 ones (the
        # nibbles widened to 16-bit lanes, vpmaddwd): see SQ4_WIDE_MAX_CODE_BYTES.
        wide_nibbles = nibbles and signature.args[2].dtype.bitwidth == 16
        weight_type = _I8 if nibbles and not wide_nibbles else _I16
        module = builder.module
        pmaddubsw = _declare(module, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8])
        pmaddwd = _declare(module, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16])
        codes = context.make_array(signature.args[0])(context, builder, codes_value)
        weights = context.make_array(signature.args[2])(context, builder, weights_value)
        code_size = builder.extract_value(codes.shape, 1)
        row_stride = builder.extract_value(codes.strides, 0)
        row_bases = [
            builder.gep(
                builder.bitcast(codes.data, _I8.as_pointer()),
                [builder.mul(builder.add(row, _const(member)), row_stride)],
            )
            for member in range(n_rows)
        ]
        # Row strides are in bytes: the bases are byte pointers, cast per load.
        weights_data = builder.bitcast(weights.data, _I8.as_pointer())
        weights_stride = builder.extract_value(weights.strides, 0)
        weight_bases = []
        for member in range(n_queries):
            query = builder.extract_value(queries, member) if n_queries > 1 else queries
            base = builder.gep(weights_data, [builder.mul(query, weights_stride)])
            base = builder.bitcast(base, weight_type.as_pointer())
            if at_column:
                base = builder.gep(base, [args[5]])
            weight_bases.append(base)
        last_offset = builder.sub(code_size, _const(chunk_bytes))
        last_chunk = builder.sub(n_chunks, _const(1))
        ones = ir.Constant(_V16I16, [1] * 16)
        low_mask = ir.Constant(_V32I8, [15] * 32)
        four = ir.Constant(_V32I8, [4] * 32)
        wide_mask = ir.Constant(_V16I16, [15] * 16)
        wide_shifts = [ir.Constant(_V16I16, [shift] * 16) for shift in (4, 8, 12)]

        entry = builder.block
        loop = builder.append_basic_block("dots.loop")
        body = builder.append_basic_block("dots.body")
        done = builder.append_basic_block("dots.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        chunk = builder.phi(_I64)
        chunk.add_incoming(_const(0), entry)
        sums = []
        for _ in range(n_members):
            total = builder.phi(_V8I32)
            total.add_incoming(ir.Constant(_V8I32, [0] * 8), entry)
            sums.append(total)
        builder.cbranch(builder.icmp_signed("<", chunk, n_chunks), body, done)

        builder.position_at_end(body)
        offset = builder.select(
            builder.icmp_signed("==", chunk, last_chunk),
            last_offset,
            builder.mul(chunk, _const(chunk_bytes)),
        )
        weight_offset = builder.mul(chunk, _const(weights_per_chunk))
        new_sums = []
        for member in range(n_members):
            code_pointer = builder.gep(row_bases[min(member, n_rows - 1)], [offset])
            pointer = builder.gep(weight_bases[min(member, n_queries - 1)], [weight_offset])
            # (Where members share their codes or weights, LLVM loads them once.)
            if wide_nibbles:
                # Lane t holds bytes 2t and 2t + 1: its low 4 bits are the
                # low nibble of byte 2t, and so on (the weights' order).
                lanes = builder.load(builder.bitcast(code_pointer, _V16I16.as_pointer()), align=1)
                nibble_lanes = [
                    builder.and_(lanes, wide_mask),
                    builder.and_(builder.lshr(lanes, wide_shifts[0]), wide_mask),
                    builder.and_(builder.lshr(lanes, wide_shifts[1]), wide_mask),
                    builder.lshr(lanes, wide_shifts[2]),
                ]
                products = None
                for part, part_lanes in enumerate(nibble_lanes):
                    part_pointer = builder.gep(pointer, [_const(16 * part)])
                    part_weights = builder.load(
                        builder.bitcast(part_pointer, _V16I16.as_pointer()), align=2
                    )
                    part_products = builder.call(pmaddwd, [part_lanes, part_weights])
                    products = (part_products if products is None
                                else builder.add(products, part_products))
            elif nibbles:
                packed = builder.load(builder.bitcast(code_pointer, _V32I8.as_pointer()), align=1)
                low = builder.and_(packed, low_mask)
                high = builder.lshr(packed, four)
                first = builder.load(builder.bitcast(pointer, _V32I8.as_pointer()), align=1)
                pointer = builder.gep(pointer, [_const(chunk_bytes)])
                second = builder.load(builder.bitcast(pointer, _V32I8.as_pointer()), align=1)
                pairs = builder.add(
                    builder.call(pmaddubsw, [low, first]), builder.call(pmaddubsw, [high, second])
                )
                products = builder.call(pmaddwd, [pairs, ones])
            else:
                packed = builder.load(builder.bitcast(code_pointer, _V16I8.as_pointer()), align=1)
                lanes = builder.load(builder.bitcast(pointer, _V16I16.as_pointer()), align=2)
                products = builder.call(pmaddwd, [builder.zext(packed, _V16I16), lanes])
            new_sums.append(builder.add(sums[member], products))
        chunk.add_incoming(builder.add(chunk, _const(1)), body)
        for total, new in zip(sums, new_sums):
            total.add_incoming(new, body)
        builder.branch(loop)

        builder.position_at_end(done)
        if n_members == 1:
            # LLVM's reduction intrinsic: a shuffle tree (the lane-by-lane
            # extracts it replaced compiled to about twice the instructions).
            reduce_add = _declare(module, "llvm.vector.reduce.add.v8i32", _I32, [_V8I32])
            return builder.call(reduce_add, [sums[0]])
        # Four sums reduced together: two rounds of pairwise adds
        # (vphaddd) leave each sum's two halves in lanes m and m + 4.
        phadd = _declare(module, "llvm.x86.avx2.phadd.d", _V8I32, [_V8I32, _V8I32])
        pairs = builder.call(phadd, [builder.call(phadd, [sums[0], sums[1]]),
                                     builder.call(phadd, [sums[2], sums[3]])])
        halves = [builder.shuffle_vector(pairs, pairs, ir.Constant(_V4I32, list(lanes)))
                  for lanes in ((0, 1, 2, 3), (4, 5, 6, 7))]
        totals = builder.add(halves[0], halves[1])
        results = [builder.extract_element(totals, _const(member))
                   for member in range(n_members)]
        return context.make_tuple(builder, signature.return_type, results)

    if n_members not in (1, 4) or min(n_queries, n_rows) != 1:
        raise ValueError(f"one or four dots per call, of one row or one query, "
                         f"not {n_queries} queries x {n_rows} rows")
    return_type = types.int32 if n_members == 1 else types.UniTuple(types.int32, n_members)
    if at_column:
        def typer_at(typingctx, codes, row, weights, queries, n_chunks, column):
            return return_type(codes, row, weights, queries, n_chunks, column), codegen

        return intrinsic(typer_at)

    def typer(typingctx, codes, row, weights, queries, n_chunks):
        return return_type(codes, row, weights, queries, n_chunks), codegen

    return intrinsic(typer)


# ----------------------------------------------- portable stand-ins (no AVX2)
@njit(inline="always")
def _portable_dot(codes, row, weights, query, n_chunks, bits, column=0):
    # The chunk layout of the module docstring, one code at a time.
    code_size = codes.shape[1]
    chunk_bytes = SQ4_CHUNK_BYTES if bits == 4 else SQ8_CHUNK_BYTES
    wide_nibbles = bits == 4 and weights.itemsize == 2
    total = np.int32(0)
    for chunk in range(n_chunks):
        start = min(chunk * chunk_bytes, code_size - chunk_bytes)
        base = column + chunk * (2 * chunk_bytes if bits == 4 else chunk_bytes)
        for t in range(chunk_bytes):
            byte = np.int32(codes[row, start + t])
            if wide_nibbles:
                # Groups of 16: even bytes' low, high nibbles; odd bytes' low, high.
                position = base + 32 * (t & 1) + (t >> 1)
                total += (byte & 15) * np.int32(weights[query, position])
                total += (byte >> 4) * np.int32(weights[query, position + 16])
            elif bits == 4:
                total += (byte & 15) * np.int32(weights[query, base + t])
                total += (byte >> 4) * np.int32(weights[query, base + chunk_bytes + t])
            else:
                total += byte * np.int32(weights[query, base + t])
    return total


def _portable_row_dots(n_queries, bits, at_column=False, n_rows=1):
    """The stand-in for ``_row_dots_ir(n_queries, bits, at_column,
    n_rows)``: same arguments and results, plain numba loops."""
    if n_rows == 4:
        @njit(inline="always")
        def dots_4rows(codes, row, weights, query, n_chunks):
            return (
                _portable_dot(codes, row, weights, query, n_chunks, bits),
                _portable_dot(codes, row + 1, weights, query, n_chunks, bits),
                _portable_dot(codes, row + 2, weights, query, n_chunks, bits),
                _portable_dot(codes, row + 3, weights, query, n_chunks, bits),
            )

        return dots_4rows

    if at_column:
        @njit(inline="always")
        def dot_at(codes, row, weights, query, n_chunks, column):
            return _portable_dot(codes, row, weights, query, n_chunks, bits, column)

        return dot_at

    if n_queries == 1:
        @njit(inline="always")
        def dot(codes, row, weights, query, n_chunks):
            return _portable_dot(codes, row, weights, query, n_chunks, bits)

        return dot

    @njit(inline="always")
    def dots4(codes, row, weights, queries, n_chunks):
        q0, q1, q2, q3 = queries
        return (
            _portable_dot(codes, row, weights, q0, n_chunks, bits),
            _portable_dot(codes, row, weights, q1, n_chunks, bits),
            _portable_dot(codes, row, weights, q2, n_chunks, bits),
            _portable_dot(codes, row, weights, q3, n_chunks, bits),
        )

    return dots4


_row_dots = _row_dots_ir if HAS_AVX2_DOTS else _portable_row_dots
dot_nibbles = _row_dots(1, 4)
dot_bytes = _row_dots(1, 8)
dots4_nibbles = _row_dots(4, 4)
dots4_bytes = _row_dots(4, 8)
dots_4rows_nibbles = _row_dots(1, 4, n_rows=4)
dots_4rows_bytes = _row_dots(1, 8, n_rows=4)
# One query's dot with the weights that start at a given column (a plane of
# the 4-bit codes' int8 weights, see SQ4_PLANES).
dot_nibbles_at = _row_dots(1, 4, True)

