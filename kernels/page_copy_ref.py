"""PyTorch reference for moving K/V tokens between a contiguous buffer and pool pages (one layer).

A pool layer is [n_pages, 2, P, H, D] (K at index 0, V at 1). A contiguous buffer is [2, T, H, D].
`slots` [T] gives each token's flat slot in the pool layer: page * P + position-in-page.
"""

from __future__ import annotations

import torch


def scatter_to_pages_reference(src: torch.Tensor, pool_layer: torch.Tensor, slots: torch.Tensor) -> None:
    """pool_layer[slot // P, kv, slot % P] = src[kv, t] for every token t."""
    page_tokens = pool_layer.shape[2]
    slots = slots.to(pool_layer.device, torch.long)
    pages, within = slots // page_tokens, slots % page_tokens
    pool_layer[pages, 0, within] = src[0].to(pool_layer.dtype)
    pool_layer[pages, 1, within] = src[1].to(pool_layer.dtype)


def gather_from_pages_reference(pool_layer: torch.Tensor, slots: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Return (or fill `out`) [2, T, H, D] with the tokens at `slots`."""
    page_tokens = pool_layer.shape[2]
    slots = slots.to(pool_layer.device, torch.long)
    pages, within = slots // page_tokens, slots % page_tokens
    result = torch.stack([pool_layer[pages, 0, within], pool_layer[pages, 1, within]])
    if out is None:
        return result
    out.copy_(result)
    return out
