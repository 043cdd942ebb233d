"""Hopper (sm_90) HSTU attention in Gluon: two wgmma warpgroups fed by TMA through an mbarrier ring.

Semantics: kernels/hstu_attention_ref.py (the MTGR mask, SiLU(alpha q.k) / n, no softmax). This kernel is the
warp-specialised sibling of kernels/hstu_attention_triton.py for 16-bit inputs with head_dim 64, 128 or 256;
the Triton kernel stays the fallback everywhere else (kernels/dispatch.py picks).

Work split. One program (CTA, 8 warps) takes a block of BLOCK_M = 128 consecutive computed rows of one request
and one head (grid: head inner, so a row block's heads run side by side, and a request's blocks read the same
pages back to back). The block is located in the kernel from the request offsets (a scan of ceil(rows_b / 128)
over the requests; the surplus programs of the upper-bound grid exit). `gl.warp_specialize` then runs the same
function in two 4-warp partitions, one warpgroup each:
  - warpgroup 0 (the default partition) owns rows [0, 64) of the block, warpgroup 1 (a worker) rows [64, 128).
    Each keeps its 64 x D fp32 accumulator in registers and, per key tile of BLOCK_N keys, issues
    S = Q K^T (wgmma, Q and K from shared memory), waits, applies SiLU and the mask in registers, and issues
    acc += P V asynchronously (wgmma, P from registers), waited for at the next tile's S. The two warpgroups
    walk the same tiles independently, so the warp schedulers overlap one's SiLU with the other's tensor-core
    work (ping-pong; HSTU has no softmax, so nothing in the key loop crosses warpgroups).
  - warpgroup 0 also loads: both halves of Q once, then every key tile's K and V by TMA into a ring of STAGES
    shared-memory slots, LOOKAHEAD = STAGES - 2 tiles ahead of its own step. `ready[s]` (TMA transaction
    bytes) says slot s is full; `empty[s]` (two arrivals, one per warpgroup, each once its P V wgmma on the
    slot is complete) says it may be refilled. Refilling tile t + LOOKAHEAD reuses the slot of tile t - 2, so
    warpgroup 1 may lag one tile before it holds the loads up. The page-table read of the next tile is issued
    a step before its TMA, so its latency is not waited for.
  A dedicated 1-warp producer partition would make 12 warps, a 168-register launch limit and, under ptxas
  12.8, serialised wgmma (C7512); with 8 warps each warpgroup has 240-256 registers and no spills.

Key sequence of a block (every computed row sees the whole cached prefix, so the prefix needs no per-row mask):
  1. prefix tiles t < ceil(n_cached / BLOCK_N): BLOCK_N cached tokens, from the page pool (one TMA box of one
     page; page_table[b, t * BLOCK_N // P]; the pool viewed as [rows, H * D], page p's token j at row
     p * page_rows + j) or from a contiguous prefix; keys >= n_cached are masked;
  2. computed tiles: keys n_cached + [u * BLOCK_N, (u + 1) * BLOCK_N) from the request's own k / v rows
     (viewed as [T, H * D]), up to the largest visible range `hi` of the block's rows; a tile reaching past the
     smallest `hi` of a warpgroup's rows is masked per row (key position < hi_row).
  `hi` per row (position = n_cached + row): static rows see [0, N) (N = n_cached + n_new_static) or, causal,
  [0, position]; R rows [0, position]; candidates [0, N + n_rt) plus their own key. `hi` does not decrease
  along the rows of a request, so a warpgroup's smallest / largest `hi` are those of its first / last row.
  3. the candidates' own key: silu(alpha q_i . k_i) per row before the loop, times v_i in the epilogue.
Rows of a block past the request's end are computed from whatever Q rows follow (or TMA's zero fill past T)
and never stored; a warpgroup with no rows of its own, or past its rows' last tile, only releases the slots.
Masked keys must hold finite values (weights 0 times V): the pool is zero-initialised and holds only K/V. The
1/n_i normaliser is applied to the accumulator once. Invariants the host wrapper checks
(`unsupported_reason`): CUDA sm_90, 16-bit q/k/v/prefix, head dims dense within a token row (strides
[.., D, 1]), 16-byte aligned bases and row strides (TMA), page size a multiple of BLOCK_N, pool pages of
dense token rows ([pages, P, H, D], page stride a multiple of H * D), shared memory within 227 KB.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier, tma, warpgroup_mma, warpgroup_mma_init, warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.hstu_attention_ref import AttentionSpec, ContiguousPrefix, PagedPrefix, Prefix

ROWS_PER_PROGRAM = 128  # two consumer warpgroups of ROWS_PER_WARPGROUP rows
ROWS_PER_WARPGROUP = 64  # the wgmma M
BLOCK_M = gl.constexpr(ROWS_PER_PROGRAM)  # the same, as compile-time constants inside the kernels
HALF_M = gl.constexpr(ROWS_PER_WARPGROUP)
HEAD_DIMS = (64, 128, 256)
GLUON_API_VERSION = "3.6."  # prefix of the Triton release whose Gluon API this is written against (the H200's)
_PREFIX_NONE, _PREFIX_CONTIGUOUS, _PREFIX_PAGED = 0, 1, 2


@dataclass(frozen=True)
class GluonAttentionConfig:
    """Key tile width, K/V ring depth and the second warpgroup's register count of the Gluon kernel."""

    block_n: int = 32
    stages: int = 5  # >= 3: the loader refills the ring STAGES - 2 tiles ahead of its own step
    worker_registers: int = 240  # setmaxnreg of the second warpgroup; the first keeps what is left

    def __post_init__(self) -> None:
        if self.block_n not in (16, 32, 64) or not 24 <= self.worker_registers <= 256:
            raise ValueError(f"block_n must be 16, 32 or 64 and worker_registers in [24, 256]: {self}")
        if self.stages < 3:
            raise ValueError(f"stages must be >= 3 (the loader runs stages - 2 tiles ahead): {self}")


DEFAULT_GLUON_CONFIG = GluonAttentionConfig()


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _locate_block(offsets_ptr, n_requests, work_index, CHUNK_B: gl.constexpr):
    """(request, row block) of program `work_index`; request == n_requests when past the last block.
    The Triton kernel's search in Gluon (a Gluon function cannot call a Triton one): the same chunked
    prefix sum of row blocks per request."""
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    requests_before = 0
    blocks_before = 0
    blocks_done = 0
    for chunk_start in range(0, n_requests, CHUNK_B):
        idx = chunk_start + gl.arange(0, CHUNK_B, layout=layout)
        valid = idx < n_requests
        row_lo = gl.load(offsets_ptr + idx, mask=valid, other=0)
        row_hi = gl.load(offsets_ptr + idx + 1, mask=valid, other=0)
        n_blocks = (row_hi - row_lo + BLOCK_M - 1) // BLOCK_M
        block_ends = blocks_done + gl.associative_scan(n_blocks, 0, _add)
        ended = (block_ends <= work_index) & valid
        requests_before += gl.sum(ended.to(gl.int32), 0)
        blocks_before += gl.sum(gl.where(ended, n_blocks, 0), 0)
        blocks_done += gl.sum(n_blocks, 0)
    return requests_before, work_index - blocks_before


@gluon.jit
def _visible_end(row, n_cached, n_new, n_rt, CAUSAL_STATIC: gl.constexpr):
    """Key positions [0, hi) that computed row `row` (scalar or tensor) sees, its own key aside."""
    n_static = n_cached + n_new
    position = n_cached + row
    if CAUSAL_STATIC:
        static_hi = position + 1
    else:
        static_hi = position * 0 + n_static
    return gl.where(row < n_new, static_hi, gl.where(row >= n_new + n_rt, n_static + n_rt, position + 1))


@gluon.jit
def _tile_count(first_row, last_row, n_cached, n_new, n_rt, BLOCK_N: gl.constexpr, CAUSAL_STATIC: gl.constexpr):
    """Key tiles rows [first_row, last_row] need: the prefix tiles, then computed keys up to the last row's hi."""
    hi_last = _visible_end(last_row, n_cached, n_new, n_rt, CAUSAL_STATIC)
    return gl.cdiv(n_cached, BLOCK_N) + gl.cdiv(hi_last - n_cached, BLOCK_N)


@gluon.jit
def _silu(x):
    """silu(x) = h + h tanh(h), h = x / 2, with the one-instruction tanh.approx (relative error ~2^-11)."""
    half = x * 0.5
    tanh = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [half], dtype=gl.float32,
                                     is_pure=True, pack=1)
    return half + half * tanh



@gluon.jit
def _load_query(q_desc, q_smem, q_ready, row, column):
    """Both warpgroups' Q rows [row, row + BLOCK_M) of one head into q_smem[0], q_smem[1]."""
    mbarrier.expect(q_ready, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [row, column], q_ready, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [row + HALF_M, column], q_ready, q_smem.index(1))


@gluon.jit
def _key_row(t, request_pages, page_rows, prefix_row, row_start, n_prefix_tiles,
             PREFIX_MODE: gl.constexpr, PAGE_TOKENS: gl.constexpr, BLOCK_N: gl.constexpr):
    """First row of key tile t in its 2-d [rows, H * D] view: page request_pages[key // P] of the pool
    (paged prefix), row prefix_row + key (contiguous prefix), or the request's own rows (computed keys)."""
    row = row_start + (t - n_prefix_tiles) * BLOCK_N
    if t < n_prefix_tiles:
        key = t * BLOCK_N
        if PREFIX_MODE == 2:
            page = gl.load(request_pages + key // PAGE_TOKENS).to(gl.int32)
            row = page * page_rows + key % PAGE_TOKENS
        else:
            row = prefix_row + key
    return row


@gluon.jit
def _load_key_tile(t, row, k_desc, v_desc, prefix_k_desc, prefix_v_desc, k_ring, v_ring, ready, empty, column,
                   n_prefix_tiles, STAGES: gl.constexpr):
    """K and V of key tile t (first row `row`, see _key_row) into ring slot t % STAGES, once both warpgroups
    released the tile that used the slot before."""
    slot = t % STAGES
    mbarrier.wait(empty.index(slot), ((t // STAGES) & 1) ^ 1)  # a fresh barrier passes phase 1 at once
    mbarrier.expect(ready.index(slot), 2 * k_desc.block_type.nbytes)
    if t < n_prefix_tiles:
        tma.async_copy_global_to_shared(prefix_k_desc, [row, column], ready.index(slot), k_ring.index(slot))
        tma.async_copy_global_to_shared(prefix_v_desc, [row, column], ready.index(slot), v_ring.index(slot))
    else:
        tma.async_copy_global_to_shared(k_desc, [row, column], ready.index(slot), k_ring.index(slot))
        tma.async_copy_global_to_shared(v_desc, [row, column], ready.index(slot), v_ring.index(slot))


@gluon.jit
def _refill(t, row, n_tiles, k_desc, v_desc, prefix_k_desc, prefix_v_desc, k_ring, v_ring, ready, empty,
            request_pages, page_rows, prefix_row, row_start, column, n_prefix_tiles,
            PREFIX_MODE: gl.constexpr, PAGE_TOKENS: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """Load tile t (first row `row`) if it exists; return the first row of tile t + 1, read a step ahead of
    its use so that the page-table load's latency is not waited for."""
    if t < n_tiles:
        _load_key_tile(t, row, k_desc, v_desc, prefix_k_desc, prefix_v_desc, k_ring, v_ring, ready, empty, column,
                       n_prefix_tiles, STAGES)
    return _key_row(t + 1, request_pages, page_rows, prefix_row, row_start, n_prefix_tiles, PREFIX_MODE,
                    PAGE_TOKENS, BLOCK_N)


@gluon.jit
def _diagonal_weights(q_ptr, k_ptr, stride_qt, stride_kt, column, row_start, rows, is_candidate, alpha,
                      HEAD_DIM: gl.constexpr, layout: gl.constexpr):
    """silu(alpha q_i . k_i) for candidate rows, 0 elsewhere ([HALF_M] in SliceLayout(1, layout)), over
    64-column chunks of the head so that few registers are live."""
    CHUNK: gl.constexpr = 64
    columns = gl.arange(0, CHUNK, layout=gl.SliceLayout(0, layout))
    token = (row_start + rows).to(gl.int64)
    mask = is_candidate[:, None] & (columns < CHUNK)[None, :]
    dot = gl.zeros([HALF_M], gl.float32, gl.SliceLayout(1, layout))
    for chunk in gl.static_range(HEAD_DIM // CHUNK):
        offset = column + chunk * CHUNK + columns[None, :]
        q = gl.load(q_ptr + token[:, None] * stride_qt + offset, mask=mask, other=0.0)
        k = gl.load(k_ptr + token[:, None] * stride_kt + offset, mask=mask, other=0.0)
        dot += gl.sum(q.to(gl.float32) * k.to(gl.float32), 1)
    return gl.where(is_candidate, _silu(dot * alpha), 0.0)


@gluon.jit
def _tile_weights(s, t, alpha, n_cached, n_prefix_tiles, hi_first, hi, key_offsets, dtype: gl.constexpr,
                  p_layout: gl.constexpr, BLOCK_N: gl.constexpr):
    """P = silu(alpha S) of key tile t, masked (keys past the prefix, or past a row's range where the tile
    reaches past the warpgroup's first row's), as the P V wgmma's 16-bit register operand."""
    p = _silu(s * alpha)
    is_prefix = t < n_prefix_tiles
    key = gl.where(is_prefix, t * BLOCK_N, n_cached + (t - n_prefix_tiles) * BLOCK_N)
    if key + BLOCK_N > gl.where(is_prefix, n_cached, hi_first):
        limit = gl.where(is_prefix, n_cached, hi)
        p = gl.where((key + key_offsets)[None, :] < limit[:, None], p, 0.0)
    return gl.convert_layout(p.to(dtype), p_layout)


@gluon.jit
def _warpgroup(
    half, q_desc, k_desc, v_desc, prefix_k_desc, prefix_v_desc, q_smem, k_ring, v_ring, ready, empty, q_ready,
    q_ptr, k_ptr, v_ptr, out_ptr, stride_qt, stride_kt, stride_vt, stride_ot, page_table_ptr, page_rows,
    prefix_row, head, row_start, block_row, n_rows, n_cached, n_new, n_rt, n_tiles, alpha, inv_norm_constant,
    LOADER: gl.constexpr, PREFIX_MODE: gl.constexpr, PAGE_TOKENS: gl.constexpr, CAUSAL_STATIC: gl.constexpr,
    VISIBLE_NORM: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
):
    """One consumer warpgroup: rows [first_row, first_row + HALF_M) of the request (those < n_rows), where
    first_row = block_row + half * HALF_M; the LOADER warpgroup also issues every TMA load of the block,
    LOOKAHEAD = STAGES - 2 tiles ahead of its own step (one slot of slack for the other warpgroup)."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, HEAD_DIM, 16])
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    diag_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    LOOKAHEAD: gl.constexpr = STAGES - 2
    dtype: gl.constexpr = q_desc.dtype
    column = head * HEAD_DIM
    n_prefix_tiles = gl.cdiv(n_cached, BLOCK_N)
    if LOADER:  # Q, the first LOOKAHEAD tiles, and the row of the next tile (its page-table read in flight)
        _load_query(q_desc, q_smem, q_ready, row_start + block_row, column)
        for t in range(gl.minimum(LOOKAHEAD, n_tiles)):
            _load_key_tile(t, _key_row(t, page_table_ptr, page_rows, prefix_row, row_start, n_prefix_tiles,
                                       PREFIX_MODE, PAGE_TOKENS, BLOCK_N),
                           k_desc, v_desc, prefix_k_desc, prefix_v_desc, k_ring, v_ring, ready, empty, column,
                           n_prefix_tiles, STAGES)
        next_row = _key_row(LOOKAHEAD, page_table_ptr, page_rows, prefix_row, row_start, n_prefix_tiles,
                            PREFIX_MODE, PAGE_TOKENS, BLOCK_N)

    first_row = block_row + half * HALF_M
    last_row = gl.minimum(first_row + HALF_M, n_rows) - 1
    my_tiles = gl.where(first_row < n_rows,
                        _tile_count(first_row, last_row, n_cached, n_new, n_rt, BLOCK_N, CAUSAL_STATIC), 0)
    hi_first = _visible_end(first_row, n_cached, n_new, n_rt, CAUSAL_STATIC)
    hi = _visible_end(first_row + gl.arange(0, HALF_M, layout=gl.SliceLayout(1, s_layout)), n_cached, n_new,
                      n_rt, CAUSAL_STATIC)
    key_offsets = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    diag_rows = first_row + gl.arange(0, HALF_M, layout=gl.SliceLayout(1, diag_layout))
    diag = _diagonal_weights(q_ptr, k_ptr, stride_qt, stride_kt, column, row_start, diag_rows,
                             (diag_rows < n_rows) & (diag_rows >= n_new + n_rt), alpha, HEAD_DIM, diag_layout)

    q_half = q_smem.index(half)
    s_zero = gl.zeros([HALF_M, BLOCK_N], gl.float32, s_layout)
    acc = warpgroup_mma_init(gl.zeros([HALF_M, HEAD_DIM], gl.float32, acc_layout))
    mbarrier.wait(q_ready, 0)
    for t in range(my_tiles):
        slot = t % STAGES
        mbarrier.wait(ready.index(slot), (t // STAGES) & 1)
        s = warpgroup_mma(q_half, k_ring.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s, acc))
        # acc += P V of the previous tile is complete too: release its slot, refill the ring.
        mbarrier.arrive(empty.index((t + STAGES - 1) % STAGES), pred=t > 0)
        if LOADER:
            next_row = _refill(t + LOOKAHEAD, next_row, n_tiles, k_desc, v_desc, prefix_k_desc, prefix_v_desc,
                               k_ring, v_ring, ready, empty, page_table_ptr, page_rows, prefix_row, row_start,
                               column, n_prefix_tiles, PREFIX_MODE, PAGE_TOKENS, BLOCK_N, STAGES)
        p = _tile_weights(s, t, alpha, n_cached, n_prefix_tiles, hi_first, hi, key_offsets, dtype, p_layout,
                          BLOCK_N)
        acc = warpgroup_mma(p, v_ring.index(slot), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    mbarrier.arrive(empty.index((my_tiles + STAGES - 1) % STAGES), pred=my_tiles > 0)
    for t in range(my_tiles, n_tiles):  # tiles only the other warpgroup's rows see
        slot = t % STAGES
        mbarrier.wait(ready.index(slot), (t // STAGES) & 1)
        mbarrier.arrive(empty.index(slot))
        if LOADER:
            next_row = _refill(t + LOOKAHEAD, next_row, n_tiles, k_desc, v_desc, prefix_k_desc, prefix_v_desc,
                               k_ring, v_ring, ready, empty, page_table_ptr, page_rows, prefix_row, row_start,
                               column, n_prefix_tiles, PREFIX_MODE, PAGE_TOKENS, BLOCK_N, STAGES)

    rows = first_row + gl.arange(0, HALF_M, layout=gl.SliceLayout(1, acc_layout))
    columns = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
    row_ok = rows < n_rows
    token = (row_start + rows).to(gl.int64)
    is_candidate = row_ok & (rows >= n_new + n_rt)
    v_diag = gl.load(v_ptr + token[:, None] * stride_vt + column + columns[None, :],
                     mask=is_candidate[:, None] & (columns < HEAD_DIM)[None, :], other=0.0)
    acc += gl.convert_layout(diag, gl.SliceLayout(1, acc_layout))[:, None] * v_diag.to(gl.float32)
    if VISIBLE_NORM:
        visible = _visible_end(rows, n_cached, n_new, n_rt, CAUSAL_STATIC) + is_candidate.to(gl.int32)
        acc = acc / gl.maximum(visible, 1).to(gl.float32)[:, None]
    else:
        acc = acc * inv_norm_constant
    gl.store(out_ptr + token[:, None] * stride_ot + column + columns[None, :], acc.to(dtype),
             mask=row_ok[:, None] & (columns < HEAD_DIM)[None, :])


@gluon.jit
def _hstu_gluon_kernel(
    q_desc, k_desc, v_desc, prefix_k_desc, prefix_v_desc,
    q_ptr, k_ptr, v_ptr, out_ptr, stride_qt, stride_kt, stride_vt, stride_ot,
    offsets_ptr, n_new_static_ptr, n_rt_ptr, prefix_offsets_ptr, prefix_lengths_ptr, page_table_ptr,
    stride_page_table, page_rows, n_requests, alpha, inv_norm_constant,
    PREFIX_MODE: gl.constexpr, PAGE_TOKENS: gl.constexpr, CAUSAL_STATIC: gl.constexpr, VISIBLE_NORM: gl.constexpr,
    HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CHUNK_B: gl.constexpr,
    WORKER_REGISTERS: gl.constexpr,
):
    head = gl.program_id(0)
    b, block = _locate_block(offsets_ptr, n_requests, gl.program_id(1), CHUNK_B)
    if b < n_requests:
        row_start = gl.load(offsets_ptr + b)
        n_rows = gl.load(offsets_ptr + b + 1) - row_start
        n_new = gl.load(n_new_static_ptr + b)
        n_rt = gl.load(n_rt_ptr + b)
        n_cached = 0
        prefix_row = 0
        if PREFIX_MODE != 0:
            n_cached = gl.load(prefix_lengths_ptr + b)
        if PREFIX_MODE == 1:
            prefix_row = gl.load(prefix_offsets_ptr + b)
        block_row = block * BLOCK_M
        n_tiles = _tile_count(block_row, gl.minimum(block_row + BLOCK_M, n_rows) - 1, n_cached, n_new, n_rt,
                              BLOCK_N, CAUSAL_STATIC)
        request_pages = page_table_ptr + b.to(gl.int64) * stride_page_table

        dtype: gl.constexpr = q_desc.dtype
        q_smem = gl.allocate_shared_memory(dtype, [2, HALF_M, HEAD_DIM], q_desc.layout)
        k_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)
        mbarrier.init(q_ready, count=1)

        gl.warp_specialize([
            (_warpgroup, (0, q_desc, k_desc, v_desc, prefix_k_desc, prefix_v_desc, q_smem, k_ring, v_ring, ready,
                          empty, q_ready, q_ptr, k_ptr, v_ptr, out_ptr, stride_qt, stride_kt, stride_vt, stride_ot,
                          request_pages, page_rows, prefix_row, head, row_start, block_row, n_rows, n_cached,
                          n_new, n_rt, n_tiles, alpha, inv_norm_constant, True, PREFIX_MODE, PAGE_TOKENS,
                          CAUSAL_STATIC, VISIBLE_NORM, HEAD_DIM, BLOCK_N, STAGES)),
            (_warpgroup, (1, q_desc, k_desc, v_desc, prefix_k_desc, prefix_v_desc, q_smem, k_ring, v_ring, ready,
                          empty, q_ready, q_ptr, k_ptr, v_ptr, out_ptr, stride_qt, stride_kt, stride_vt, stride_ot,
                          request_pages, page_rows, prefix_row, head, row_start, block_row, n_rows, n_cached,
                          n_new, n_rt, n_tiles, alpha, inv_norm_constant, False, PREFIX_MODE, PAGE_TOKENS,
                          CAUSAL_STATIC, VISIBLE_NORM, HEAD_DIM, BLOCK_N, STAGES)),
        ], [4], [WORKER_REGISTERS])


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}
SHARED_MEMORY_LIMIT = 227 * 1024  # bytes one Hopper CTA may use


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    """Compute capability of a CUDA device (-1: the current one)."""
    return torch.cuda.get_device_capability(None if device_index < 0 else device_index)


def shared_memory_bytes(head_dim: int, config: GluonAttentionConfig) -> int:
    """Q of both warpgroups, the K/V ring and ~2 KB of barriers and layout-conversion scratch (16-bit)."""
    return 2 * (2 * ROWS_PER_WARPGROUP + 2 * config.stages * config.block_n) * head_dim + 2048


def _token_rows(x: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """Shape and strides of [..., H, D] with dense heads viewed as 2-d [tokens, H * D], or None when the
    heads are not dense within a token row or TMA cannot address it (16-byte aligned base and row stride)."""
    *lead, heads, dim = x.shape
    tokens = x.numel() // max(heads * dim, 1)
    if x.stride(-1) != 1 or x.stride(-2) != dim or x.data_ptr() % 16 or (x.stride(-3) * x.element_size()) % 16:
        return None
    return [tokens, heads * dim], [x.stride(-3), 1]


def _descriptor(x: torch.Tensor, shape: list[int], strides: list[int], block_rows: int) -> TensorDescriptor:
    block = [block_rows, x.shape[-1]]
    return TensorDescriptor(x, shape, strides, block, gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[x.dtype]))


def _page_rows_view(pages: torch.Tensor) -> tuple[list[int], list[int], int] | None:
    """[pages, P, H, D] (possibly a strided slice of a [pages, 2, P, H, D] pool) as [rows, H * D]: page p's
    token j is row p * page_rows + j. None unless tokens and heads are dense and the page stride is whole rows."""
    n_pages, page_tokens, heads, dim = pages.shape
    width = heads * dim
    if not n_pages or pages.stride()[1:] != (width, dim, 1) or pages.stride(0) % width or pages.data_ptr() % 16:
        return None
    page_rows = pages.stride(0) // width
    return [(n_pages - 1) * page_rows + page_tokens, width], [width, 1], page_rows


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix | None,
                       config: GluonAttentionConfig = DEFAULT_GLUON_CONFIG) -> str | None:
    """Why the Gluon kernel cannot take these inputs (None when it can)."""
    if not q.is_cuda or _capability(q.device.index if q.device.index is not None else -1) != (9, 0):
        return "needs a CUDA sm_90 device"
    if not triton.__version__.startswith(GLUON_API_VERSION):
        return f"written for Triton {GLUON_API_VERSION}x's Gluon API (it changes between releases)"
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        return "q, k, v must share one [T, H, D] shape"
    if q.dtype not in _GL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return "q, k, v must be float16 or bfloat16 alike"
    if q.shape[2] not in HEAD_DIMS:
        return f"head_dim must be one of {HEAD_DIMS}"
    if shared_memory_bytes(q.shape[2], config) > SHARED_MEMORY_LIMIT:
        return f"{config} needs more shared memory than a CTA has at head_dim {q.shape[2]}"
    if q.shape[0] == 0 or any(_token_rows(t) is None for t in (q, k, v)):
        return "q, k, v need dense heads per token row and 16-byte aligned rows"
    if isinstance(prefix, PagedPrefix):
        if prefix.k_pages.dtype != q.dtype or prefix.v_pages.dtype != q.dtype:
            return "the page pool must have q's dtype"
        if prefix.page_tokens % config.block_n:
            return f"the page size must be a multiple of {config.block_n}"
        views = [_page_rows_view(pages) for pages in (prefix.k_pages, prefix.v_pages)]
        if any(view is None for view in views) or views[0][2] != views[1][2]:
            return "the pages must hold dense token rows with one page stride for K and V"
    elif isinstance(prefix, ContiguousPrefix):
        if prefix.k.dtype != q.dtype or prefix.v.dtype != q.dtype:
            return "the prefix must have q's dtype"
        if prefix.k.shape[0] and any(_token_rows(t) is None for t in (prefix.k, prefix.v)):
            return "the prefix needs dense heads per token row and 16-byte aligned rows"
    elif prefix is not None:
        return f"unknown prefix type {type(prefix).__name__}"
    return None


def hstu_attention_gluon(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
    n_new_static: torch.Tensor, n_rt: torch.Tensor, spec: AttentionSpec,
    prefix: Prefix | None = None, config: GluonAttentionConfig = DEFAULT_GLUON_CONFIG,
) -> torch.Tensor:
    """Same contract as `hstu_attention_reference`; returns a new [T, H, D] tensor in q's dtype."""
    reason = unsupported_reason(q, k, v, prefix, config)
    if reason is not None:
        raise ValueError(f"hstu_attention_gluon: {reason}")
    return launch_gluon_attention(q, k, v, offsets, n_new_static, n_rt, spec, prefix, config)


def launch_gluon_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
    n_new_static: torch.Tensor, n_rt: torch.Tensor, spec: AttentionSpec,
    prefix: Prefix | None = None, config: GluonAttentionConfig = DEFAULT_GLUON_CONFIG,
) -> torch.Tensor:
    """`hstu_attention_gluon` on inputs `unsupported_reason` already accepted (the dispatcher's path)."""
    total, heads, head_dim = q.shape
    n_requests = offsets.numel() - 1
    out = torch.empty((total, heads, head_dim), dtype=q.dtype, device=q.device)
    if n_requests == 0:
        return out
    device = q.device
    offsets32 = offsets.to(device=device, dtype=torch.int32)
    block_n = config.block_n
    q_desc = _descriptor(q, *_token_rows(q), ROWS_PER_WARPGROUP)
    k_desc = _descriptor(k, *_token_rows(k), block_n)
    v_desc = _descriptor(v, *_token_rows(v), block_n)

    mode, page_tokens, page_rows, page_table, page_table_stride = _PREFIX_NONE, block_n, 0, offsets32, 0
    prefix_k_desc, prefix_v_desc = k_desc, v_desc
    prefix_offsets = prefix_lengths = offsets32
    if isinstance(prefix, PagedPrefix):
        mode, page_tokens = _PREFIX_PAGED, prefix.page_tokens
        (shape, strides, page_rows), (v_shape, v_strides, _) = map(_page_rows_view, (prefix.k_pages, prefix.v_pages))
        prefix_k_desc = _descriptor(prefix.k_pages, shape, strides, block_n)
        prefix_v_desc = _descriptor(prefix.v_pages, v_shape, v_strides, block_n)
        prefix_lengths = prefix.lengths_.to(device=device, dtype=torch.int32)
        page_table = prefix.page_table.to(device=device)
        if page_table.stride(-1) != 1:
            page_table = page_table.contiguous()
        page_table_stride = page_table.stride(0)
    elif isinstance(prefix, ContiguousPrefix):
        mode = _PREFIX_CONTIGUOUS
        prefix_offsets = prefix.offsets.to(device=device, dtype=torch.int32)
        prefix_lengths = prefix_offsets[1:] - prefix_offsets[:-1]
        if prefix.k.shape[0]:
            prefix_k_desc = _descriptor(prefix.k, *_token_rows(prefix.k), block_n)
            prefix_v_desc = _descriptor(prefix.v, *_token_rows(prefix.v), block_n)

    n_blocks = (total + n_requests * (ROWS_PER_PROGRAM - 1)) // ROWS_PER_PROGRAM
    _hstu_gluon_kernel[(heads, n_blocks)](
        q_desc, k_desc, v_desc, prefix_k_desc, prefix_v_desc,
        q, k, v, out, q.stride(0), k.stride(0), v.stride(0), out.stride(0),
        offsets32, n_new_static.to(device=device, dtype=torch.int32), n_rt.to(device=device, dtype=torch.int32),
        prefix_offsets, prefix_lengths, page_table, page_table_stride, page_rows,
        n_requests, float(spec.alpha), 1.0 / float(spec.norm_constant),
        PREFIX_MODE=mode, PAGE_TOKENS=page_tokens, CAUSAL_STATIC=bool(spec.causal_static),
        VISIBLE_NORM=spec.normalizer == "visible", HEAD_DIM=head_dim, BLOCK_N=block_n, STAGES=config.stages,
        CHUNK_B=min(1024, max(64, triton.next_power_of_2(n_requests))),
        WORKER_REGISTERS=config.worker_registers,
        num_warps=4,
    )
    return out
