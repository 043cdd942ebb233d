"""`mtbench bench kernels`: time the Triton kernels against the padded PyTorch references on a GPU.

Shapes (issue 6): per request U+S = 1032 static tokens, R = 100, C = 200, heads x head_dim of the
preset. Cases per (preset, batch):
- `full`: full-prefix forward attention (every row computed, no cache);
- `cached`: R + C rows against 1032 static keys read from a paged pool (P = 32, random page order);
- `cached_cand`: the 200 candidates alone against 1132 cached keys from pages (the target's shape);
plus Group LayerNorm (gated) over all rows, page copy (scatter/gather of one layer's static K/V), and
the host tier's zero-copy loads/stores of one layer's static K/V in bf16 and in fp8 (kernels/fp8_rows_ref.py).
TFLOP/s counts only unmasked work (4 * head_dim flops per visible (row, key) pair and head).
Times are medians over CUDA-event timed calls that rotate over several input sets.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from kernels import (
    AttentionSpec, copy_rows, dequantize_rows_fp8, gather_from_pages, group_layernorm, hstu_attention,
    quantize_rows_fp8, scatter_to_pages,
)
from kernels.group_layernorm_ref import group_layernorm_reference
from kernels.hstu_attention_ref import hstu_attention_reference
from kernels.page_copy_ref import gather_from_pages_reference, scatter_to_pages_reference
from kernels.testing import AttentionCase
from mtbench.errors import MtbenchError
from mtbench.model import MTGR, RequestSpec, build_batch, get_config, page_static_kv

N_STATIC, N_RT, N_CAND, PAGE_TOKENS = 1032, 100, 200, 32


@dataclass(frozen=True)
class Shape:
    """Per-request token counts of one benchmark case (identical for every request of the batch)."""

    n_cached: int
    n_new_static: int
    n_rt: int
    n_cand: int

    @property
    def rows(self) -> int:
        return self.n_new_static + self.n_rt + self.n_cand

    def visible_pairs(self, causal_static: bool = False) -> int:
        """(row, key) pairs the MTGR mask keeps, per request and head."""
        m, s, r, c = self.n_cached, self.n_new_static, self.n_rt, self.n_cand
        n = m + s
        static = s * m + s * (s + 1) // 2 if causal_static else s * n
        return static + r * n + r * (r + 1) // 2 + c * (n + r + 1)


CASES: dict[str, Shape] = {
    "full": Shape(0, N_STATIC, N_RT, N_CAND),
    "cached": Shape(N_STATIC, 0, N_RT, N_CAND),
    "cached_cand": Shape(N_STATIC + N_RT, 0, 0, N_CAND),
}


@dataclass
class Row:
    """One line of the results table."""

    preset: str
    batch: int
    op: str
    case: str
    impl: str
    ms: float
    tflops: float | None = None
    gbps: float | None = None
    speedup: float | None = None
    note: str = ""


def time_cuda(calls: Sequence[Callable[[], object]], repeats: int = 20, warmup: int = 3) -> float:
    """Median device milliseconds of one call, rotating over `calls` (one per input set).

    `triton.testing.do_bench` with about `repeats` timed calls: each call is preceded by an L2 flush
    (so inputs come from HBM, as in a replay) and the calls are queued without waiting for the GPU,
    so the host's launch time stays out of the figure while the GPU is the slower side. Before issue 15
    every call was host-synchronised, which added the launch time (~0.09 ms for attention).
    """
    import triton

    for i in range(warmup):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    calls[0]()
    end.record()
    end.synchronize()
    estimate = max(start.elapsed_time(end), 1e-3)
    cycle = itertools.cycle(calls)
    return triton.testing.do_bench(lambda: next(cycle)(), warmup=estimate, rep=max(repeats, 5) * estimate,
                                   return_mode="median")


def make_case(shape: Shape, batch: int, heads: int, head_dim: int, dtype: torch.dtype, seed: int) -> AttentionCase:
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(rows: int) -> torch.Tensor:
        return torch.randn(rows, heads, head_dim, generator=gen, device="cuda", dtype=dtype)

    def per_request(n: int) -> torch.Tensor:
        return torch.full((batch,), n, dtype=torch.long, device="cuda")

    offsets = torch.arange(batch + 1, device="cuda") * shape.rows
    total, cached = batch * shape.rows, batch * shape.n_cached
    return AttentionCase(randn(total), randn(total), randn(total), offsets, per_request(shape.n_new_static),
                         per_request(shape.n_rt), randn(cached), randn(cached), per_request(shape.n_cached))


def bench_attention(preset: str, batch: int, heads: int, head_dim: int, dtype: torch.dtype, n_sets: int,
                    with_reference: bool) -> list[Row]:
    spec = AttentionSpec(alpha=head_dim ** -0.5)
    rows = []
    for case_name, shape in CASES.items():
        calls, ref_calls = [], []
        for seed in range(n_sets):
            case = make_case(shape, batch, heads, head_dim, dtype, seed)
            prefix = case.paged_prefix(PAGE_TOKENS, torch.Generator().manual_seed(seed)) if shape.n_cached else None
            args = (case.q, case.k, case.v, case.offsets, case.n_new_static, case.n_rt, spec, prefix)
            calls.append(lambda args=args: hstu_attention(*args))
            ref_calls.append(lambda args=args: hstu_attention_reference(*args))
        flops = 4 * head_dim * heads * batch * shape.visible_pairs()
        ms = time_cuda(calls)
        row = Row(preset, batch, "attention", case_name, "triton", ms, tflops=flops / ms / 1e9)
        if with_reference:
            ref_ms = time_cuda(ref_calls[:1], repeats=5, warmup=1)
            rows.append(Row(preset, batch, "attention", case_name, "reference", ref_ms, tflops=flops / ref_ms / 1e9))
            row.speedup = ref_ms / ms
        rows.append(row)
        del calls, ref_calls
    return rows


def bench_group_layernorm(preset: str, batch: int, d_model: int, dtype: torch.dtype, n_sets: int) -> list[Row]:
    tokens = batch * CASES["full"].rows
    sets = []
    for seed in range(n_sets):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x, gate = (torch.randn(tokens, d_model, generator=gen, device="cuda", dtype=dtype) for _ in range(2))
        groups = torch.randint(0, 4, (tokens,), generator=gen, device="cuda")
        weight, bias = (torch.randn(4, d_model, generator=gen, device="cuda", dtype=dtype) for _ in range(2))
        sets.append((x, groups, weight, bias, 1e-5, gate))
    moved = 3 * tokens * d_model * torch.empty((), dtype=dtype).element_size()  # x, gate read; out written
    ms = time_cuda([lambda s=s: group_layernorm(*s) for s in sets])
    ref_ms = time_cuda([lambda s=s: group_layernorm_reference(*s) for s in sets])
    return [Row(preset, batch, "group_layernorm", "gated", "reference", ref_ms, gbps=moved / ref_ms / 1e6),
            Row(preset, batch, "group_layernorm", "gated", "triton", ms, gbps=moved / ms / 1e6, speedup=ref_ms / ms)]


def bench_page_copy(preset: str, batch: int, heads: int, head_dim: int, dtype: torch.dtype, n_sets: int,
                    d2d_gbps: float) -> list[Row]:
    tokens = batch * N_STATIC
    n_pages = tokens // PAGE_TOKENS + batch
    sets = []
    for seed in range(n_sets):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        pool = torch.randn(n_pages, 2, PAGE_TOKENS, heads, head_dim, generator=gen, device="cuda", dtype=dtype)
        pages = torch.randperm(n_pages, generator=gen, device="cuda")  # pages in random order, tokens in page order
        slots = (pages[:, None] * PAGE_TOKENS + torch.arange(PAGE_TOKENS, device="cuda")).flatten()[:tokens]
        buffer = torch.randn(2, tokens, heads, head_dim, generator=gen, device="cuda", dtype=dtype)
        sets.append((buffer, pool, slots))
    moved = 2 * buffer.numel() * buffer.element_size()  # read + write
    rows = []
    for case, fast, ref in (
        ("scatter", lambda b, p, s: scatter_to_pages(b, p, s), lambda b, p, s: scatter_to_pages_reference(b, p, s)),
        ("gather", lambda b, p, s: gather_from_pages(p, s, out=b), lambda b, p, s: gather_from_pages_reference(p, s, out=b)),
    ):
        ms = time_cuda([lambda s=s: fast(*s) for s in sets])
        ref_ms = time_cuda([lambda s=s: ref(*s) for s in sets])
        gbps = moved / ms / 1e6
        rows.append(Row(preset, batch, "page_copy", case, "reference", ref_ms, gbps=moved / ref_ms / 1e6))
        rows.append(Row(preset, batch, "page_copy", case, "triton", ms, gbps=gbps, speedup=ref_ms / ms,
                        note=f"{100 * gbps / d2d_gbps:.0f}% of D2D"))
    return rows


def bench_host_rows(preset: str, batch: int, heads: int, head_dim: int, dtype: torch.dtype) -> list[Row]:
    """One layer of `batch` host hits of N_STATIC tokens moved between pinned host rows and pool rows by the
    zero-copy kernels: bf16 rows (`copy_rows`) vs fp8 rows (`dequantize_rows_fp8` / `quantize_rows_fp8`)."""
    n_rows, width = batch * 2 * N_STATIC, heads * head_dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    pool = torch.randn(n_rows, width, generator=gen, device="cuda").to(dtype)
    pool_rows = torch.randperm(n_rows, generator=gen, device="cuda")
    host_rows = torch.arange(n_rows, device="cuda")
    host = torch.empty(n_rows, width, dtype=dtype, pin_memory=True)
    codes = torch.empty(n_rows, width, dtype=torch.uint8, pin_memory=True)
    scales = torch.empty(n_rows, heads, dtype=torch.uint8, pin_memory=True)
    plain_bytes, fp8_bytes = n_rows * width * pool.element_size(), n_rows * (width + heads)
    runs = {
        ("load", "bf16"): (lambda: copy_rows(host, host_rows, pool, pool_rows), plain_bytes),
        ("load", "fp8"): (lambda: dequantize_rows_fp8(codes, scales, host_rows, pool, pool_rows), fp8_bytes),
        ("store", "bf16"): (lambda: copy_rows(pool, pool_rows, host, host_rows), plain_bytes),
        ("store", "fp8"): (lambda: quantize_rows_fp8(pool, pool_rows, codes, scales, host_rows), fp8_bytes),
    }
    rows, plain_ms = [], {}
    for (case, kind), (call, moved) in runs.items():
        ms = time_cuda([call], repeats=10, warmup=2)
        speedup = None if kind == "bf16" else plain_ms[case] / ms
        plain_ms.setdefault(case, ms)
        rows.append(Row(preset, batch, "host_rows", case, kind, ms, gbps=moved / ms / 1e6, speedup=speedup,
                        note="zero-copy over PCIe, one layer"))
    return rows


def bench_model(preset: str, batch: int, dtype: torch.dtype) -> list[Row]:
    """Whole MTGR forward, full vs cached (paged prefix), with the Triton kernels and with the references."""
    cfg = get_config(preset)
    model = MTGR(cfg).to("cuda", dtype)
    n_static = cfg.n_user_tokens + cfg.max_seq
    full_specs = [RequestSpec(i, 0, i, n_static, N_RT, N_CAND) for i in range(batch)]
    hit_specs = [RequestSpec(i, 0, i, n_static, N_RT, N_CAND, n_cached=n_static) for i in range(batch)]
    full_batch, hit_batch = build_batch(full_specs, cfg, "cuda"), build_batch(hit_specs, cfg, "cuda")
    paged = page_static_kv(model.encode_prefix(full_batch), PAGE_TOKENS)
    runs = {
        "full": lambda: model(full_batch),
        "cached": lambda: model.forward_cached(hit_batch, paged.prefix, check_prefix=False),
    }
    rows = []
    for case, call in runs.items():
        ms = time_cuda([call], repeats=5, warmup=1)
        os.environ["MTBENCH_KERNELS"] = "reference"
        try:
            ref_ms = time_cuda([call], repeats=3, warmup=1)
        finally:
            del os.environ["MTBENCH_KERNELS"]
        rows.append(Row(preset, batch, "model_forward", case, "reference", ref_ms))
        rows.append(Row(preset, batch, "model_forward", case, "triton", ms, speedup=ref_ms / ms))
    return rows


def device_copy_gbps() -> float:
    """Device-to-device copy bandwidth (bytes read + written), the page-copy ceiling."""
    src = torch.randn(256 * 2**20, device="cuda")
    dst = torch.empty_like(src)
    ms = time_cuda([lambda: dst.copy_(src)])
    return 2 * src.numel() * src.element_size() / ms / 1e6


def run_kernel_bench(presets: Sequence[str], batches: Sequence[int], dtype: torch.dtype = torch.bfloat16,
                     n_sets: int = 3, with_reference: bool = True, with_model: bool = True,
                     progress: Callable[[str], None] = lambda _: None) -> tuple[list[Row], dict]:
    """Run every benchmark; returns the rows and the environment (device, versions, D2D ceiling)."""
    if not torch.cuda.is_available():
        raise MtbenchError("mtbench bench kernels needs a CUDA GPU (the kernels' CPU mode is for tests only)")
    import triton

    d2d = device_copy_gbps()
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "dtype": str(dtype).removeprefix("torch."), "d2d_copy_GBps": d2d, "input_sets": n_sets}
    rows: list[Row] = []
    for preset in presets:
        cfg = get_config(preset)
        for batch in batches:
            progress(f"{preset} B={batch}: attention")
            rows += bench_attention(preset, batch, cfg.n_heads, cfg.head_dim, dtype, n_sets, with_reference)
            progress(f"{preset} B={batch}: group_layernorm, page_copy")
            rows += bench_group_layernorm(preset, batch, cfg.d_model, dtype, n_sets)
            rows += bench_page_copy(preset, batch, cfg.n_heads, cfg.head_dim, dtype, n_sets, d2d)
            rows += bench_host_rows(preset, batch, cfg.n_heads, cfg.head_dim, dtype)
            torch.cuda.empty_cache()
    for preset in presets if with_model else ():
        for batch in batches:
            progress(f"{preset} B={batch}: model forward")
            try:
                rows += bench_model(preset, batch, dtype)
            except Exception as err:  # keep the kernel numbers when the whole-model section cannot run
                rows.append(Row(preset, batch, "model_forward", "-", "-", float("nan"), note=f"failed: {err}"[:120]))
            torch.cuda.empty_cache()
    return rows, env


def rows_as_dicts(rows: Sequence[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


SWEEP_CONFIGS = (  # (block_m, block_n, num_warps, num_stages, fast_silu)
    (128, 64, 8, 2, True), (128, 64, 8, 2, False), (128, 32, 8, 3, True), (128, 32, 8, 3, False),
    (128, 32, 8, 4, True), (128, 32, 4, 3, True), (64, 32, 4, 3, True),
)


def sweep_attention_configs(batch: int, heads: int, head_dim: int, dtype: torch.dtype = torch.bfloat16,
                            configs: Sequence[tuple[int, int, int, int, bool]] = SWEEP_CONFIGS) -> list[Row]:
    """Time each tile config on `full` and on `cached_cand` with paged and with contiguous prefix K/V
    (a config that fails to compile is noted)."""
    from kernels.hstu_attention_triton import AttentionConfig, hstu_attention_triton

    spec = AttentionSpec(alpha=head_dim ** -0.5)
    rows = []
    for case_name, prefix_kind in (("full", "none"), ("cached_cand", "paged"), ("cached_cand", "contiguous")):
        shape = CASES[case_name]
        inputs = []
        for seed in range(2):
            case = make_case(shape, batch, heads, head_dim, dtype, seed)
            prefix = case.prefix(prefix_kind, torch.Generator().manual_seed(seed), PAGE_TOKENS)
            inputs.append((case.q, case.k, case.v, case.offsets, case.n_new_static, case.n_rt, spec, prefix))
        flops = 4 * head_dim * heads * batch * shape.visible_pairs()
        for tiles in configs:
            config = AttentionConfig(*tiles)
            label = "m{}n{}w{}s{}{}".format(*tiles[:4], "" if tiles[4] else " exp2")
            try:
                ms = time_cuda([lambda a=a: hstu_attention_triton(*a, config=config) for a in inputs])
            except Exception as err:  # a tile shape the compiler rejects (e.g. out of shared memory)
                rows.append(Row("sweep", batch, "attention", f"{case_name}/{prefix_kind}", label, float("nan"),
                                note=type(err).__name__))
                continue
            rows.append(Row("sweep", batch, "attention", f"{case_name}/{prefix_kind}", label, ms, tflops=flops / ms / 1e9))
    return rows
