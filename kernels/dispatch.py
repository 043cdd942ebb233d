"""One dispatcher per op: the Triton kernel on CUDA (when available), the PyTorch reference elsewhere."""

from __future__ import annotations

import os

import torch

from kernels.group_layernorm_ref import group_layernorm_reference
from kernels.hstu_attention_ref import AttentionSpec, Prefix, hstu_attention_reference
from kernels.page_copy_ref import gather_from_pages_reference, scatter_to_pages_reference


def _use_triton(t: torch.Tensor, impl: str) -> bool:
    if impl == "reference" or os.environ.get("MTBENCH_KERNELS") == "reference":
        return False
    return impl == "triton" or t.is_cuda


def hstu_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
    n_new_static: torch.Tensor, n_rt: torch.Tensor, spec: AttentionSpec,
    prefix: Prefix | None = None, impl: str = "auto",
) -> torch.Tensor:
    return hstu_attention_reference(q, k, v, offsets, n_new_static, n_rt, spec, prefix)


def group_layernorm(
    x: torch.Tensor, group_ids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    eps: float = 1e-5, gate: torch.Tensor | None = None, impl: str = "auto",
) -> torch.Tensor:
    return group_layernorm_reference(x, group_ids, weight, bias, eps, gate)


def scatter_to_pages(src: torch.Tensor, pool_layer: torch.Tensor, slots: torch.Tensor, impl: str = "auto") -> None:
    scatter_to_pages_reference(src, pool_layer, slots)


def gather_from_pages(pool_layer: torch.Tensor, slots: torch.Tensor, out: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    return gather_from_pages_reference(pool_layer, slots, out)
