"""Triton indexed row copy: dst[dst_rows[i]] = src[src_rows[i]] for rows with both indices >= 0.

Semantics: copy_rows_ref.py. One launch copies all n rows: program (row_block, width_block) copies
BLOCK_R entries x BLOCK_W columns, masking entries past n, entries with a negative (or out-of-range)
index on either side, and columns past W. The grid is a function of n and W only, so the launch can
be captured in a CUDA graph and replayed with different indices (-1 for rows not to write).

Zero-copy: src or dst may be a pinned CPU tensor while the other is on CUDA. CUDA dereferences
pinned host memory through unified virtual addressing, so the kernel reads (or writes) host rows in
place over PCIe with no staging copy; bandwidth comes from many small programs in flight. Writes to
a pinned host dst are asynchronous on the current stream: synchronize before reading it on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.copy_rows_ref import validate_copy_rows_args
from kernels.triton_support import check_triton_device

MAX_BLOCK_W = 1024
ELEMENTS_PER_PROGRAM = 8192  # 8 rows of bf16 W=768 (12 KiB): small programs keep many PCIe reads in flight
MAX_BLOCK_R = 16


@triton.jit
def _copy_rows_kernel(
    src_ptr, src_rows_ptr, dst_ptr, dst_rows_ptr,
    n_entries, width, n_src_rows, n_dst_rows, stride_src, stride_dst,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    entries = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    entry_ok = entries < n_entries
    src_row = tl.load(src_rows_ptr + entries, mask=entry_ok, other=-1).to(tl.int64)
    dst_row = tl.load(dst_rows_ptr + entries, mask=entry_ok, other=-1).to(tl.int64)
    row_ok = (src_row >= 0) & (src_row < n_src_rows) & (dst_row >= 0) & (dst_row < n_dst_rows)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = row_ok[:, None] & (cols < width)[None, :]
    values = tl.load(src_ptr + (src_row * stride_src)[:, None] + cols[None, :], mask=mask)
    tl.store(dst_ptr + (dst_row * stride_dst)[:, None] + cols[None, :], values, mask=mask)


def copy_rows_blocks(width: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_W) for rows of `width` elements: the whole row up to 1024 columns, ~8K elements a program."""
    block_w = min(MAX_BLOCK_W, triton.next_power_of_2(max(width, 1)))
    return max(1, min(MAX_BLOCK_R, ELEMENTS_PER_PROGRAM // block_w)), block_w


def copy_rows_triton(src: torch.Tensor, src_rows: torch.Tensor, dst: torch.Tensor, dst_rows: torch.Tensor) -> None:
    """dst[dst_rows[i]] = src[src_rows[i]] for every i with both indices >= 0, in one kernel launch.

    src/dst: CUDA tensors, or one pinned CPU tensor and one CUDA tensor (zero-copy), or CPU tensors
    under TRITON_INTERPRET=1. Index tensors are moved to the launch device when they are elsewhere
    (a no-op, as CUDA-graph capture needs, when they already live there).
    """
    validate_copy_rows_args(src, src_rows, dst, dst_rows)
    check_triton_device(src, _copy_rows_kernel, peer=dst)
    check_triton_device(dst, _copy_rows_kernel, peer=src)
    n_entries, width = src_rows.numel(), src.shape[1]
    if n_entries == 0 or width == 0:
        return
    launch_device = dst.device if dst.is_cuda else src.device
    block_r, block_w = copy_rows_blocks(width)
    grid = (triton.cdiv(n_entries, block_r), triton.cdiv(width, block_w))
    _copy_rows_kernel[grid](
        src, src_rows.to(launch_device).contiguous(), dst, dst_rows.to(launch_device).contiguous(),
        n_entries, width, src.shape[0], dst.shape[0], src.stride(0), dst.stride(0),
        BLOCK_R=block_r, BLOCK_W=block_w, num_warps=4,
    )
