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

Staged rows (`StagedFp8Rows`: the same rows anywhere in one flat uint8 buffer, e.g. device staging that
whole host extents were copied into, each extent's codes then its scales): row i's W codes sit at byte
`code_starts[i] * align` and its H scale exponents at byte `scale_starts[i]`. The fused copies between
staged rows and a float tensor's indexed rows (a negative float-side row or code start skips the entry;
valid float-side rows are distinct, staged rows do not overlap):
    dequantize_scatter(staged, dst [M, W], dst_rows)   dst[dst_rows[i]] = dequantise(staged row i)
    gather_quantize(src [N, W], src_rows, staged)      staged row i = quantise(src[src_rows[i]])
`align` only tells the kernel how the codes are aligned (it vectorises on it): 16 when every code start
is a multiple of 16 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class StagedFp8Rows:
    """R quantised rows in one flat uint8 `buffer` (module docstring): codes of row i at byte
    `code_starts[i] * align`, its `heads` scale exponents at byte `scale_starts[i]`."""

    buffer: torch.Tensor
    code_starts: torch.Tensor
    scale_starts: torch.Tensor
    heads: int
    align: int = 1

    @property
    def num_rows(self) -> int:
        return self.code_starts.numel()


def code_alignment(width: int, at_most: int = 16) -> int:
    """The largest power of two <= `at_most` dividing `width`: the alignment of code rows laid end to
    end from an aligned start (what `StagedFp8Rows.align` can promise for them)."""
    align = 1
    while align < at_most and width % (2 * align) == 0:
        align *= 2
    return align


def validate_staged_args(rows_f: torch.Tensor, f_rows: torch.Tensor, staged: StagedFp8Rows) -> None:
    """Raise ValueError naming the first argument that breaks the staged-rows contract."""
    buffer = staged.buffer
    if buffer.dtype != torch.uint8 or buffer.dim() != 1 or (buffer.numel() > 1 and buffer.stride(0) != 1):
        raise ValueError(f"fp8 staged rows: the buffer must be a contiguous 1-d uint8 tensor, got {buffer.dtype} "
                         f"{tuple(buffer.shape)}")
    if rows_f.dim() != 2 or (rows_f.shape[1] > 1 and rows_f.stride(1) != 1):
        raise ValueError(f"fp8 staged rows: float rows must be 2-d with unit inner stride, got {tuple(rows_f.shape)}")
    if rows_f.dtype not in FLOAT_DTYPES:
        raise ValueError(f"fp8 staged rows: float rows must be fp16/bf16/fp32, got {rows_f.dtype}")
    if staged.heads < 1 or rows_f.shape[1] % staged.heads:
        raise ValueError(f"fp8 staged rows: {staged.heads} heads do not divide rows of {rows_f.shape[1]}")
    if staged.align < 1:
        raise ValueError(f"fp8 staged rows: align must be >= 1, got {staged.align}")
    for name, rows in (("float-side rows", f_rows), ("code starts", staged.code_starts),
                       ("scale starts", staged.scale_starts)):
        if rows.dim() != 1 or rows.dtype not in INDEX_DTYPES:
            raise ValueError(f"fp8 staged rows: {name} must be a 1-d int32/int64 tensor, got {rows.dtype} {tuple(rows.shape)}")
        if rows.numel() != f_rows.numel():
            raise ValueError(f"fp8 staged rows: {name} has {rows.numel()} entries, the float-side rows {f_rows.numel()}")


def _staged_bytes(staged: StagedFp8Rows, take: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte indices into `staged.buffer` of the codes [n, W] and scales [n, H] of staged rows `take`."""
    device = staged.buffer.device
    code_at = staged.code_starts.to(device)[take].long() * staged.align
    scale_at = staged.scale_starts.to(device)[take].long()
    return (code_at[:, None] + torch.arange(width, device=device),
            scale_at[:, None] + torch.arange(staged.heads, device=device))


def _staged_pairs(f_rows: torch.Tensor, staged: StagedFp8Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(float-side rows, staged row numbers) of the entries that are not skipped."""
    f_rows = f_rows.to(staged.buffer.device)
    valid = (f_rows >= 0) & (staged.code_starts.to(f_rows.device) >= 0)
    return f_rows[valid].long(), valid.nonzero().flatten()


def dequantize_scatter_reference(staged: StagedFp8Rows, dst: torch.Tensor, dst_rows: torch.Tensor) -> None:
    """dst[dst_rows[i]] = dequantise(staged row i) for every entry not skipped (module docstring)."""
    validate_staged_args(dst, dst_rows, staged)
    put, take = _staged_pairs(dst_rows, staged)
    width = dst.shape[1]
    code_at, scale_at = _staged_bytes(staged, take, width)
    q = staged.buffer[code_at].view(-1, staged.heads, width // staged.heads)
    values = dequantize_fp8_reference(q, staged.buffer[scale_at], dst.dtype).view(-1, width)
    dst.index_copy_(0, put.to(dst.device), values.to(dst.device))


def gather_quantize_reference(src: torch.Tensor, src_rows: torch.Tensor, staged: StagedFp8Rows) -> None:
    """staged row i = quantise(src[src_rows[i]]) for every entry not skipped (module docstring)."""
    validate_staged_args(src, src_rows, staged)
    take_f, rows = _staged_pairs(src_rows, staged)
    width = src.shape[1]
    values = src.index_select(0, take_f.to(src.device)).view(-1, staged.heads, width // staged.heads)
    q, e = quantize_fp8_reference(values)
    code_at, scale_at = _staged_bytes(staged, rows, width)
    staged.buffer[code_at.flatten()] = q.flatten().to(staged.buffer.device)
    staged.buffer[scale_at.flatten()] = e.flatten().to(staged.buffer.device)
