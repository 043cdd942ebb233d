"""Triton Group LayerNorm (semantics: group_layernorm_ref.py), optionally fused with the u-gating multiply.

One program normalises BLOCK_T rows of x [T, d] in fp32: mean and biased variance over d, then
(gamma, beta) taken from row group_ids[t] of weight/bias [G, d], times gate[t] when given, stored in
x's dtype. Fusing the gate saves one read and one write of a [T, d] tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_support import check_triton_device


@triton.jit
def _group_layernorm_kernel(
    x_ptr, group_ptr, weight_ptr, bias_ptr, gate_ptr, out_ptr,
    n_tokens, width, eps,
    stride_x, stride_weight, stride_bias, stride_gate, stride_out,
    HAS_GATE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_tokens
    mask = row_ok[:, None] & (cols < width)[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / width
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / width + eps)
    groups = tl.load(group_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    gamma = tl.load(weight_ptr + groups[:, None] * stride_weight + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    beta = tl.load(bias_ptr + groups[:, None] * stride_bias + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * gamma + beta
    if HAS_GATE:
        y = y * tl.load(gate_ptr + rows64[:, None] * stride_gate + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * stride_out + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def group_layernorm_triton(
    x: torch.Tensor, group_ids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    eps: float = 1e-5, gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `group_layernorm_reference`: x [T, d], group_ids [T], weight/bias [G, d], gate [T, d]."""
    if x.dim() != 2 or weight.dim() != 2 or weight.shape != bias.shape or weight.shape[1] != x.shape[1]:
        raise ValueError(f"expected x [T, d] and weight/bias [G, d]; got {tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"gate must match x {tuple(x.shape)}, got {tuple(gate.shape)}")
    check_triton_device(x, _group_layernorm_kernel)
    n_tokens, width = x.shape
    out = torch.empty((n_tokens, width), dtype=x.dtype, device=x.device)
    if n_tokens == 0:
        return out
    x, weight, bias = _rows_contiguous(x), _rows_contiguous(weight), _rows_contiguous(bias)
    gate_arg = _rows_contiguous(gate) if gate is not None else x
    block_d = max(16, triton.next_power_of_2(width))
    block_t = max(1, min(16, 8192 // block_d))
    _group_layernorm_kernel[(triton.cdiv(n_tokens, block_t),)](
        x, group_ids.contiguous(), weight, bias, gate_arg, out,
        n_tokens, width, float(eps),
        x.stride(0), weight.stride(0), bias.stride(0), gate_arg.stride(0), out.stride(0),
        HAS_GATE=gate is not None, BLOCK_T=block_t, BLOCK_D=block_d,
        num_warps=4 if block_d <= 1024 else 8,
    )
    return out
