"""fp8 KV rows: the reference rounds to the nearest e4m3 value, the Triton kernels (CPU interpreter, or
CUDA when present) match it bit for bit, and the round trip obeys the documented error bound. The staged
variants (rows anywhere in one flat buffer: the hybrid layout's device staging) match their reference
and produce exactly the row kernels' codes, scales and values."""

import pytest
import torch

from kernels import StagedFp8Rows, dequantize_rows_fp8, dequantize_scatter_fp8, gather_quantize_fp8, quantize_rows_fp8
from kernels.fp8_rows_ref import (
    E4M3_MAX, code_alignment, dequantize_fp8_reference, exponent_scale, fp8_error_bound, fp8_row_bytes,
    quantize_fp8_reference,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
FINITE_CODES = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)  # 0x7F/0xFF: NaN


def _random_values(gen: torch.Generator, rows: int, heads: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows whose heads span 12 decades of magnitude, with some all-zero heads, exact zeros and values just
    under binade tops (where a rounding carry must move to the next exponent)."""
    x = torch.randn(rows, heads, head_dim, generator=gen)
    x *= 10.0 ** (12 * torch.rand(rows, heads, 1, generator=gen) - 6)
    x[torch.rand(rows, heads, head_dim, generator=gen) < 0.05] = 0.0
    tops = torch.rand(rows, heads, head_dim, generator=gen) < 0.05
    x[tops] = (2.0 ** torch.randint(-8, 9, (int(tops.sum()),), generator=gen)) * 0.999
    x[torch.rand(rows, heads, generator=gen) < 0.1] = 0.0
    return x.to(dtype)


def test_reference_rounds_to_the_nearest_e4m3_value():
    """Independent of torch's float8 cast: each scaled value decodes to a nearest representable value
    (ties to the even code), the scale is the smallest power of two that fits, codes are never NaN."""
    gen = torch.Generator().manual_seed(0)
    table = FINITE_CODES.view(torch.float8_e4m3fn).float()
    x = _random_values(gen, 40, 3, 24, torch.float32)
    codes, exponents = quantize_fp8_reference(x)
    scale = exponent_scale(exponents.to(torch.int32))
    scaled = x / scale[..., None]
    amax = x.abs().amax(-1)
    assert (scaled.abs() <= E4M3_MAX).all()
    fits_half = (amax / (scale / 2) <= E4M3_MAX) & (exponents > 1)
    assert not fits_half.any(), "a smaller power-of-two scale would have fitted"
    assert ((codes & 0x7F) != 0x7F).all()
    decoded = codes.view(torch.float8_e4m3fn).float()
    distance = (scaled[..., None] - table).abs()
    nearest = distance.min(-1).values
    assert torch.equal((scaled - decoded).abs(), nearest)
    ties = ((distance == nearest[..., None]).sum(-1) > 1) & (nearest > 0)
    assert ((codes[ties] & 1) == 0).all(), "ties must round to the even code"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_error_within_documented_bound(dtype):
    gen = torch.Generator().manual_seed(1 + (dtype == torch.bfloat16))
    x = _random_values(gen, 64, 4, 32, dtype)
    if dtype == torch.float16:
        x = x.float().clamp(-6e4, 6e4).to(dtype)
    codes, exponents = quantize_fp8_reference(x)
    back = dequantize_fp8_reference(codes, exponents, dtype)
    assert torch.equal(back.float(), dequantize_fp8_reference(codes, exponents, torch.float32)), "dequantised values must be exact"
    err = (back.float() - x.float()).abs()
    bound = fp8_error_bound(x)
    assert (err <= bound).all()
    assert (err / bound.clamp(min=1e-30)).max() > 0.5, "the bound should be nearly reached somewhere"
    nonzero = x.float().abs().amax(-1) > 0
    relative = (back.float() - x.float()).norm(dim=-1)[nonzero] / x.float().norm(dim=-1)[nonzero]
    assert relative.max() <= 2.0 ** -4
    assert float(relative.mean()) < 0.04  # ~2.3% for Gaussian heads


def _rows_case(gen: torch.Generator, dtype: torch.dtype, index_dtype: torch.dtype):
    heads = int(torch.randint(1, 4, (1,), generator=gen))
    head_dim = int(torch.randint(1, 40, (1,), generator=gen))
    width = heads * head_dim
    n_float, n_fp8 = (int(v) for v in torch.randint(1, 50, (2,), generator=gen))
    floats = _random_values(gen, n_float, heads, head_dim, dtype).view(n_float, width)
    wide = torch.randn(n_float, width + 7, generator=gen).to(dtype)
    wide[:, :width] = floats
    n = int(torch.randint(0, min(n_float, n_fp8) + 1, (1,), generator=gen))
    f_rows = torch.randperm(n_float, generator=gen)[:n]
    q_rows = torch.randperm(n_fp8, generator=gen)[:n]
    f_rows[torch.rand(n, generator=gen) < 0.15] = -1
    q_rows[torch.rand(n, generator=gen) < 0.15] = -3
    codes = torch.randint(0, 256, (n_fp8, width), generator=gen, dtype=torch.uint8)
    scales = torch.randint(0, 256, (n_fp8, heads), generator=gen, dtype=torch.uint8)
    return wide, floats, codes, scales, f_rows.to(index_dtype), q_rows.to(index_dtype)


def _on(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(DEVICE) for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_quantize_rows_triton_matches_reference(dtype, index_dtype):
    gen = torch.Generator().manual_seed(10 + 2 * (dtype == torch.bfloat16) + (index_dtype == torch.int64))
    for _ in range(4):
        wide, _, codes, scales, f_rows, q_rows = _rows_case(gen, dtype, index_dtype)
        src = wide[:, : codes.shape[1]]
        results = []
        for impl in ("triton", "reference"):
            c, s = codes.clone(), scales.clone()
            c_dev, s_dev, src_dev, f_dev, q_dev = _on(c, s, src, f_rows, q_rows)
            quantize_rows_fp8(src_dev, f_dev, c_dev, s_dev, q_dev, impl=impl)
            results.append((c_dev.cpu(), s_dev.cpu()))
        assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
        written = torch.zeros(codes.shape[0], dtype=torch.bool)
        valid = (f_rows >= 0) & (q_rows >= 0)
        written[q_rows[valid].long()] = True
        assert torch.equal(results[0][0][~written], codes[~written]), "rows not named must stay untouched"
        assert torch.equal(results[0][1][~written], scales[~written])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_rows_triton_matches_reference(dtype):
    gen = torch.Generator().manual_seed(20 + (dtype == torch.bfloat16) + 2 * (dtype == torch.float16))
    for _ in range(4):
        wide, floats, codes, scales, f_rows, q_rows = _rows_case(gen, dtype, torch.int64)
        codes[(codes & 0x7F) == 0x7F] = 0x7E  # finite codes only (the format never writes NaN)
        scales.clamp_(118, 134)  # scales that keep fp16 finite (448 * 2^7 < 65504)
        results = []
        for impl in ("triton", "reference"):
            target = wide.clone()
            t_dev, c_dev, s_dev, f_dev, q_dev = _on(target, codes, scales, f_rows, q_rows)
            dequantize_rows_fp8(c_dev, s_dev, q_dev, t_dev[:, : codes.shape[1]], f_dev, impl=impl)
            results.append(t_dev.cpu())
        assert torch.equal(results[0], results[1])
        written = torch.zeros(wide.shape[0], dtype=torch.bool)
        valid = (f_rows >= 0) & (q_rows >= 0)
        written[f_rows[valid].long()] = True
        assert torch.equal(results[0][~written], wide[~written])
        assert torch.equal(results[0][:, codes.shape[1]:], wide[:, codes.shape[1]:]), "columns past W untouched"


def test_triton_dequantizes_every_code_like_torch():
    heads, head_dim = 2, len(FINITE_CODES) // 2
    codes = FINITE_CODES.view(1, -1)
    scales = torch.tensor([[127, 130]], dtype=torch.uint8)
    out = torch.zeros(1, heads * head_dim, device=DEVICE)
    rows = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    dequantize_rows_fp8(*_on(codes, scales), rows, out, rows, impl="triton")
    expected = codes.view(torch.float8_e4m3fn).float().view(heads, head_dim) * torch.tensor([[1.0], [8.0]])
    assert torch.equal(out.cpu().view(heads, head_dim), expected)


def test_round_trip_through_rows_and_row_bytes():
    gen = torch.Generator().manual_seed(30)
    heads, head_dim, n = 3, 16, 12
    x = _random_values(gen, n, heads, head_dim, torch.bfloat16).view(n, -1).to(DEVICE)
    codes = torch.empty(n, heads * head_dim, dtype=torch.uint8, device=DEVICE)
    scales = torch.empty(n, heads, dtype=torch.uint8, device=DEVICE)
    order = torch.randperm(n, generator=gen).to(DEVICE)
    quantize_rows_fp8(x, order, codes, scales, torch.arange(n, device=DEVICE), impl="triton")
    back = torch.empty_like(x)
    dequantize_rows_fp8(codes, scales, torch.arange(n, device=DEVICE), back, order, impl="triton")
    err = (back.float() - x.float()).abs().view(n, heads, head_dim)
    assert (err <= fp8_error_bound(x.view(n, heads, head_dim))).all()
    assert fp8_row_bytes(3, 256) == 771 and fp8_row_bytes(heads, head_dim) == codes.shape[1] + scales.shape[1]


def test_bad_arguments_are_named():
    rows = torch.zeros(1, dtype=torch.int64)
    x = torch.zeros(1, 6)
    with pytest.raises(ValueError, match="uint8"):
        quantize_rows_fp8(x, rows, torch.zeros(1, 6), torch.zeros(1, 2, dtype=torch.uint8), rows, impl="reference")
    with pytest.raises(ValueError, match="do not fit"):
        quantize_rows_fp8(x, rows, torch.zeros(1, 6, dtype=torch.uint8), torch.zeros(1, 4, dtype=torch.uint8), rows)
    with pytest.raises(ValueError, match="index"):
        dequantize_rows_fp8(torch.zeros(1, 6, dtype=torch.uint8), torch.zeros(1, 2, dtype=torch.uint8), rows,
                            x, rows.int())


def _staged_case(gen: torch.Generator, heads: int, head_dim: int, n: int, index_dtype: torch.dtype):
    """n staged rows at random places of a random buffer: code and scale slots shuffled together, random
    gaps between them, code slots at multiples of a random alignment; some entries skipped (-1). Returns
    (staged, code byte starts [n], scale byte starts [n], alignment)."""
    width = heads * head_dim
    align = int(2 ** torch.randint(0, code_alignment(width).bit_length(), (1,), generator=gen))
    slots = [("code", i) for i in range(n)] + [("scale", i) for i in range(n)]
    code_at, scale_at = [0] * n, [0] * n
    at = 0
    for index in torch.randperm(2 * n, generator=gen).tolist():
        kind, row = slots[index]
        at += int(torch.randint(0, 9, (1,), generator=gen))
        if kind == "code":
            at = -(-at // align) * align
            code_at[row], at = at, at + width
        else:
            scale_at[row], at = at, at + heads
    buffer = torch.randint(0, 256, (at + int(torch.randint(0, 5, (1,), generator=gen)),), generator=gen, dtype=torch.uint8)
    code_starts = torch.tensor(code_at, dtype=torch.int64) // align
    code_starts[torch.rand(n, generator=gen) < 0.1] = -1
    staged = StagedFp8Rows(buffer, code_starts.to(index_dtype), torch.tensor(scale_at, dtype=index_dtype), heads, align)
    return staged, torch.tensor(code_at), torch.tensor(scale_at)


def _on_device(staged: StagedFp8Rows) -> StagedFp8Rows:
    return StagedFp8Rows(*_on(staged.buffer.clone(), staged.code_starts, staged.scale_starts), staged.heads, staged.align)


def _float_case(gen: torch.Generator, n: int, heads: int, head_dim: int, dtype: torch.dtype, index_dtype: torch.dtype):
    """A float tensor (a wider parent's first W columns) and n distinct rows of it, some -1."""
    n_float = n + int(torch.randint(0, 6, (1,), generator=gen))
    wide = torch.randn(n_float, heads * head_dim + 5, generator=gen).to(dtype)
    wide[:, : heads * head_dim] = _random_values(gen, n_float, heads, head_dim, dtype).view(n_float, -1)
    rows = torch.randperm(n_float, generator=gen)[:n]
    rows[torch.rand(n, generator=gen) < 0.1] = -1
    return wide, rows.to(index_dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_gather_quantize_triton_matches_reference(dtype, index_dtype):
    gen = torch.Generator().manual_seed(60 + 2 * (dtype == torch.bfloat16) + (index_dtype == torch.int64))
    for _ in range(4):
        heads, head_dim = int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(1, 40, (1,), generator=gen))
        n = int(torch.randint(0, 30, (1,), generator=gen))
        staged, code_at, scale_at = _staged_case(gen, heads, head_dim, n, index_dtype)
        wide, rows = _float_case(gen, n, heads, head_dim, dtype, index_dtype)
        src = wide[:, : heads * head_dim]
        results = []
        for impl in ("triton", "reference"):
            target = _on_device(staged)
            gather_quantize_fp8(*_on(src, rows), target, impl=impl)
            results.append(target.buffer.cpu())
        assert torch.equal(results[0], results[1])
        written = torch.zeros(staged.buffer.numel(), dtype=torch.bool)
        for i in ((rows >= 0) & (staged.code_starts >= 0)).nonzero().flatten().tolist():
            written[code_at[i]: code_at[i] + heads * head_dim] = True
            written[scale_at[i]: scale_at[i] + heads] = True
            codes, scales = quantize_fp8_reference(src[int(rows[i])].view(heads, head_dim))
            assert torch.equal(results[0][code_at[i]: code_at[i] + heads * head_dim], codes.flatten())
            assert torch.equal(results[0][scale_at[i]: scale_at[i] + heads], scales)
        assert torch.equal(results[0][~written], staged.buffer[~written]), "bytes of no staged row stay untouched"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_scatter_triton_matches_reference(dtype):
    gen = torch.Generator().manual_seed(70 + (dtype == torch.bfloat16) + 2 * (dtype == torch.float16))
    for _ in range(4):
        heads, head_dim = int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(1, 40, (1,), generator=gen))
        n = int(torch.randint(0, 30, (1,), generator=gen))
        staged, code_at, scale_at = _staged_case(gen, heads, head_dim, n, torch.int64)
        buffer = staged.buffer
        buffer[(buffer & 0x7F) == 0x7F] = 0x7E  # finite codes, and scales that keep fp16 finite
        for start in scale_at.tolist():
            buffer[start: start + heads].clamp_(118, 134)
        wide, rows = _float_case(gen, n, heads, head_dim, dtype, torch.int64)
        results = []
        for impl in ("triton", "reference"):
            target = wide.clone()
            t_dev, r_dev = _on(target, rows)
            dequantize_scatter_fp8(_on_device(staged), t_dev[:, : heads * head_dim], r_dev, impl=impl)
            results.append(t_dev.cpu())
        assert torch.equal(results[0], results[1])
        written = torch.zeros(wide.shape[0], dtype=torch.bool)
        for i in ((rows >= 0) & (staged.code_starts >= 0)).nonzero().flatten().tolist():
            written[int(rows[i])] = True
            codes = buffer[code_at[i]: code_at[i] + heads * head_dim].view(heads, head_dim)
            expected = dequantize_fp8_reference(codes, buffer[scale_at[i]: scale_at[i] + heads], dtype)
            assert torch.equal(results[0][int(rows[i]), : heads * head_dim], expected.flatten())
        assert torch.equal(results[0][~written], wide[~written]) and torch.equal(results[0][:, heads * head_dim:], wide[:, heads * head_dim:])


@pytest.mark.parametrize("seed", range(3))
def test_staged_rows_hold_exactly_what_the_row_kernels_write(seed):
    """Pool rows -> staged rows -> other pool rows gives the row kernels' codes, scales and values bit for
    bit (the hybrid fp8 layout and the zero-copy one store and load the same numbers)."""
    gen = torch.Generator().manual_seed(80 + seed)
    heads, head_dim, n = 2, 16, 24
    width = heads * head_dim
    staged, code_at, scale_at = _staged_case(gen, heads, head_dim, n, torch.int64)
    staged = StagedFp8Rows(staged.buffer, code_at // staged.align, staged.scale_starts, heads, staged.align)  # none skipped
    pool = _random_values(gen, 3 * n, heads, head_dim, torch.bfloat16).view(3 * n, width).to(DEVICE)
    take, put = torch.randperm(3 * n, generator=gen)[:n].to(DEVICE), torch.randperm(3 * n, generator=gen)[:n].to(DEVICE)
    staged = _on_device(staged)
    gather_quantize_fp8(pool, take, staged, impl="triton")
    codes = torch.empty(n, width, dtype=torch.uint8, device=DEVICE)
    scales = torch.empty(n, heads, dtype=torch.uint8, device=DEVICE)
    quantize_rows_fp8(pool, take, codes, scales, torch.arange(n, device=DEVICE), impl="triton")
    buffer = staged.buffer.cpu()
    for i in range(n):
        assert torch.equal(buffer[code_at[i]: code_at[i] + width], codes[i].cpu())
        assert torch.equal(buffer[scale_at[i]: scale_at[i] + heads], scales[i].cpu())
    staged_back, row_back = torch.zeros_like(pool), torch.zeros_like(pool)
    dequantize_scatter_fp8(staged, staged_back, put, impl="triton")
    dequantize_rows_fp8(codes, scales, torch.arange(n, device=DEVICE), row_back, put, impl="triton")
    assert torch.equal(staged_back, row_back) and staged_back.abs().sum() > 0


def test_staged_bad_arguments_are_named():
    rows = torch.zeros(2, dtype=torch.int64)
    x = torch.zeros(4, 6)
    good = StagedFp8Rows(torch.zeros(64, dtype=torch.uint8), rows, rows, heads=2)
    with pytest.raises(ValueError, match="1-d uint8"):
        gather_quantize_fp8(x, rows, StagedFp8Rows(torch.zeros(8, 8, dtype=torch.uint8), rows, rows, 2), impl="reference")
    with pytest.raises(ValueError, match="heads do not divide"):
        dequantize_scatter_fp8(StagedFp8Rows(good.buffer, rows, rows, heads=4), x, rows, impl="reference")
    with pytest.raises(ValueError, match="scale starts has 1 entries"):
        dequantize_scatter_fp8(StagedFp8Rows(good.buffer, rows, rows[:1], heads=2), x, rows)
    assert [code_alignment(w) for w in (768, 24, 6, 7, 48)] == [16, 8, 2, 1, 16]


def test_kv_bytes_per_token_counts_what_the_fp8_rows_hold():
    from mtbench.errors import MtbenchError
    from mtbench.model.config import MTGRConfig, get_config, kv_bytes_per_token

    for config in (get_config("large"), MTGRConfig(n_layers=3, d_model=24, n_heads=3)):
        heads, head_dim = config.n_heads, config.head_dim
        x = torch.randn(2 * config.n_layers, heads, head_dim)  # one token: K and V rows at every layer
        codes, scales = quantize_fp8_reference(x)
        assert kv_bytes_per_token(config, "fp8") == codes.numel() + scales.numel()
        assert kv_bytes_per_token(config, "bf16") == config.kv_bytes_per_token(torch.bfloat16) == 2 * x.numel()
    with pytest.raises(MtbenchError, match="fp8"):
        kv_bytes_per_token(get_config("large"), "int4")


def test_fp8_zerocopy_layout_stores_and_loads_through_the_engine():
    """Pool pages -> fp8 host rows -> other pool pages: host rows hold the reference quantisation of the
    pool's tokens, reloaded pages hold its dequantisation, bytes counted at the fp8 size."""
    from mtbench.cache.host import Fp8RowArena
    from mtbench.cache.layouts import Fp8ZeroCopyLayout, HostPlacement, TransferJob
    from mtbench.cache.pool import KVShape, PagedKVPool
    from mtbench.cache.transfer import TransferEngine

    gen = torch.Generator().manual_seed(40)
    shape = KVShape(layers=2, heads=2, head_dim=8, dtype=torch.bfloat16, page_tokens=4)
    pool = PagedKVPool(shape, 40 * shape.page_bytes, "cpu")
    pool.kv.copy_(torch.randn(pool.kv.shape, generator=gen) * 10.0 ** torch.randint(-3, 4, (1, 1, 1, 1, 2, 1), generator=gen))
    layout = Fp8ZeroCopyLayout(shape)
    arena = Fp8RowArena(200 * fp8_row_bytes(2, 8), 2, 8, pin=False)
    engine = TransferEngine(pool, arena, layout)
    jobs = []
    for n_tokens in (5, 1, 12):
        offsets = [arena.allocate(rows) for rows in layout.extent_elements(n_tokens)]
        pages = pool.allocate(n_tokens)
        pages = [pages[i] for i in torch.randperm(len(pages), generator=gen).tolist()]
        jobs.append(TransferJob((len(jobs), 0), HostPlacement(offsets, n_tokens), pages))
    handles = engine.store_many(jobs)
    assert all(h is not None and h.done() for h in handles)
    assert sum(h.bytes_moved for h in handles) == 18 * layout.bytes_per_token == 18 * 2 * 2 * (16 + 2)

    def tokens(kv: torch.Tensor, job: TransferJob, layer: int) -> torch.Tensor:
        """[2, n, H, D]: the job's K and V tokens at `layer` from its pages."""
        slots = pool.host_slots(job.pages, job.placement.n_tokens)
        return kv[layer][slots // 4, :, slots % 4].transpose(0, 1)

    for job in jobs:
        for layer, offset in enumerate(job.placement.offsets):
            codes, scales = quantize_fp8_reference(tokens(pool.kv, job, layer).reshape(-1, 2, 8))
            rows = slice(offset, offset + 2 * job.placement.n_tokens)
            assert torch.equal(arena.codes[rows], codes.view(-1, 16)) and torch.equal(arena.scales[rows], scales)
    before = pool.kv.clone()
    reloaded = [TransferJob(job.key, HostPlacement(job.placement.offsets, job.placement.n_tokens), pool.allocate(job.placement.n_tokens))
                for job in jobs]
    handle = engine.load(reloaded)
    handle.synchronize()
    assert not handle.failed and handle.bytes_moved == 18 * layout.bytes_per_token
    for old, new in zip(jobs, reloaded):
        for layer in range(shape.layers):
            original = tokens(before, old, layer).float()
            back = tokens(pool.kv, new, layer).float()
            assert (back - original).abs().le(fp8_error_bound(original)).all()
            assert not torch.equal(back, original), "fp8 is lossy: the test data must show it"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_zero_copy_through_pinned_host_rows_on_gpu():
    """The host tier's path: CUDA pool rows -> pinned host fp8 rows -> other pool rows, bit-exact with the
    reference at MTGR-large row width (3 x 256)."""
    gen = torch.Generator().manual_seed(50)
    n, heads, head_dim = 3000, 3, 256
    pool = torch.randn(n, heads * head_dim, generator=gen).to("cuda", torch.bfloat16)
    rows = torch.randperm(n, generator=gen).cuda()
    codes = torch.empty(n, heads * head_dim, dtype=torch.uint8, pin_memory=True)
    scales = torch.empty(n, heads, dtype=torch.uint8, pin_memory=True)
    quantize_rows_fp8(pool, rows, codes, scales, torch.arange(n, device="cuda"))
    back = torch.empty_like(pool)
    dequantize_rows_fp8(codes, scales, torch.arange(n, device="cuda"), back, rows)
    torch.cuda.synchronize()
    ref_codes, ref_scales = quantize_fp8_reference(pool.cpu()[rows.cpu()].view(n, heads, head_dim))
    assert torch.equal(codes.view(n, heads, head_dim), ref_codes) and torch.equal(scales, ref_scales)
    expected = dequantize_fp8_reference(ref_codes, ref_scales, torch.bfloat16).view(n, -1)
    assert torch.equal(back.cpu()[rows.cpu()], expected)
