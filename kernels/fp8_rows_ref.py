"""PyTorch reference for the fp8 KV row format (host tier) and the quantising / dequantising row copies.

Format of one row (one token's K or V at one layer, H heads of D elements, W = H * D):
    codes:  W bytes, float8 e4m3 ("fn": max 448, no infinities) stored as uint8 bits
    scales: H bytes, one E8M0 exponent e per head: the head's scale is s = 2^(e - 127)
    value[h, d] = e4m3(codes[h * D + d]) * s[h]
One row is W + H bytes (0.39% over plain fp8 for D = 256): half of bf16's 2W.

Quantising a head's D values x (computed in fp32):
    amax = max |x|;  s = the smallest power of two with amax / s <= 448 (2^-126 when amax == 0)
    codes = e4m3(x / s), rounded to nearest even; x / s is exact because s is a power of two.
The exponent comes from amax's fp32 bits: amax = m * 2^E (1 <= m < 2) needs s = 2^(E - 8) when
m <= 1.75 (448 = 1.75 * 2^8) and 2^(E - 7) otherwise; so kernel and reference agree bit for bit.

Round-trip error bound (per element, any finite input): |dequant(quant(x)) - x| <= 2^-4 |x| + 2^-10 s,
and s <= amax / 224 (for amax >= 2^-118; below, s = 2^-126), so |err| <= |x| / 16 + amax / 229376. The first term is e4m3's rounding of a
normal number (3 mantissa bits); the second the spacing of its subnormals (2^-9 s), which only
values below 2^-6 s (< amax / 14336) use. Dequantised values have at most 4 significant bits, so
they are exact in bf16/fp16 (barring fp16 overflow) and fp32.

Row copies (the same index contract as copy_rows_ref.py: a negative index on either side skips the
entry, valid destination indices are distinct):
    quantize_rows(src [N, W], src_rows, codes [M, W] uint8, scales [M, H] uint8, dst_rows)
        codes[dst_rows[i]], scales[dst_rows[i]] = quantise(src[src_rows[i]])
    dequantize_rows(codes [N, W] uint8, scales [N, H] uint8, src_rows, dst [M, W], dst_rows)
        dst[dst_rows[i]] = dequantise(codes[src_rows[i]], scales[src_rows[i]])
"""

from __future__ import annotations

import torch

from kernels.copy_rows_ref import INDEX_DTYPES

E4M3_MAX = 448.0
E8M0_BIAS = 127
MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT = 1, 254  # E8M0 codes of 2^-126 .. 2^127 (0 and 255 unused)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def fp8_row_bytes(heads: int, head_dim: int) -> int:
    """Bytes of one quantised row: W e4m3 codes plus H one-byte scale exponents."""
    return heads * head_dim + heads


def fp8_token_bytes(layers: int, heads: int, head_dim: int) -> int:
    """Bytes of one token's K and V rows over `layers` layers in this format (the fp8 entry size per token)."""
    return 2 * layers * fp8_row_bytes(heads, head_dim)


def scale_exponents(amax: torch.Tensor) -> torch.Tensor:
    """E8M0 codes (int32) of the per-head scales for fp32 `amax` >= 0 (see the module docstring)."""
    bits = amax.float().contiguous().view(torch.int32)
    exponent = (bits >> 23) & 0xFF  # biased: amax = m * 2^(exponent - 127)
    above = ((bits & 0x7FFFFF) > 0x600000).to(torch.int32)  # m > 1.75
    return (exponent - 8 + above).clamp(MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT)


def exponent_scale(exponents: torch.Tensor) -> torch.Tensor:
    """fp32 2^(e - 127) of E8M0 codes (exact: the code is the fp32 exponent field)."""
    return (exponents.to(torch.int32) << 23).view(torch.float32)


def quantize_fp8_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., H, D] (float) -> (codes uint8 [..., H, D], scale exponents uint8 [..., H])."""
    x = x.float()
    exponents = scale_exponents(x.abs().amax(-1))
    inverse = exponent_scale(2 * E8M0_BIAS - exponents)  # 1 / s, exact
    scaled = (x * inverse[..., None]).clamp(-E4M3_MAX, E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn).view(torch.uint8), exponents.to(torch.uint8)


def dequantize_fp8_reference(codes: torch.Tensor, exponents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(codes uint8 [..., H, D], exponents uint8 [..., H]) -> values [..., H, D] in `dtype`."""
    values = codes.view(torch.float8_e4m3fn).float() * exponent_scale(exponents)[..., None]
    return values.to(dtype)


def fp8_error_bound(x: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |dequantize(quantize(x)) - x| for x [..., H, D] (module docstring)."""
    x = x.float()
    scale = exponent_scale(scale_exponents(x.abs().amax(-1)))
    return x.abs() / 16 + scale[..., None] / 1024


def validate_fp8_rows_args(rows_f: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                           f_rows: torch.Tensor, q_rows: torch.Tensor) -> None:
    """Raise ValueError naming the first argument that breaks the contract (float side `rows_f`,
    quantised side `codes`/`scales`, their index tensors)."""
    for name, t in (("float rows", rows_f), ("codes", codes), ("scales", scales)):
        if t.dim() != 2:
            raise ValueError(f"fp8 rows: {name} must be 2-d, got shape {tuple(t.shape)}")
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"fp8 rows: {name} must have unit inner stride, got strides {t.stride()}")
    if rows_f.dtype not in FLOAT_DTYPES:
        raise ValueError(f"fp8 rows: float rows must be fp16/bf16/fp32, got {rows_f.dtype}")
    if codes.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"fp8 rows: codes and scales must be uint8, got {codes.dtype} and {scales.dtype}")
    width, heads = rows_f.shape[1], scales.shape[1]
    if codes.shape[1] != width or heads < 1 or width % heads:
        raise ValueError(f"fp8 rows: codes width {codes.shape[1]} and {heads} scale heads do not fit rows of {width}")
    if codes.shape[0] != scales.shape[0]:
        raise ValueError(f"fp8 rows: {codes.shape[0]} code rows but {scales.shape[0]} scale rows")
    for name, rows in (("float-side rows", f_rows), ("fp8-side rows", q_rows)):
        if rows.dim() != 1 or rows.dtype not in INDEX_DTYPES:
            raise ValueError(f"fp8 rows: {name} must be a 1-d int32/int64 tensor, got {rows.dtype} {tuple(rows.shape)}")
    if f_rows.dtype != q_rows.dtype or f_rows.numel() != q_rows.numel():
        raise ValueError("fp8 rows: the two index tensors must share dtype and length")


def _valid_pairs(a_rows: torch.Tensor, b_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b_rows = b_rows.to(a_rows.device)
    valid = (a_rows >= 0) & (b_rows >= 0)
    return a_rows[valid].long(), b_rows[valid].long()


def quantize_rows_reference(src: torch.Tensor, src_rows: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                            dst_rows: torch.Tensor) -> None:
    """codes/scales[dst_rows[i]] = quantise(src[src_rows[i]]) for every i with both indices >= 0."""
    validate_fp8_rows_args(src, codes, scales, src_rows, dst_rows)
    take, put = _valid_pairs(src_rows, dst_rows)
    heads = scales.shape[1]
    values = src.index_select(0, take.to(src.device)).view(-1, heads, src.shape[1] // heads)
    q, e = quantize_fp8_reference(values)
    codes.index_copy_(0, put.to(codes.device), q.view(-1, src.shape[1]).to(codes.device))
    scales.index_copy_(0, put.to(scales.device), e.to(scales.device))


def dequantize_rows_reference(codes: torch.Tensor, scales: torch.Tensor, src_rows: torch.Tensor, dst: torch.Tensor,
                              dst_rows: torch.Tensor) -> None:
    """dst[dst_rows[i]] = dequantise(codes/scales[src_rows[i]]) for every i with both indices >= 0."""
    validate_fp8_rows_args(dst, codes, scales, dst_rows, src_rows)
    take, put = _valid_pairs(src_rows, dst_rows)
    heads = scales.shape[1]
    q = codes.index_select(0, take.to(codes.device)).view(-1, heads, codes.shape[1] // heads)
    e = scales.index_select(0, take.to(scales.device))
    dst.index_copy_(0, put.to(dst.device), dequantize_fp8_reference(q, e, dst.dtype).view(-1, dst.shape[1]).to(dst.device))
