"""Triton row copies that quantise to / dequantise from the fp8 KV row format (semantics: fp8_rows_ref.py).

One program moves BLOCK_R indexed rows of ONE head (grid: row blocks x heads), so each program owns
whole heads and computes their scales in registers; entries with a negative index are skipped, the
grid depends on the entry count only (CUDA-graph friendly), exactly like copy_rows_triton.py. Like
copy_rows, the fp8 side may be a pinned host tensor read or written in place over PCIe (zero-copy):
`dequantize_rows` is the load into the bf16 pool, `quantize_rows` the write-back.
`dequantize_scatter` / `gather_quantize` are the same conversions between staged rows (anywhere in one
flat device buffer: the hybrid layout's staging, filled and drained by the copy engine) and indexed
float rows: one launch per layer for a whole batch; the codes' alignment comes in as a constexpr
multiplier, so the compiler vectorises their loads and stores.

The e4m3 conversion is integer and fp32 arithmetic on the bits, not a float8 cast: Triton's CPU
interpreter rounds fp32 -> float8 wrongly at binade tops (7.99 -> 4.0 in Triton 3.9), and the same
code on CUDA keeps the kernel bit-identical to the reference in both places. The copies are bound
by memory (or PCIe) bandwidth, so the ~20 extra integer operations per element cost nothing visible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.fp8_rows_ref import StagedFp8Rows, validate_fp8_rows_args, validate_staged_args
from kernels.triton_support import check_triton_device

ELEMENTS_PER_PROGRAM = 8192
MAX_BLOCK_R = 32


@triton.jit
def _scale_exponent(amax):
    """E8M0 code (int32) of the smallest power-of-two scale with amax / scale <= 448."""
    bits = amax.to(tl.int32, bitcast=True)
    exponent = (bits >> 23) & 0xFF
    above = ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)
    return tl.minimum(tl.maximum(exponent - 8 + above, 1), 254)


@triton.jit
def _e4m3_bits(v):
    """uint8-valued int32 e4m3 code of fp32 `v` (|v| <= 448), rounded to nearest even."""
    v_bits = v.to(tl.int32, bitcast=True)
    a = tl.abs(v)
    exponent = (tl.maximum(a, 0.015625).to(tl.int32, bitcast=True) >> 23) & 0xFF  # subnormals: 2^-6's
    inverse_ulp = ((257 - exponent) << 23).to(tl.float32, bitcast=True)  # 2^-(E - 3): 3 mantissa bits
    ulp = ((exponent - 3) << 23).to(tl.float32, bitcast=True)
    steps = (a * inverse_ulp + 8388608.0) - 8388608.0  # round half to even at integer steps (< 16)
    rounded = steps * ulp
    rounded_bits = rounded.to(tl.int32, bitcast=True)
    normal = ((rounded_bits >> 20) - (120 << 3)) & 0x7F  # rebias the exponent 127 -> 7, keep 3 mantissa bits
    code = tl.where(rounded >= 0.015625, normal, (rounded * 512.0).to(tl.int32))
    return code | ((v_bits >> 24) & 0x80)


@triton.jit
def _e4m3_value(code):
    """fp32 value of int32 e4m3 codes (no NaN codes are ever written)."""
    magnitude = code & 0x7F
    normal = ((magnitude + (120 << 3)) << 20).to(tl.float32, bitcast=True)
    value = tl.where(magnitude >= 8, normal, magnitude.to(tl.float32) * 0.001953125)
    return tl.where((code & 0x80) != 0, -value, value)


@triton.jit
def _convert_head(float_addr, codes_addr, scale_addr, mask, row_ok, QUANTIZE: tl.constexpr):
    """One head of BLOCK_R rows: quantise float_addr's values into codes and a scale (QUANTIZE), or
    dequantise codes and scale into float_addr."""
    if QUANTIZE:
        x = tl.load(float_addr, mask=mask, other=0.0).to(tl.float32)
        exponent = _scale_exponent(tl.max(tl.abs(x), 1))
        inverse = ((254 - exponent) << 23).to(tl.float32, bitcast=True)
        scaled = tl.minimum(tl.maximum(x * inverse[:, None], -448.0), 448.0)
        tl.store(codes_addr, _e4m3_bits(scaled).to(tl.uint8), mask=mask)
        tl.store(scale_addr, exponent.to(tl.uint8), mask=row_ok)
    else:
        code = tl.load(codes_addr, mask=mask, other=0).to(tl.int32)
        exponent = tl.load(scale_addr, mask=row_ok, other=127).to(tl.int32)
        scale = (exponent << 23).to(tl.float32, bitcast=True)
        tl.store(float_addr, (_e4m3_value(code) * scale[:, None]).to(float_addr.dtype.element_ty), mask=mask)


@triton.jit
def _fp8_rows_kernel(
    float_ptr, float_rows_ptr, codes_ptr, scales_ptr, fp8_rows_ptr,
    n_entries, head_dim, n_float_rows, n_fp8_rows, stride_float, stride_codes, stride_scales,
    QUANTIZE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    entries = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    head = tl.program_id(1)
    entry_ok = entries < n_entries
    f_row = tl.load(float_rows_ptr + entries, mask=entry_ok, other=-1).to(tl.int64)
    q_row = tl.load(fp8_rows_ptr + entries, mask=entry_ok, other=-1).to(tl.int64)
    row_ok = (f_row >= 0) & (f_row < n_float_rows) & (q_row >= 0) & (q_row < n_fp8_rows)
    dims = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (dims < head_dim)[None, :]
    cols = head * head_dim + dims
    float_addr = float_ptr + (f_row * stride_float)[:, None] + cols[None, :]
    codes_addr = codes_ptr + (q_row * stride_codes)[:, None] + cols[None, :]
    scale_addr = scales_ptr + q_row * stride_scales + head
    _convert_head(float_addr, codes_addr, scale_addr, mask, row_ok, QUANTIZE)


@triton.jit
def _fp8_staged_kernel(
    float_ptr, float_rows_ptr, staging_ptr, code_starts_ptr, scale_starts_ptr,
    n_entries, head_dim, n_float_rows, staging_bytes, stride_float,
    QUANTIZE: tl.constexpr, ALIGN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    entries = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    entry_ok = entries < n_entries
    f_row = tl.load(float_rows_ptr + entries, mask=entry_ok, other=-1).to(tl.int64)
    code_at = tl.load(code_starts_ptr + entries, mask=entry_ok, other=-1).to(tl.int64) * ALIGN  # ALIGN | code_at
    scale_at = tl.load(scale_starts_ptr + entries, mask=entry_ok, other=0).to(tl.int64)
    row_ok = ((f_row >= 0) & (f_row < n_float_rows) & (code_at >= 0) & (code_at + heads * head_dim <= staging_bytes)
              & (scale_at >= 0) & (scale_at + heads <= staging_bytes))
    dims = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (dims < head_dim)[None, :]
    cols = head * head_dim + dims
    float_addr = float_ptr + (f_row * stride_float)[:, None] + cols[None, :]
    codes_addr = staging_ptr + code_at[:, None] + cols[None, :]
    _convert_head(float_addr, codes_addr, staging_ptr + scale_at + head, mask, row_ok, QUANTIZE)


def fp8_rows_blocks(head_dim: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D): one head per program, ~8K elements (8 KiB of fp8) of rows."""
    block_d = triton.next_power_of_2(max(head_dim, 1))
    return max(1, min(MAX_BLOCK_R, ELEMENTS_PER_PROGRAM // block_d)), block_d


def _launch(rows_f: torch.Tensor, f_rows: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
            q_rows: torch.Tensor, quantize: bool) -> None:
    validate_fp8_rows_args(rows_f, codes, scales, f_rows, q_rows)
    check_triton_device(rows_f, _fp8_rows_kernel, peer=codes)
    check_triton_device(codes, _fp8_rows_kernel, peer=rows_f)
    check_triton_device(scales, _fp8_rows_kernel, peer=rows_f)
    n_entries, heads = f_rows.numel(), scales.shape[1]
    if n_entries == 0 or rows_f.shape[1] == 0:
        return
    head_dim = rows_f.shape[1] // heads
    launch_device = rows_f.device if rows_f.is_cuda else codes.device
    block_r, block_d = fp8_rows_blocks(head_dim)
    _fp8_rows_kernel[(triton.cdiv(n_entries, block_r), heads)](
        rows_f, f_rows.to(launch_device).contiguous(), codes, scales, q_rows.to(launch_device).contiguous(),
        n_entries, head_dim, rows_f.shape[0], codes.shape[0], rows_f.stride(0), codes.stride(0), scales.stride(0),
        QUANTIZE=quantize, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
    )


def quantize_rows_triton(src: torch.Tensor, src_rows: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                         dst_rows: torch.Tensor) -> None:
    """codes/scales[dst_rows[i]] = quantise(src[src_rows[i]]) in one launch (see fp8_rows_ref.py)."""
    _launch(src, src_rows, codes, scales, dst_rows, quantize=True)


def dequantize_rows_triton(codes: torch.Tensor, scales: torch.Tensor, src_rows: torch.Tensor, dst: torch.Tensor,
                           dst_rows: torch.Tensor) -> None:
    """dst[dst_rows[i]] = dequantise(codes/scales[src_rows[i]]) in one launch (see fp8_rows_ref.py)."""
    _launch(dst, dst_rows, codes, scales, src_rows, quantize=False)


def _launch_staged(rows_f: torch.Tensor, f_rows: torch.Tensor, staged: StagedFp8Rows, quantize: bool) -> None:
    validate_staged_args(rows_f, f_rows, staged)
    check_triton_device(rows_f, _fp8_staged_kernel, peer=staged.buffer)
    check_triton_device(staged.buffer, _fp8_staged_kernel, peer=rows_f)
    n_entries = f_rows.numel()
    if n_entries == 0 or rows_f.shape[1] == 0:
        return
    head_dim = rows_f.shape[1] // staged.heads
    device = rows_f.device
    block_r, block_d = fp8_rows_blocks(head_dim)
    _fp8_staged_kernel[(triton.cdiv(n_entries, block_r), staged.heads)](
        rows_f, f_rows.to(device).contiguous(), staged.buffer, staged.code_starts.to(device).contiguous(),
        staged.scale_starts.to(device).contiguous(), n_entries, head_dim, rows_f.shape[0], staged.buffer.numel(),
        rows_f.stride(0), QUANTIZE=quantize, ALIGN=staged.align, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
    )


def dequantize_scatter_triton(staged: StagedFp8Rows, dst: torch.Tensor, dst_rows: torch.Tensor) -> None:
    """dst[dst_rows[i]] = dequantise(staged row i) in one launch (see fp8_rows_ref.py)."""
    _launch_staged(dst, dst_rows, staged, quantize=False)


def gather_quantize_triton(src: torch.Tensor, src_rows: torch.Tensor, staged: StagedFp8Rows) -> None:
    """staged row i = quantise(src[src_rows[i]]) in one launch (see fp8_rows_ref.py)."""
    _launch_staged(src, src_rows, staged, quantize=True)
