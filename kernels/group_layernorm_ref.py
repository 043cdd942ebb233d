"""PyTorch reference for Group LayerNorm: LayerNorm whose (gamma, beta) are chosen by each token's group."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_layernorm_reference(
    x: torch.Tensor, group_ids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    eps: float = 1e-5, gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [T, d]; group_ids [T] int; weight, bias [G, d]. Returns GLN(x), times `gate` [T, d] if given."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    ids = group_ids.long()
    out = normed * weight[ids].float() + bias[ids].float()
    if gate is not None:
        out = out * gate.float()
    return out.to(x.dtype)
