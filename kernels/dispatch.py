"""One dispatcher per op: the Triton kernel on CUDA (when available), the PyTorch reference elsewhere.

`impl`: "auto" (Triton for CUDA tensors the kernel supports, else the reference), "triton" (always;
CPU tensors need TRITON_INTERPRET=1 set before the first Triton call), "reference".
MTBENCH_KERNELS=reference in the environment forces the references everywhere.

Attention has two compiled kernels: the Triton one (everywhere) and the Hopper Gluon one
(kernels/hstu_attention_gluon.py: CUDA sm_90, 16-bit, head_dim 64/128/256, pages of a multiple of 32
tokens). "auto" takes the Gluon kernel only for the prefix kinds in GLUON_ATTENTION_FASTER (measured faster
on the H200, reports/KERNELS.md); MTBENCH_ATTENTION_KERNEL=gluon takes it wherever it applies, =triton never.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

from kernels.copy_rows_ref import copy_rows_reference
from kernels.fp8_rows_ref import (
    StagedFp8Rows, dequantize_rows_reference, dequantize_scatter_reference, gather_quantize_reference,
    quantize_rows_reference,
)
from kernels.group_layernorm_ref import group_layernorm_reference
from kernels.hstu_attention_ref import AttentionSpec, ContiguousPrefix, Prefix, hstu_attention_reference
from kernels.page_copy_ref import gather_from_pages_reference, scatter_to_pages_reference

IMPLS = ("auto", "triton", "reference")
ATTENTION_KERNELS = ("auto", "triton", "gluon")
# Prefix kinds ("paged", "contiguous", "none") where the Gluon kernel was measured faster than the Triton one
# on the H200 (scripts/attn_gpu_check.sh, reports/KERNELS.md): paged, 200 candidates over 1132 cached keys
# at B64 0.176 against 0.219 ms, R+C 0.226 against 0.288 ms. The full-prefix forward stays on Triton.
GLUON_ATTENTION_FASTER: frozenset[str] = frozenset({"paged"})


@functools.cache
def _triton_module(name: str) -> ModuleType:
    # Imported on first use: Triton reads TRITON_INTERPRET when a kernel module is imported, so a
    # CPU test can still switch the interpreter on after `kernels` itself was imported. Cached: the
    # import machinery costs microseconds per launch, and the replay launches these in its hot loop.
    return importlib.import_module(f"kernels.{name}")


def _use_triton(t: torch.Tensor, impl: str, supported: bool = True) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference" or os.environ.get("MTBENCH_KERNELS") == "reference":
        return False
    return impl == "triton" or (t.is_cuda and supported)


def uses_triton(t: torch.Tensor, impl: str = "auto") -> bool:
    """Whether ops on tensors like `t` dispatch to the Triton kernels (the rule every op below follows)."""
    return _use_triton(t, impl)


def hstu_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
    n_new_static: torch.Tensor, n_rt: torch.Tensor, spec: AttentionSpec,
    prefix: Prefix | None = None, impl: str = "auto",
) -> torch.Tensor:
    """Jagged HSTU attention with the MTGR mask; see kernels/hstu_attention_ref.py for the contract."""
    supported = q.dim() == 3 and q.shape[-1] <= 256 and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    if _use_triton(q, impl, supported):
        if _gluon_attention_chosen(q, k, v, prefix):
            kernel = _triton_module("hstu_attention_gluon")
            return kernel.launch_gluon_attention(q, k, v, offsets, n_new_static, n_rt, spec, prefix)
        kernel = _triton_module("hstu_attention_triton")
        return kernel.hstu_attention_triton(q, k, v, offsets, n_new_static, n_rt, spec, prefix)
    return hstu_attention_reference(q, k, v, offsets, n_new_static, n_rt, spec, prefix)


def _prefix_kind(prefix: Prefix | None) -> str:
    return "none" if prefix is None else "contiguous" if isinstance(prefix, ContiguousPrefix) else "paged"


def _gluon_attention_chosen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix | None) -> bool:
    """Whether attention on these compiled-path inputs runs the Gluon kernel (see the module docstring)."""
    choice = os.environ.get("MTBENCH_ATTENTION_KERNEL", "auto")
    if choice not in ATTENTION_KERNELS:
        raise ValueError(f"MTBENCH_ATTENTION_KERNEL must be one of {ATTENTION_KERNELS}, got {choice!r}")
    if choice == "triton" or (choice == "auto" and _prefix_kind(prefix) not in GLUON_ATTENTION_FASTER):
        return False
    if not q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":  # Gluon kernels are never interpreted
        return False
    return _triton_module("hstu_attention_gluon").unsupported_reason(q, k, v, prefix) is None


def group_layernorm(
    x: torch.Tensor, group_ids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    eps: float = 1e-5, gate: torch.Tensor | None = None, impl: str = "auto",
) -> torch.Tensor:
    """LayerNorm with (gamma, beta) per token group, times `gate` if given; see group_layernorm_ref.py."""
    if _use_triton(x, impl, supported=x.dim() == 2 and x.shape[-1] <= 16384):
        return _triton_module("group_layernorm_triton").group_layernorm_triton(x, group_ids, weight, bias, eps, gate)
    return group_layernorm_reference(x, group_ids, weight, bias, eps, gate)


def scatter_to_pages(src: torch.Tensor, pool_layer: torch.Tensor, slots: torch.Tensor, impl: str = "auto") -> None:
    """pool_layer[slot // P, kv, slot % P] = src[kv, t]; see page_copy_ref.py."""
    if _use_triton(pool_layer, impl):
        _triton_module("page_copy_triton").scatter_to_pages_triton(src, pool_layer, slots)
    else:
        scatter_to_pages_reference(src, pool_layer, slots)


def gather_from_pages(pool_layer: torch.Tensor, slots: torch.Tensor, out: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """[2, T, H, D] tokens at `slots` (into `out` when given); see page_copy_ref.py."""
    if _use_triton(pool_layer, impl):
        return _triton_module("page_copy_triton").gather_from_pages_triton(pool_layer, slots, out)
    return gather_from_pages_reference(pool_layer, slots, out)


def copy_rows(src: torch.Tensor, src_rows: torch.Tensor, dst: torch.Tensor, dst_rows: torch.Tensor, impl: str = "auto") -> None:
    """dst[dst_rows[i]] = src[src_rows[i]] where both indices are >= 0; see copy_rows_ref.py.

    "auto" runs Triton when either tensor is on CUDA (the other may be pinned host memory: zero-copy).
    """
    cuda_side = dst if dst.is_cuda else src
    if _use_triton(cuda_side, impl, supported=src.dtype in (torch.float16, torch.bfloat16, torch.float32)):
        _triton_module("copy_rows_triton").copy_rows_triton(src, src_rows, dst, dst_rows)
    else:
        copy_rows_reference(src, src_rows, dst, dst_rows)


def quantize_rows_fp8(src: torch.Tensor, src_rows: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                      dst_rows: torch.Tensor, impl: str = "auto") -> None:
    """codes/scales[dst_rows[i]] = e4m3 quantisation of src[src_rows[i]] (one scale per head); see
    fp8_rows_ref.py. "auto" runs Triton when either side is on CUDA (the fp8 side may be pinned host)."""
    cuda_side = src if src.is_cuda else codes
    if _use_triton(cuda_side, impl):
        _triton_module("fp8_rows_triton").quantize_rows_triton(src, src_rows, codes, scales, dst_rows)
    else:
        quantize_rows_reference(src, src_rows, codes, scales, dst_rows)


def dequantize_rows_fp8(codes: torch.Tensor, scales: torch.Tensor, src_rows: torch.Tensor, dst: torch.Tensor,
                        dst_rows: torch.Tensor, impl: str = "auto") -> None:
    """dst[dst_rows[i]] = dequantised codes/scales[src_rows[i]]; see fp8_rows_ref.py. "auto" runs Triton
    when either side is on CUDA (the fp8 side may be pinned host memory: the load into the pool)."""
    cuda_side = dst if dst.is_cuda else codes
    if _use_triton(cuda_side, impl):
        _triton_module("fp8_rows_triton").dequantize_rows_triton(codes, scales, src_rows, dst, dst_rows)
    else:
        dequantize_rows_reference(codes, scales, src_rows, dst, dst_rows)


def dequantize_scatter_fp8(staged: StagedFp8Rows, dst: torch.Tensor, dst_rows: torch.Tensor, impl: str = "auto") -> None:
    """dst[dst_rows[i]] = dequantised staged row i (rows anywhere in one flat uint8 buffer, e.g. device
    staging the copy engine filled); see fp8_rows_ref.py."""
    if _use_triton(dst, impl):
        _triton_module("fp8_rows_triton").dequantize_scatter_triton(staged, dst, dst_rows)
    else:
        dequantize_scatter_reference(staged, dst, dst_rows)


def gather_quantize_fp8(src: torch.Tensor, src_rows: torch.Tensor, staged: StagedFp8Rows, impl: str = "auto") -> None:
    """staged row i = e4m3 quantisation of src[src_rows[i]] (one scale per head); see fp8_rows_ref.py."""
    if _use_triton(src, impl):
        _triton_module("fp8_rows_triton").gather_quantize_triton(src, src_rows, staged)
    else:
        gather_quantize_reference(src, src_rows, staged)
