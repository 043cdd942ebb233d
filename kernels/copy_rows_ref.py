"""PyTorch reference for copying indexed rows between two 2-d tensors (KV-cache transfers and pool writes).

Contract of `copy_rows(src, src_rows, dst, dst_rows)`:

    src:      Tensor[N_src, W], 2-d, stride(1) == 1, any row stride (a view like big[:, :W] is fine)
    src_rows: int32 or int64 Tensor[n]
    dst:      Tensor[N_dst, W], 2-d, stride(1) == 1, any row stride, same dtype as src
    dst_rows: Tensor[n], same dtype as src_rows

    for i in range(n):
        if src_rows[i] >= 0 and dst_rows[i] >= 0:
            dst[dst_rows[i]] = src[src_rows[i]]

Invariants the caller keeps:
- A negative index on either side skips that row, so a CUDA-graph-captured caller can pass -1 for
  rows that must not be written: the Triton launch grid depends on n only, never on how many rows
  are valid.
- Non-negative indices are < N_src / < N_dst. The reference raises on an out-of-range index; the
  Triton kernel masks such rows out (it never touches memory outside src/dst) but that is a safety
  net, not a feature.
- Valid dst indices are distinct; a duplicated dst index gives an undefined result.
- Only the W columns of the named dst rows are written; every other element of dst's storage
  (other rows, the columns beyond W of a wider parent tensor) is left untouched.
- src and dst may live on different devices (the reference moves the selected rows); the Triton
  kernel additionally reads/writes a pinned host tensor in place from CUDA (see copy_rows_triton.py).
"""

from __future__ import annotations

import torch

INDEX_DTYPES = (torch.int32, torch.int64)


def validate_copy_rows_args(src: torch.Tensor, src_rows: torch.Tensor, dst: torch.Tensor, dst_rows: torch.Tensor) -> None:
    """Raise ValueError naming the first argument that breaks the contract above (shapes, dtypes, strides)."""
    for name, t in (("src", src), ("dst", dst)):
        if t.dim() != 2:
            raise ValueError(f"copy_rows: {name} must be 2-d [rows, W], got shape {tuple(t.shape)}")
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"copy_rows: {name} must have unit inner stride (stride(1) == 1), got strides {t.stride()}")
    if src.shape[1] != dst.shape[1]:
        raise ValueError(f"copy_rows: width mismatch, src has W={src.shape[1]} and dst has W={dst.shape[1]}")
    if src.dtype != dst.dtype:
        raise ValueError(f"copy_rows: dtype mismatch, src is {src.dtype} and dst is {dst.dtype}")
    for name, rows in (("src_rows", src_rows), ("dst_rows", dst_rows)):
        if rows.dim() != 1 or rows.dtype not in INDEX_DTYPES:
            raise ValueError(f"copy_rows: {name} must be a 1-d int32/int64 tensor, got {rows.dtype} of shape {tuple(rows.shape)}")
    if src_rows.dtype != dst_rows.dtype:
        raise ValueError(f"copy_rows: index dtype mismatch, src_rows is {src_rows.dtype} and dst_rows is {dst_rows.dtype}")
    if src_rows.numel() != dst_rows.numel():
        raise ValueError(f"copy_rows: index length mismatch, {src_rows.numel()} src_rows vs {dst_rows.numel()} dst_rows")


def copy_rows_reference(src: torch.Tensor, src_rows: torch.Tensor, dst: torch.Tensor, dst_rows: torch.Tensor) -> None:
    """dst[dst_rows[i]] = src[src_rows[i]] for every i with both indices >= 0; any mix of CPU/CUDA tensors."""
    validate_copy_rows_args(src, src_rows, dst, dst_rows)
    dst_rows = dst_rows.to(src_rows.device)
    valid = (src_rows >= 0) & (dst_rows >= 0)
    rows = src.index_select(0, src_rows[valid].to(src.device, torch.long))
    dst.index_copy_(0, dst_rows[valid].to(dst.device, torch.long), rows.to(dst.device))
