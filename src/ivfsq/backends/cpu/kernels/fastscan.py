"""The 4-bit first pass: blocks of 16 rows scored together, then the best
candidates scored exactly on their 8-bit codes.

An 8-bit code ``u`` (0..255) gives a 4-bit one ``round(u / 17)`` (0..15)
on the same grid at 17 times the step, so a row's 4-bit score needs no
tables of its own: ``base + (17 w) . u4``, with the query's float weights
``w`` and list constant ``base`` of the exact scan. The 4-bit codes are
kept block-interleaved (:func:`ivfsq.backends.cpu.fastscan.first_pass_layout`):
a list's rows in blocks of :data:`BLOCK_ROWS`; in a block, dimensions come
in groups of four, and a group is 32 bytes, two per row: ``u4[4g] |
u4[4g + 1] << 4`` then ``u4[4g + 2] | u4[4g + 3] << 4``. The low nibbles
of a group are then dimensions ``(4g, 4g + 2)`` of each row in adjacent
bytes, the high ones ``(4g + 1, 4g + 3)``, which is what ``vpmaddubsw``
multiplies and adds in pairs: two multiply-adds give the group's sums of 16
rows in 16-bit lanes, with no horizontal sums and one comparison per block
instead of one per row.

The query's weights are int8 (``|W| <= 127``, ``17 w ~ scale W``): one
group adds at most ``4 * 15 * 127 = 7620`` to a lane, so four groups (a
quad of 16 dimensions) stay within int16, and the quads' sums are widened
to int32. The padding dimensions of the last quad have zero codes and
weights.

The first pass ranks rows by an approximate distance; it keeps the
``n_candidates`` best per query (a bounded heap on the approximate
distance), and only those are scored exactly (:func:`exact_score` on the
8-bit codes) for the top ``k``. Results are then those of the exact scan
wherever the exact top ``k`` are among the first pass's candidates.

numba has no vector types, so the block's scores are LLVM IR (as in
:mod:`ivfsq.backends.cpu.kernels.simd`), compiled where the CPU has AVX2;
elsewhere :func:`block_scores` is a plain numba loop with the same integer
sums.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from ivfsq.backends.cpu.kernels import simd
from ivfsq.backends.cpu.kernels.coarse import (
    _partition_smallest,
    query_probes,
    selection_workspace,
)
from ivfsq.backends.cpu.kernels.common import FAST, JIT, METRIC_IP, METRIC_L2
from ivfsq.backends.cpu.kernels.encode import dot64, list_constant, weights_row
from ivfsq.backends.cpu.kernels.heaps import greater, heap_init, heap_push_replace, heap_sort
from ivfsq.backends.cpu.kernels.scan import HISTOGRAM_BUCKETS, _kth_smallest_cover
from ivfsq.backends.cpu.kernels.score import exact_score, is_kept, score_to_distance

# Rows per block (the int16 lanes of one 256-bit register).
BLOCK_ROWS = 16
# Dimensions per group (two bytes of each row), groups per quad, and the
# bytes of a group in a block and of its weights in a query's row.
GROUP_DIMS = 4
QUAD_GROUPS = 4
QUAD_DIMS = GROUP_DIMS * QUAD_GROUPS
GROUP_BYTES = 2 * BLOCK_ROWS
GROUP_WEIGHT_BYTES = 2 * GROUP_BYTES
# 8-bit codes per 4-bit level: 255 / 15.
LEVEL_STEP = 17
WEIGHT_LIMIT = 127
# Candidate keys carry the probe they came from above this bit (rows below).
PROBE_SHIFT = 40
ROW_MASK = (1 << PROBE_SHIFT) - 1


def n_quads(dim):
    """Quads of 16 dimensions that cover ``dim`` (the last one padded)."""
    return -(-dim // QUAD_DIMS)


def block_bytes(dim):
    """Bytes of one block of 4-bit codes."""
    return n_quads(dim) * QUAD_GROUPS * GROUP_BYTES


def weight_bytes(dim):
    """int8 weights per query."""
    return n_quads(dim) * QUAD_GROUPS * GROUP_WEIGHT_BYTES


# --------------------------------------------------------- the block's scores
_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32 = ir.FloatType()
_V32I8 = ir.VectorType(_I8, 32)
_V16I16 = ir.VectorType(_I16, 16)
_V16I32 = ir.VectorType(_I32, 16)
_V16F32 = ir.VectorType(_F32, 16)


def _splat(builder, value, vector_type):
    undefined = ir.Constant(vector_type, ir.Undefined)
    first = builder.insert_element(undefined, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, undefined, ir.Constant(
        ir.VectorType(_I32, vector_type.count), [0] * vector_type.count))


def _block_scores_ir():
    def codegen(context, builder, signature, args):
        (codes_value, block, weights_value, quads, alpha, beta, gamma, epsilon, aux_value,
         worst, out_value) = args
        alpha, beta, gamma, epsilon, worst = (
            context.cast(builder, value, signature.args[position], types.float32)
            for value, position in ((alpha, 4), (beta, 5), (gamma, 6), (epsilon, 7), (worst, 9))
        )
        block = context.cast(builder, block, signature.args[1], types.int64)
        quads = context.cast(builder, quads, signature.args[3], types.int64)
        module = builder.module
        existing = module.globals.get("llvm.x86.avx2.pmadd.ub.sw")
        pmaddubsw = existing or ir.Function(
            module, ir.FunctionType(_V16I16, [_V32I8, _V32I8]), name="llvm.x86.avx2.pmadd.ub.sw")
        codes = context.make_array(signature.args[0])(context, builder, codes_value)
        weights = context.make_array(signature.args[2])(context, builder, weights_value)
        aux = context.make_array(signature.args[8])(context, builder, aux_value)
        out = context.make_array(signature.args[10])(context, builder, out_value)
        block_base = builder.gep(
            builder.bitcast(codes.data, _I8.as_pointer()),
            [builder.mul(block, builder.extract_value(codes.strides, 0))],
        )
        weight_base = builder.bitcast(weights.data, _I8.as_pointer())
        aux_row = builder.gep(
            builder.bitcast(aux.data, _I8.as_pointer()),
            [builder.mul(block, builder.extract_value(aux.strides, 0))],
        )
        low_mask = ir.Constant(_V32I8, [15] * 32)
        four = ir.Constant(_V32I8, [4] * 32)

        entry = builder.block
        loop = builder.append_basic_block("fastscan.loop")
        body = builder.append_basic_block("fastscan.body")
        done = builder.append_basic_block("fastscan.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        quad = builder.phi(_I64)
        quad.add_incoming(ir.Constant(_I64, 0), entry)
        total = builder.phi(_V16I32)
        total.add_incoming(ir.Constant(_V16I32, [0] * 16), entry)
        builder.cbranch(builder.icmp_signed("<", quad, quads), body, done)

        builder.position_at_end(body)
        sums = None
        for group in range(QUAD_GROUPS):
            index = builder.add(builder.mul(quad, ir.Constant(_I64, QUAD_GROUPS)),
                                ir.Constant(_I64, group))
            code_pointer = builder.gep(block_base, [builder.mul(index, ir.Constant(
                _I64, GROUP_BYTES))])
            packed = builder.load(builder.bitcast(code_pointer, _V32I8.as_pointer()), align=1)
            weight_pointer = builder.gep(weight_base, [builder.mul(index, ir.Constant(
                _I64, GROUP_WEIGHT_BYTES))])
            low_weights = builder.load(builder.bitcast(weight_pointer, _V32I8.as_pointer()),
                                       align=1)
            high_pointer = builder.gep(weight_pointer, [ir.Constant(_I64, GROUP_BYTES)])
            high_weights = builder.load(builder.bitcast(high_pointer, _V32I8.as_pointer()),
                                        align=1)
            products = builder.add(
                builder.call(pmaddubsw, [builder.and_(packed, low_mask), low_weights]),
                builder.call(pmaddubsw, [builder.lshr(packed, four), high_weights]),
            )
            sums = products if sums is None else builder.add(sums, products)
        quad.add_incoming(builder.add(quad, ir.Constant(_I64, 1)), body)
        total.add_incoming(builder.add(total, builder.sext(sums, _V16I32)), body)
        builder.branch(loop)

        builder.position_at_end(done)
        scores = builder.sitofp(total, _V16F32)
        aux_values = builder.load(builder.bitcast(aux_row, _V16F32.as_pointer()), align=4)
        # alpha + aux * (beta + gamma * s) + epsilon * s, as block_scores_portable.
        inner = builder.fadd(_splat(builder, beta, _V16F32),
                             builder.fmul(_splat(builder, gamma, _V16F32), scores))
        distances = builder.fadd(
            builder.fadd(_splat(builder, alpha, _V16F32), builder.fmul(aux_values, inner)),
            builder.fmul(_splat(builder, epsilon, _V16F32), scores),
        )
        builder.store(distances, builder.bitcast(out.data, _V16F32.as_pointer()), align=4)
        # Ordered comparison: a padding row's NaN distance never passes.
        passed = builder.fcmp_ordered("<=", distances, _splat(builder, worst, _V16F32))
        return builder.zext(builder.bitcast(passed, _I16), _I32)

    def typer(typingctx, codes, block, weights, quads, alpha, beta, gamma, epsilon, aux, worst,
              out):
        return types.int32(codes, block, weights, quads, alpha, beta, gamma, epsilon, aux,
                           worst, out), codegen

    return intrinsic(typer)


def _prefetch_ir():
    def codegen(context, builder, signature, args):
        array_value, index = args
        array = context.make_array(signature.args[0])(context, builder, array_value)
        index = context.cast(builder, index, signature.args[1], types.int64)
        address = builder.gep(
            builder.bitcast(array.data, _I8.as_pointer()),
            [builder.mul(index, builder.extract_value(array.strides, 0))],
        )
        prefetch = builder.module.globals.get("llvm.prefetch.p0i8") or ir.Function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]),
            name="llvm.prefetch.p0i8")
        # A read, kept in all cache levels, of data (not instructions).
        builder.call(prefetch, [address, ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                                ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    def typer(typingctx, array, index):
        return types.none(array, index), codegen

    return intrinsic(typer)


#: ``prefetch(array, i)``: ask for the cache line where ``array[i]`` starts
#: (the candidates' rows are scattered: their loads would otherwise wait
#: one after the other).
prefetch = _prefetch_ir()


@njit(inline="always")
def block_scores_portable(codes, block, weights, quads, alpha, beta, gamma, epsilon, aux, worst,
                          out):
    """The approximate distances of block ``block``'s 16 rows into ``out``
    and the mask of those at most ``worst`` (bit ``r`` for row ``r``): plain
    loops over the layout of the module docstring, the AVX2 kernel's
    reference."""
    mask = np.int32(0)
    for r in range(BLOCK_ROWS):
        total = np.int32(0)
        for group in range(quads * QUAD_GROUPS):
            for half in range(2):
                byte = np.int32(codes[block, group * GROUP_BYTES + 2 * r + half])
                at = group * GROUP_WEIGHT_BYTES + 2 * r + half
                total += (byte & 15) * np.int32(weights[at])
                total += (byte >> 4) * np.int32(weights[at + GROUP_BYTES])
        s = np.float32(total)
        dist = alpha + aux[block, r] * (beta + gamma * s) + epsilon * s
        out[r] = dist
        if dist <= worst:
            mask |= np.int32(1) << r
    return mask


block_scores = _block_scores_ir() if simd.HAS_AVX2_DOTS else block_scores_portable


# ---------------------------------------------------------------- weights
@njit(inline="always")
def _weight_level(weights, j, inverse):
    """The int8 level of dimension ``j``'s weight (0 for a padding one)."""
    if j >= weights.shape[0]:
        return np.int32(0)
    level = np.int32(np.rint(weights[j] * inverse))
    return min(max(level, -WEIGHT_LIMIT), WEIGHT_LIMIT)


@njit(inline="always")
def first_pass_weights(weights, out):
    """int8 weights of the 4-bit pass from a query's float 8-bit weights
    ``weights`` (one per dimension), in the layout of the module docstring;
    returns ``scale`` with ``17 weights ~ scale * W``."""
    dim = weights.shape[0]
    largest = np.float32(0.0)
    for j in range(dim):
        largest = max(largest, abs(weights[j]))
    if largest == 0:
        out[:] = 0
        return np.float32(0.0)
    scale = np.float32(LEVEL_STEP) * largest / np.float32(WEIGHT_LIMIT)
    inverse = np.float32(LEVEL_STEP) / scale
    # A group's weights are one byte pair per row, the same for all 16 rows:
    # written as int16 (little-endian: the pair's first byte low), 16 copies
    # a vector store, rather than byte by byte.
    pairs = out.view(np.int16)
    half = GROUP_BYTES // 2
    for group in range(out.shape[0] // GROUP_WEIGHT_BYTES):
        first = group * GROUP_DIMS
        # Dimensions 4g and 4g + 2 in the low nibbles' pairs, 4g + 1 and
        # 4g + 3 in the high ones'.
        low = np.int16((_weight_level(weights, first, inverse) & 0xFF)
                       | (_weight_level(weights, first + 2, inverse) << 8))
        high = np.int16((_weight_level(weights, first + 1, inverse) & 0xFF)
                        | (_weight_level(weights, first + 3, inverse) << 8))
        at = group * (GROUP_WEIGHT_BYTES // 2)
        for r in range(half):
            pairs[at + r] = low
            pairs[at + half + r] = high
    return scale


@njit(inline="always")
def distance_terms(metric, base, scale, q_sq):
    """(alpha, beta, gamma, epsilon) with the 4-bit distance ``alpha + aux
    (beta + gamma t) + epsilon t`` of a row with integer sum ``t``: the
    metric's :func:`score_to_distance` of the score ``base + scale t``."""
    zero = np.float32(0.0)
    if metric == METRIC_L2:
        return q_sq - np.float32(2.0) * base, np.float32(1.0), zero, np.float32(-2.0) * scale
    if metric == METRIC_IP:
        return -base, zero, zero, -scale
    return np.float32(1.0), -base, -scale, zero


# ------------------------------------------------------------- the search
@njit(inline="always")
def _kth_smallest(values, n, kth, scratch):
    """The ``kth`` smallest (0-based) of ``values[:n]``: the largest of the
    ``kth + 1`` smallest that a quickselect on a copy in ``scratch`` moves
    to the front (a sort where it gives up)."""
    for c in range(n):
        scratch[c] = values[c]
    if not _partition_smallest(scratch, n, kth + 1):
        scratch[:n].sort()
    return scratch[:kth + 1].max()


@njit(inline="always")
def _keep_at_most(cand_d, cand_k, n_kept, cutoff):
    """Move the candidates at or below ``cutoff`` to the front, in scan
    order; returns their count (branch-free: a candidate is always copied
    and the count moves on when it stays)."""
    kept = 0
    for c in range(n_kept):
        d = cand_d[c]
        cand_d[kept] = d
        cand_k[kept] = cand_k[c]
        kept += d <= cutoff
    return kept


@njit(inline="always")
def _cut(cand_d, cand_k, n_kept, n_keep, scratch):
    """Keep the ``n_keep`` smallest of the first ``n_kept`` candidates
    (ties at the cut by their order), moved to the front; returns their
    count and the largest kept distance."""
    cutoff = _kth_smallest(cand_d, n_kept, n_keep - 1, scratch)
    below = 0
    for c in range(n_kept):
        below += cand_d[c] < cutoff
    at_cutoff = n_keep - below
    kept = 0
    for c in range(n_kept):
        d = cand_d[c]
        stays = d < cutoff or (d == cutoff and at_cutoff > 0)
        at_cutoff -= d == cutoff and stays
        cand_d[kept] = d
        cand_k[kept] = cand_k[c]
        kept += stays
    return kept, cutoff


@njit(inline="always")
def _cut_cover(cand_d, cand_k, n_kept, n_keep, capacity, scratch, counts):
    """Make room in the candidate buffer: keep those at or below a cover of
    the ``n_keep``-th smallest (a histogram's bound, no sort: a cut whose
    branches cannot be predicted costs more than the whole block scan), or
    exactly the ``n_keep`` smallest where that leaves no room for a block.
    Returns the count kept and the new threshold."""
    cover = _kth_smallest_cover(cand_d, n_kept, n_keep, counts)
    kept = _keep_at_most(cand_d, cand_k, n_kept, cover)
    if kept <= capacity - 2 * BLOCK_ROWS:
        return kept, cover
    return _cut(cand_d, cand_k, kept, n_keep, scratch)


@njit(fastmath=FAST, **JIT)
def search_first_pass(
    queries,
    centers,
    center_sq_norms,
    n_probes,
    vmin,
    delta,
    by_residual,
    codes,
    ids,
    aux,
    list_offsets,
    list_sizes,
    blocks,
    block_aux,
    block_offsets,
    metric,
    all_words,
    use_filter,
    emit_rows,
    n_candidates,
    given_probes,
    out_distances,
    out_ids,
):
    """Search queries with the 4-bit first pass, on one thread.

    Per query: the probes (the coarse step here, or ``given_probes``' row
    when it has rows), then each probed list's blocks (``blocks``,
    ``block_aux`` and ``block_offsets`` from
    :func:`ivfsq.backends.cpu.fastscan.first_pass_layout`) scored on their
    4-bit codes into a heap of the ``n_candidates`` best approximate
    distances, then those candidates scored exactly on their 8-bit codes
    (the arithmetic of :func:`ivfsq.backends.cpu.kernels.scan.search_few`)
    into the query's top ``out_distances.shape[1]``, ascending. Filtered
    rows are left out before they become candidates. Keys are ids, or rows
    where ``emit_rows`` (for re-ranking on a precise store).
    """
    n_queries, dim = queries.shape
    code_size = codes.shape[1]
    use_l2 = metric == METRIC_L2
    dots = np.empty(centers.shape[0], dtype=np.float32)
    probe_scores = np.empty(n_probes, dtype=np.float32)
    probe_lists = np.empty(n_probes, dtype=np.int64)
    probe_consts = np.empty(n_probes, dtype=np.float32)
    workspace = selection_workspace(centers.shape[0], n_probes)
    weights = np.zeros(dim, dtype=np.float32)
    int_weights = np.zeros(blocks.shape[1] * 2, dtype=np.int8)
    quads = np.int64(blocks.shape[1] // (QUAD_GROUPS * GROUP_BYTES))
    block_distances = np.empty(BLOCK_ROWS, dtype=np.float32)
    # The candidates: a buffer of twice n_candidates (and a block), cut back
    # to the n_candidates best whenever a block might not fit (O(1) a
    # candidate, where a heap would sift at each of them), and a threshold
    # that is the cut's.
    capacity = 2 * n_candidates + 2 * BLOCK_ROWS
    cand_d = np.empty(capacity, dtype=np.float32)
    cand_k = np.empty(capacity, dtype=np.int64)
    scratch = np.empty(capacity, dtype=np.float32)
    counts = np.empty(HISTOGRAM_BUCKETS, dtype=np.int64)
    for i in range(n_queries):
        query = queries[i]
        keep_words = all_words[i if all_words.shape[0] > 1 else 0]  # one bitset, or its own
        query_probes(query, i, given_probes, centers, center_sq_norms, use_l2, dots,
                     probe_scores, probe_lists, workspace)
        weights_row(query, delta, 8, code_size, weights)
        scale = first_pass_weights(weights, int_weights)
        q_sq = np.float32(dot64(query, query)) if use_l2 else np.float32(0.0)
        offset = dot64(query, vmin)
        n_kept = 0
        worst = np.float32(np.inf)
        for p in range(n_probes):
            lst = probe_lists[p]
            base = list_constant(query, centers, lst, offset, by_residual)
            probe_consts[p] = base
            alpha, beta, gamma, epsilon = distance_terms(metric, base, scale, q_sq)
            first_row = list_offsets[lst]
            tag = np.int64(p) << PROBE_SHIFT
            for b in range(block_offsets[lst], block_offsets[lst + 1]):
                mask = block_scores(blocks, b, int_weights, quads, alpha, beta, gamma, epsilon,
                                    block_aux, worst, block_distances)
                if mask == 0:
                    continue
                if n_kept > capacity - BLOCK_ROWS:
                    # Room for the whole block first: the cut stays out of
                    # the per-row loop below.
                    n_kept, worst = _cut_cover(cand_d, cand_k, n_kept, n_candidates, capacity,
                                               scratch, counts)
                row0 = first_row + (b - block_offsets[lst]) * BLOCK_ROWS
                # Only the rows whose bit is set, lowest first: a loop over
                # all 16 with a test each mispredicts where a few pass.
                while mask != 0:
                    r = trailing_zeros(mask)
                    mask &= mask - 1
                    dist = block_distances[r]
                    if dist > worst:  # worst fell at the cut above
                        continue
                    row = row0 + r
                    if use_filter and not is_kept(keep_words, ids[row]):
                        continue
                    cand_d[n_kept] = dist
                    cand_k[n_kept] = tag | row
                    n_kept += 1
        if n_kept > n_candidates:
            n_kept, worst = _cut(cand_d, cand_k, n_kept, n_candidates, scratch)
        heap_d = out_distances[i]
        heap_i = out_ids[i]
        heap_init(heap_d, heap_i)
        k = heap_d.shape[0]
        for c in range(n_kept):
            row = cand_k[c] & ROW_MASK
            prefetch(codes, row)
            prefetch(aux, row)
            prefetch(ids, row)
        for c in range(n_kept):
            key = cand_k[c]
            row = key & ROW_MASK
            s = exact_score(weights, probe_consts[key >> PROBE_SHIFT], codes, row, 8, code_size)
            dist = score_to_distance(metric, s, q_sq, aux[row])
            out_key = row if emit_rows else ids[row]
            if greater(heap_d[0], heap_i[0], dist, out_key):
                heap_push_replace(heap_d, heap_i, k, dist, out_key)
        heap_sort(heap_d, heap_i, k)
