"""Triton forward kernel for jagged HSTU attention with the MTGR mask (semantics: hstu_attention_ref.py).

Every computed row sees a *contiguous* key range [0, hi) plus, for candidates, its own key:

    static row, bidirectional:  hi = N                (N = n_cached + n_new_static)
    static row, causal history: hi = position + 1
    R row:                      hi = position + 1
    candidate row:              hi = N + n_rt, plus the diagonal key

so one program (a block of BLOCK_M consecutive rows of one request, one head) walks, in order:
  1. the cached prefix [0, n_cached) from a ContiguousPrefix or straight from the page pool through
     the page table (every computed row sees the whole prefix, so no mask is needed);
  2. computed keys up to the smallest `hi` of its rows, unmasked;
  3. computed keys from there to the largest `hi` of its rows, masked per row;
  4. the candidates' diagonal, as a row-wise dot product (no wasted key tile).
Static rows therefore never visit R or C keys and candidates never visit other candidates.
Keys beyond a range are loaded as zeros: silu(0) = 0, so they add nothing.

Prefix loads: through pointers (any page size / head_dim), or with `tma` through two tensor descriptors
over the pool viewed as [rows, H * D] (one page's K or V for one head is a dense BLOCK_N x D box: TMA on
Hopper, no per-element address arithmetic). `split_k` > 1 gives each row block several programs (axis 2),
each over a slice of the prefix tiles, the first also doing steps 2-4; HSTU rows are sums with no softmax,
so the slices add exactly: they are atomically added into an fp32 output, cast at the end. That fills
the GPU when batch x heads x row blocks is below a few waves (B=16 on 132 SMs).

Block schedule: program w of axis 0 finds its (request, row block) by a cumulative count of
ceil(rows_b / BLOCK_M) over the request offsets, inside the kernel (no host sync, no extra launch).
Axis 0 has floor((T + B * (BLOCK_M - 1)) / BLOCK_M) programs, an upper bound on the real block
count; the at most B surplus programs find no rows and exit after the lookup. Axis 1 is the head
(with `heads_inner`, axes 0 and 1 swap: the heads of one row block run side by side), axis 2 the split.
Tail tiles (`tail_m`): a request's last block, when it holds at most tail_m rows, runs the same body
with tail_m-row tiles (a branch on the block's row count picks one of two compiled tile heights), so
200 candidates take 3 x 64 + 16 rows of tile work instead of 4 x 64; the block count is unchanged.
Accumulation is in fp32; the 1/n_i normaliser is applied once to the accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.hstu_attention_ref import AttentionSpec, ContiguousPrefix, PagedPrefix, Prefix
from kernels.triton_support import check_triton_device

MAX_HEAD_DIM = 256
_PREFIX_NONE, _PREFIX_CONTIGUOUS, _PREFIX_PAGED = 0, 1, 2


@dataclass(frozen=True)
class AttentionConfig:
    """Tile shape and launch parameters of the attention kernel."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    fast_silu: bool = True  # tanh.approx SiLU for 16-bit inputs on CUDA
    tma: bool = False  # paged prefix K/V through tensor descriptors (whole page rows, Hopper TMA on CUDA)
    split_k: int = 1  # programs per row block, each over a slice of the prefix; partial sums added atomically
    heads_inner: bool = False  # launch a row block's heads next to each other (they read the same K/V rows)
    tail_m: int = 0  # > 0: a request's last block, when it has at most tail_m rows, runs as a tail_m-row tile
    maxnreg: int | None = None  # CUDA register cap per thread (more programs per SM; may spill)

    def __post_init__(self) -> None:
        if self.tail_m and not (16 <= self.tail_m < self.block_m and self.tail_m & (self.tail_m - 1) == 0):
            raise ValueError(f"tail_m must be 0 or a power of two in [16, block_m), got {self.tail_m}")


def default_config(head_dim: int, element_size: int, paged: bool) -> AttentionConfig:
    """Tile choice per head size, input width and prefix source (swept on the H200, reports/KERNELS.md).

    Shared memory holds the query tile plus num_stages (K, V) tiles; fp32 inputs get smaller tiles.
    For head_dim 256 in bf16: 128x32 tiles with 3 stages are fastest on the full forward (340 TFLOP/s)
    and contiguous prefixes. Paged prefixes: 64x32 tiles, 4 warps, 2 stages (two programs per SM), one
    page's K/V per tile through tensor descriptors, heads of a row block launched side by side: fastest
    at every batch from 16 to 128 on both cached shapes (B=64: 0.223 ms for 200 candidates over 1132
    keys, 0.293 ms for R+C over 1032, against 0.252 and 0.389 with the 128x64 pointer tiles before).
    """
    if element_size > 2:
        return AttentionConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    if head_dim > 128:
        if paged:
            return AttentionConfig(block_m=64, block_n=32, num_warps=4, num_stages=2, tma=True, heads_inner=True)
        return AttentionConfig(block_m=128, block_n=32, num_warps=8, num_stages=3)
    return AttentionConfig(block_m=128, block_n=64, num_warps=4 if head_dim <= 64 else 8, num_stages=3)


@triton.jit
def _silu(x, FAST_SILU: tl.constexpr):
    """silu(x) in fp32. FAST_SILU: x/2 * (1 + tanh(x/2)) with the one-instruction tanh.approx (CUDA,
    relative error ~2^-11, below bf16/fp16 rounding); else x / (1 + 2^(-x log2 e))."""
    if FAST_SILU:
        half = x * 0.5
        tanh = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [half], dtype=tl.float32,
                                         is_pure=True, pack=1)
        return half + half * tanh
    else:
        return x / (1.0 + tl.exp2(x * -1.4426950408889634))


@triton.jit
def _silu_weights(q, k, alpha, DOT_PRECISION: tl.constexpr, FAST_SILU: tl.constexpr):
    """silu(alpha * q k^T) in fp32, [BLOCK_M, BLOCK_N]."""
    return _silu(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * alpha, FAST_SILU)


@triton.jit
def _locate_block(offsets_ptr, n_requests, work_index, BLOCK_M: tl.constexpr, CHUNK_B: tl.constexpr):
    """(request, row block) of program `work_index`; request == n_requests when past the last block."""
    requests_before = 0
    blocks_before = 0
    blocks_done = 0
    for chunk_start in range(0, n_requests, CHUNK_B):
        idx = chunk_start + tl.arange(0, CHUNK_B)
        valid = idx < n_requests
        row_lo = tl.load(offsets_ptr + idx, mask=valid, other=0)
        row_hi = tl.load(offsets_ptr + idx + 1, mask=valid, other=0)
        n_blocks = (row_hi - row_lo + BLOCK_M - 1) // BLOCK_M
        block_ends = blocks_done + tl.cumsum(n_blocks, 0)
        ended = (block_ends <= work_index) & valid
        requests_before += tl.sum(ended.to(tl.int32), 0)
        blocks_before += tl.sum(tl.where(ended, n_blocks, 0), 0)
        blocks_done += tl.sum(n_blocks, 0)
    return requests_before, work_index - blocks_before


@triton.jit
def _hstu_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr,
    offsets_ptr, n_new_static_ptr, n_rt_ptr,
    prefix_k_ptr, prefix_v_ptr, prefix_offsets_ptr, prefix_lengths_ptr, page_table_ptr,
    prefix_k_desc, prefix_v_desc, page_rows,
    n_requests, head_dim, alpha, inv_norm_constant,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_pk_token, stride_pk_page, stride_pk_h,
    stride_pv_token, stride_pv_page, stride_pv_h,
    stride_page_table,
    PREFIX_MODE: tl.constexpr, PAGE_TOKENS: tl.constexpr,
    CAUSAL_STATIC: tl.constexpr, VISIBLE_NORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_B: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FAST_SILU: tl.constexpr, USE_TMA: tl.constexpr,
    SPLIT_K: tl.constexpr, HEADS_INNER: tl.constexpr, TAIL_M: tl.constexpr,
):
    if HEADS_INNER:
        head, work = tl.program_id(0), tl.program_id(1)
    else:
        head, work = tl.program_id(1), tl.program_id(0)
    split = tl.program_id(2)  # HSTU rows are plain sums (no softmax): prefix slices add up exactly
    request, block = _locate_block(offsets_ptr, n_requests, work, BLOCK_M, CHUNK_B)
    in_range = request < n_requests
    b = tl.minimum(request, n_requests - 1)
    row_start = tl.load(offsets_ptr + b)
    n_rows = tl.where(in_range, tl.load(offsets_ptr + b + 1) - row_start, 0)
    first_row = block * BLOCK_M
    # (written out three times: Triton needs the tile height as a compile-time constant per call)
    if TAIL_M == 0:
        _attend_rows(q_ptr, k_ptr, v_ptr, out_ptr, n_new_static_ptr, n_rt_ptr,
            prefix_k_ptr, prefix_v_ptr, prefix_offsets_ptr, prefix_lengths_ptr, page_table_ptr,
            prefix_k_desc, prefix_v_desc, page_rows, head_dim, alpha, inv_norm_constant,
            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
            stride_pk_token, stride_pk_page, stride_pk_h, stride_pv_token, stride_pv_page, stride_pv_h,
            stride_page_table, head, split, b, row_start, n_rows, first_row,
            PREFIX_MODE, PAGE_TOKENS, CAUSAL_STATIC, VISIBLE_NORM, BLOCK_M, BLOCK_N, BLOCK_D,
            DOT_PRECISION, FAST_SILU, USE_TMA, SPLIT_K)
    elif n_rows - first_row <= TAIL_M:  # the request's last block (or no rows at all): a short tile
        _attend_rows(q_ptr, k_ptr, v_ptr, out_ptr, n_new_static_ptr, n_rt_ptr,
            prefix_k_ptr, prefix_v_ptr, prefix_offsets_ptr, prefix_lengths_ptr, page_table_ptr,
            prefix_k_desc, prefix_v_desc, page_rows, head_dim, alpha, inv_norm_constant,
            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
            stride_pk_token, stride_pk_page, stride_pk_h, stride_pv_token, stride_pv_page, stride_pv_h,
            stride_page_table, head, split, b, row_start, n_rows, first_row,
            PREFIX_MODE, PAGE_TOKENS, CAUSAL_STATIC, VISIBLE_NORM, TAIL_M, BLOCK_N, BLOCK_D,
            DOT_PRECISION, FAST_SILU, USE_TMA, SPLIT_K)
    else:
        _attend_rows(q_ptr, k_ptr, v_ptr, out_ptr, n_new_static_ptr, n_rt_ptr,
            prefix_k_ptr, prefix_v_ptr, prefix_offsets_ptr, prefix_lengths_ptr, page_table_ptr,
            prefix_k_desc, prefix_v_desc, page_rows, head_dim, alpha, inv_norm_constant,
            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
            stride_pk_token, stride_pk_page, stride_pk_h, stride_pv_token, stride_pv_page, stride_pv_h,
            stride_page_table, head, split, b, row_start, n_rows, first_row,
            PREFIX_MODE, PAGE_TOKENS, CAUSAL_STATIC, VISIBLE_NORM, BLOCK_M, BLOCK_N, BLOCK_D,
            DOT_PRECISION, FAST_SILU, USE_TMA, SPLIT_K)


@triton.jit
def _attend_rows(
    q_ptr, k_ptr, v_ptr, out_ptr, n_new_static_ptr, n_rt_ptr,
    prefix_k_ptr, prefix_v_ptr, prefix_offsets_ptr, prefix_lengths_ptr, page_table_ptr,
    prefix_k_desc, prefix_v_desc, page_rows, head_dim, alpha, inv_norm_constant,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_pk_token, stride_pk_page, stride_pk_h, stride_pv_token, stride_pv_page, stride_pv_h,
    stride_page_table, head, split, b, row_start, n_rows, first_row,
    PREFIX_MODE: tl.constexpr, PAGE_TOKENS: tl.constexpr, CAUSAL_STATIC: tl.constexpr, VISIBLE_NORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FAST_SILU: tl.constexpr, USE_TMA: tl.constexpr, SPLIT_K: tl.constexpr,
):
    """Rows [first_row, first_row + BLOCK_M) of request b (those < n_rows), one head, one prefix split."""
    n_new = tl.load(n_new_static_ptr + b)
    n_rt = tl.load(n_rt_ptr + b)
    if PREFIX_MODE == 0:
        n_cached = 0
    else:
        n_cached = tl.load(prefix_lengths_ptr + b)
    n_static = n_cached + n_new

    rows = first_row + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    position = n_cached + rows
    row_static = rows < n_new
    row_cand = rows >= n_new + n_rt
    if CAUSAL_STATIC:
        static_hi = position + 1
    else:
        static_hi = tl.zeros_like(position) + n_static
    hi = tl.where(row_static, static_hi, tl.where(row_cand, n_static + n_rt, position + 1))
    hi_max = tl.max(tl.where(row_ok, hi, 0), 0)
    hi_min = tl.minimum(tl.min(tl.where(row_ok, hi, 2147483647), 0), hi_max)

    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    token_rows = (row_start + rows).to(tl.int64)
    q_mask = row_ok[:, None] & dim_ok[None, :]
    q = tl.load(q_ptr + token_rows[:, None] * stride_qt + head * stride_qh + dims[None, :], mask=q_mask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # 1. cached prefix: every computed row sees all of it; split `split` of SPLIT_K takes one slice of tiles.
    prefix_end = tl.minimum(n_cached, hi_max)
    split_tiles = tl.cdiv(tl.cdiv(prefix_end, BLOCK_N), SPLIT_K)
    prefix_lo = split * split_tiles * BLOCK_N
    prefix_hi = tl.minimum(prefix_end, prefix_lo + split_tiles * BLOCK_N)
    if PREFIX_MODE == 2 and USE_TMA:
        # BLOCK_N divides the page and BLOCK_D == head_dim: each tile is BLOCK_N consecutive rows of one
        # page in the [rows, H * D] view of the pool; keys past the prefix are zeroed in the weights (pool
        # slots past an entry hold finite values: the pool is zero-initialised and only holds K/V).
        for start in range(prefix_lo, prefix_hi, BLOCK_N):
            page = tl.load(page_table_ptr + b * stride_page_table + start // PAGE_TOKENS)
            row = page * page_rows + start % PAGE_TOKENS
            k = prefix_k_desc.load([row, head * BLOCK_D])
            v = prefix_v_desc.load([row, head * BLOCK_D])
            weights = _silu_weights(q, k.to(q.dtype), alpha, DOT_PRECISION, FAST_SILU)
            weights = tl.where((start + tl.arange(0, BLOCK_N) < prefix_end)[None, :], weights, 0.0)
            acc += tl.dot(weights.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
    elif PREFIX_MODE != 0:
        if PREFIX_MODE == 1:
            prefix_base = tl.load(prefix_offsets_ptr + b)
        for start in range(prefix_lo, prefix_hi, BLOCK_N):
            key_pos = start + tl.arange(0, BLOCK_N)
            key_ok = key_pos < prefix_end
            if PREFIX_MODE == 2:
                if PAGE_TOKENS % BLOCK_N == 0:  # the block lies in one page: one table entry
                    page = tl.load(page_table_ptr + b * stride_page_table + start // PAGE_TOKENS).to(tl.int64)
                else:
                    page = tl.load(page_table_ptr + b * stride_page_table + key_pos // PAGE_TOKENS, mask=key_ok, other=0)
                    page = page.to(tl.int64)
                slot = key_pos % PAGE_TOKENS
                k_rows = page * stride_pk_page + slot * stride_pk_token
                v_rows = page * stride_pv_page + slot * stride_pv_token
            else:
                token = (prefix_base + key_pos).to(tl.int64)
                k_rows = token * stride_pk_token
                v_rows = token * stride_pv_token
            kv_mask = key_ok[:, None] & dim_ok[None, :]
            k = tl.load(prefix_k_ptr + k_rows[:, None] + head * stride_pk_h + dims[None, :], mask=kv_mask, other=0.0)
            v = tl.load(prefix_v_ptr + v_rows[:, None] + head * stride_pv_h + dims[None, :], mask=kv_mask, other=0.0)
            weights = _silu_weights(q, k.to(q.dtype), alpha, DOT_PRECISION, FAST_SILU)
            acc += tl.dot(weights.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)

    # 2. computed keys every row of the block sees (split 0 does 2-4).
    owner = split == 0
    full_end = tl.where(owner, hi_min - n_cached, 0)
    for start in range(0, full_end, BLOCK_N):
        key_idx = start + tl.arange(0, BLOCK_N)
        key_rows = (row_start + key_idx).to(tl.int64)
        kv_mask = (key_idx < full_end)[:, None] & dim_ok[None, :]
        k = tl.load(k_ptr + key_rows[:, None] * stride_kt + head * stride_kh + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + key_rows[:, None] * stride_vt + head * stride_vh + dims[None, :], mask=kv_mask, other=0.0)
        weights = _silu_weights(q, k, alpha, DOT_PRECISION, FAST_SILU)
        acc += tl.dot(weights.to(v.dtype), v, input_precision=DOT_PRECISION)

    # 3. computed keys only some rows see (causal edges), masked per row.
    masked_end = tl.where(owner, hi_max - n_cached, 0)
    for start in range(tl.maximum(full_end, 0), masked_end, BLOCK_N):
        key_idx = start + tl.arange(0, BLOCK_N)
        key_rows = (row_start + key_idx).to(tl.int64)
        kv_mask = (key_idx < masked_end)[:, None] & dim_ok[None, :]
        k = tl.load(k_ptr + key_rows[:, None] * stride_kt + head * stride_kh + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + key_rows[:, None] * stride_vt + head * stride_vh + dims[None, :], mask=kv_mask, other=0.0)
        weights = _silu_weights(q, k, alpha, DOT_PRECISION, FAST_SILU)
        weights = tl.where((n_cached + key_idx)[None, :] < hi[:, None], weights, 0.0)
        acc += tl.dot(weights.to(v.dtype), v, input_precision=DOT_PRECISION)

    # 4. each candidate's own key.
    cand_mask = (row_ok & row_cand & (tl.zeros_like(rows) + split == 0))[:, None] & dim_ok[None, :]
    k_diag = tl.load(k_ptr + token_rows[:, None] * stride_kt + head * stride_kh + dims[None, :], mask=cand_mask, other=0.0)
    v_diag = tl.load(v_ptr + token_rows[:, None] * stride_vt + head * stride_vh + dims[None, :], mask=cand_mask, other=0.0)
    x = tl.sum(q.to(tl.float32) * k_diag.to(tl.float32), 1) * alpha
    acc += _silu(x, FAST_SILU)[:, None] * v_diag.to(tl.float32)

    if VISIBLE_NORM:
        visible = hi + row_cand.to(tl.int32)
        acc = acc / tl.maximum(visible, 1).to(tl.float32)[:, None]
    else:
        acc = acc * inv_norm_constant
    out_addr = out_ptr + token_rows[:, None] * stride_ot + head * stride_oh + dims[None, :]
    if SPLIT_K == 1:
        tl.store(out_addr, acc.to(out_ptr.dtype.element_ty), mask=q_mask)
    else:  # fp32 output, zeroed by the caller
        tl.atomic_add(out_addr, acc, mask=q_mask, sem="relaxed")


def _inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor) -> None:
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one [T, H, D] shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {q.shape[2]} exceeds the kernel's maximum {MAX_HEAD_DIM}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of float16/bfloat16/float32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError("offsets must be a 1-d tensor [B+1]")


def _page_descriptors(k_pages: torch.Tensor, v_pages: torch.Tensor, cfg: AttentionConfig, block_d: int):
    """(K descriptor, V descriptor, page stride in token rows) over the pages viewed as [rows, H * D], or
    None when the pages do not allow it (head_dim not a power of two >= 16, BLOCK_N not dividing the page,
    tokens not dense, strides not 16-byte multiples); the kernel then loads through pointers."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    n_pages, page_tokens, heads, head_dim = k_pages.shape
    width = heads * head_dim
    row_bytes = width * k_pages.element_size()
    for pages in (k_pages, v_pages):
        if pages.stride()[1:] != (width, head_dim, 1) or pages.stride(0) % width or pages.data_ptr() % 16:
            return None
    if head_dim != block_d or page_tokens % cfg.block_n or row_bytes % 16 or k_pages.stride(0) != v_pages.stride(0):
        return None
    page_rows = k_pages.stride(0) // width
    rows = (n_pages - 1) * page_rows + page_tokens
    block = [cfg.block_n, block_d]
    return (TensorDescriptor(k_pages, [rows, width], [width, 1], block),
            TensorDescriptor(v_pages, [rows, width], [width, 1], block), page_rows)


def hstu_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
    n_new_static: torch.Tensor, n_rt: torch.Tensor, spec: AttentionSpec,
    prefix: Prefix | None = None, config: AttentionConfig | None = None,
) -> torch.Tensor:
    """Same contract as `hstu_attention_reference`; returns a new [T, H, D] tensor in q's dtype."""
    _validate(q, k, v, offsets)
    check_triton_device(q, _hstu_fwd_kernel)
    q, k, v = _inner_contiguous(q), _inner_contiguous(k), _inner_contiguous(v)
    total, heads, head_dim = q.shape
    n_requests = offsets.numel() - 1
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if total == 0 or n_requests == 0:
        return out
    device = q.device
    paged = isinstance(prefix, PagedPrefix)
    cfg = config or default_config(head_dim, q.element_size(), paged)
    offsets32 = offsets.to(device=device, dtype=torch.int32)
    n_new32 = n_new_static.to(device=device, dtype=torch.int32)
    n_rt32 = n_rt.to(device=device, dtype=torch.int32)

    mode, page_tokens = _PREFIX_NONE, 1
    prefix_k = prefix_v = q
    prefix_offsets = prefix_lengths = page_table = offsets32
    pk_strides = pv_strides = (0, 0, 0)
    page_table_stride = 0
    if isinstance(prefix, ContiguousPrefix):
        mode = _PREFIX_CONTIGUOUS
        prefix_k, prefix_v = _inner_contiguous(prefix.k), _inner_contiguous(prefix.v)
        prefix_offsets = prefix.offsets.to(device=device, dtype=torch.int32)
        prefix_lengths = prefix_offsets[1:] - prefix_offsets[:-1]
        pk_strides = (prefix_k.stride(0), 0, prefix_k.stride(1))
        pv_strides = (prefix_v.stride(0), 0, prefix_v.stride(1))
    elif paged:
        mode, page_tokens = _PREFIX_PAGED, prefix.page_tokens
        prefix_k, prefix_v = _inner_contiguous(prefix.k_pages), _inner_contiguous(prefix.v_pages)
        prefix_lengths = prefix.lengths_.to(device=device, dtype=torch.int32)
        page_table = prefix.page_table.to(device=device)
        if page_table.stride(-1) != 1:
            page_table = page_table.contiguous()
        page_table_stride = page_table.stride(0)
        pk_strides = (prefix_k.stride(1), prefix_k.stride(0), prefix_k.stride(2))
        pv_strides = (prefix_v.stride(1), prefix_v.stride(0), prefix_v.stride(2))
    elif prefix is not None:
        raise TypeError(f"prefix must be ContiguousPrefix, PagedPrefix or None, got {type(prefix).__name__}")
    block_d = max(16, triton.next_power_of_2(head_dim))
    descriptors = _page_descriptors(prefix_k, prefix_v, cfg, block_d) if paged and cfg.tma else None
    use_tma = descriptors is not None
    k_desc, v_desc, page_rows = descriptors if use_tma else (None, None, 0)

    split_k = cfg.split_k if prefix is not None else 1
    if split_k > 1:
        out = torch.zeros(q.shape, dtype=torch.float32, device=device)
    n_blocks = (total + n_requests * (cfg.block_m - 1)) // cfg.block_m
    grid = (heads, n_blocks, split_k) if cfg.heads_inner else (n_blocks, heads, split_k)
    _hstu_fwd_kernel[grid](
        q, k, v, out,
        offsets32, n_new32, n_rt32,
        prefix_k, prefix_v, prefix_offsets, prefix_lengths, page_table,
        k_desc, v_desc, page_rows,
        n_requests, head_dim, float(spec.alpha), 1.0 / float(spec.norm_constant),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        *pk_strides, *pv_strides, page_table_stride,
        PREFIX_MODE=mode, PAGE_TOKENS=page_tokens,
        CAUSAL_STATIC=bool(spec.causal_static), VISIBLE_NORM=spec.normalizer == "visible",
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
        CHUNK_B=min(1024, max(64, triton.next_power_of_2(n_requests))),  # >= 64: one compile for B <= 64
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        FAST_SILU=cfg.fast_silu and q.is_cuda and q.dtype != torch.float32, USE_TMA=use_tma,
        SPLIT_K=split_k, HEADS_INNER=cfg.heads_inner, TAIL_M=cfg.tail_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **({} if cfg.maxnreg is None else {"maxnreg": cfg.maxnreg}),
    )
    return out if split_k == 1 else out.to(q.dtype)
