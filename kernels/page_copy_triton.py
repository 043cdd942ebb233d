"""Triton page copy between a contiguous [2, T, H, D] buffer and one pool layer [n_pages, 2, P, H, D].

Semantics: page_copy_ref.py (slot = page * P + position-in-page). One launch per call moves K and V of
all T tokens: program (t_block, kv, e_block) copies BLOCK_T tokens x BLOCK_E of the H*D elements
of one token, which are contiguous on both sides. Both directions share one kernel: `TO_PAGES`
picks whether the slot-indexed side is the destination (scatter) or the source (gather).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.triton_support import check_triton_device


@dataclass(frozen=True)
class PageCopyConfig:
    """Elements one program moves: BLOCK_T tokens x BLOCK_E of a token's H * D elements."""

    block_t: int
    block_e: int
    num_warps: int
    evict_first: bool = False  # stream the source past L2 (it is read once)


def default_page_copy_config(token_elems: int) -> PageCopyConfig:
    """4096 elements a program, up to 512 of a token: 88-89% of D2D on the H200 in device time; the other
    tiles swept were within noise of it (reports/KERNELS.md)."""
    block_e = min(512, max(16, triton.next_power_of_2(token_elems)))
    return PageCopyConfig(block_t=max(1, 4096 // block_e), block_e=block_e, num_warps=4)


@triton.jit
def _page_copy_kernel(
    buffer_ptr, pool_ptr, slots_ptr,
    n_tokens, token_elems,
    stride_buffer_kv, stride_buffer_t, stride_pool_page, stride_pool_kv, stride_pool_slot,
    PAGE_TOKENS: tl.constexpr, TO_PAGES: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
    EVICTION: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    kv = tl.program_id(1)
    elems = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    token_ok = tokens < n_tokens
    mask = token_ok[:, None] & (elems < token_elems)[None, :]
    slots = tl.load(slots_ptr + tokens, mask=token_ok, other=0).to(tl.int64)
    pool_rows = (slots // PAGE_TOKENS) * stride_pool_page + kv * stride_pool_kv + (slots % PAGE_TOKENS) * stride_pool_slot
    buffer_rows = kv * stride_buffer_kv + tokens.to(tl.int64) * stride_buffer_t
    pool_addr = pool_ptr + pool_rows[:, None] + elems[None, :]
    buffer_addr = buffer_ptr + buffer_rows[:, None] + elems[None, :]
    if TO_PAGES:
        values = tl.load(buffer_addr, mask=mask, eviction_policy=EVICTION)
        tl.store(pool_addr, values.to(pool_ptr.dtype.element_ty), mask=mask)
    else:
        values = tl.load(pool_addr, mask=mask, eviction_policy=EVICTION)
        tl.store(buffer_addr, values.to(buffer_ptr.dtype.element_ty), mask=mask)


def _check_shapes(buffer: torch.Tensor, pool_layer: torch.Tensor, slots: torch.Tensor) -> None:
    if pool_layer.dim() != 5 or pool_layer.shape[1] != 2:
        raise ValueError(f"pool_layer must be [n_pages, 2, P, H, D], got {tuple(pool_layer.shape)}")
    expected = (2, slots.numel(), *pool_layer.shape[3:])
    if tuple(buffer.shape) != expected:
        raise ValueError(f"buffer must be {expected} for {slots.numel()} slots, got {tuple(buffer.shape)}")
    heads, dim = pool_layer.shape[3:]
    if pool_layer.stride(4) != 1 or pool_layer.stride(3) != dim:
        raise ValueError("pool_layer's [H, D] must be contiguous")


def _flat_token(buffer: torch.Tensor) -> torch.Tensor:
    """`buffer` itself when each token's H*D elements are contiguous, else a contiguous copy."""
    heads, dim = buffer.shape[2:]
    return buffer if buffer.stride(3) == 1 and buffer.stride(2) == dim else buffer.contiguous()


def _launch(buffer: torch.Tensor, pool_layer: torch.Tensor, slots: torch.Tensor, to_pages: bool,
            config: PageCopyConfig | None) -> None:
    n_tokens = slots.numel()
    if n_tokens == 0:
        return
    token_elems = pool_layer.shape[3] * pool_layer.shape[4]
    cfg = config or default_page_copy_config(token_elems)
    block_t, block_e = cfg.block_t, cfg.block_e
    grid = (triton.cdiv(n_tokens, block_t), 2, triton.cdiv(token_elems, block_e))
    _page_copy_kernel[grid](
        buffer, pool_layer, slots.to(device=pool_layer.device).contiguous(),
        n_tokens, token_elems,
        buffer.stride(0), buffer.stride(1), pool_layer.stride(0), pool_layer.stride(1), pool_layer.stride(2),
        PAGE_TOKENS=pool_layer.shape[2], TO_PAGES=to_pages, BLOCK_T=block_t, BLOCK_E=block_e,
        EVICTION="evict_first" if cfg.evict_first else "", num_warps=cfg.num_warps,
    )


def scatter_to_pages_triton(src: torch.Tensor, pool_layer: torch.Tensor, slots: torch.Tensor,
                            config: PageCopyConfig | None = None) -> None:
    """pool_layer[slot // P, kv, slot % P] = src[kv, t] for every token t (src cast to the pool's dtype)."""
    _check_shapes(src, pool_layer, slots)
    check_triton_device(pool_layer, _page_copy_kernel)
    _launch(_flat_token(src.to(pool_layer.device)), pool_layer, slots, to_pages=True, config=config)


def gather_from_pages_triton(pool_layer: torch.Tensor, slots: torch.Tensor, out: torch.Tensor | None = None,
                             config: PageCopyConfig | None = None) -> torch.Tensor:
    """Return (or fill `out`) [2, T, H, D] with the tokens at `slots`."""
    shape = (2, slots.numel(), *pool_layer.shape[3:])
    target = out if out is not None else torch.empty(shape, dtype=pool_layer.dtype, device=pool_layer.device)
    _check_shapes(target, pool_layer, slots)
    slots = slots.to(pool_layer.device)
    check_triton_device(pool_layer, _page_copy_kernel)
    staging = target
    if target.device != pool_layer.device or target.stride(3) != 1 or target.stride(2) != target.shape[3]:
        staging = torch.empty(shape, dtype=target.dtype, device=pool_layer.device)
    _launch(staging, pool_layer, slots, to_pages=False, config=config)
    if staging is not target:
        target.copy_(staging)
    return target
