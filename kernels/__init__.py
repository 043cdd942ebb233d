"""Kernels for mtbench: each op has a PyTorch reference and, on CUDA, a Triton kernel; one dispatcher picks.

Set MTBENCH_KERNELS=reference to force the PyTorch references everywhere.
"""

from kernels.dispatch import (
    copy_rows, dequantize_rows_fp8, dequantize_scatter_fp8, gather_from_pages, gather_quantize_fp8, group_layernorm,
    hstu_attention, quantize_rows_fp8, scatter_to_pages, uses_triton,
)
from kernels.fp8_rows_ref import StagedFp8Rows
from kernels.hstu_attention_ref import AttentionSpec, ContiguousPrefix, PagedPrefix, Prefix

__all__ = [
    "AttentionSpec", "ContiguousPrefix", "PagedPrefix", "Prefix",
    "hstu_attention", "group_layernorm", "scatter_to_pages", "gather_from_pages", "copy_rows", "uses_triton",
    "quantize_rows_fp8", "dequantize_rows_fp8", "StagedFp8Rows", "dequantize_scatter_fp8", "gather_quantize_fp8",
]
