"""`mtbench bench model`: MTGR forward time, full vs cached, per preset, plus a precision check.

Per preset: one batch of `batch` requests of U+S static, R real-time and C candidate tokens. "full"
computes every token; "cached" takes the U+S K/V (from `encode_prefix`) from a paged pool shaped like
the cache's GPU tier ([layers, pages, 2, P, H, D], P=32, pages in random order) and computes R and C
only. Times are medians over `iters` runs after `warmup` runs (CUDA events on the GPU, wall clock on
the CPU). The ratio bounds what any cache can give on this shape.

Precision: logits of the timed model (full and cached) against an fp32 model with the PyTorch
reference kernels. For bf16/fp16 the rule is: error vs fp32 at most 2x that of the plain PyTorch path
(reference kernels) in the same dtype; for fp32, relative error at most FP32_RTOL.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from rich.progress import Progress

from mtbench.device import resolve_device
from mtbench.errors import MtbenchError
from mtbench.model import (
    MTGR,
    MTGRConfig,
    RequestBatch,
    build_batch,
    get_config,
    miss_and_hit_flops,
    page_static_kv,
    parse_dtype,
    sample_requests,
)

FP32_RTOL = 1e-5
LOW_PRECISION_FACTOR = 2.0


@dataclass(frozen=True)
class ModelBenchSettings:
    presets: tuple[str, ...] = ("small", "medium", "large")
    batch: int = 16
    n_user: int = 32
    n_seq: int = 1000
    n_rt: int = 100
    n_cand: int = 200
    dtype: str = "bf16"
    device: str = "cuda"
    kernels: str = "auto"
    iters: int = 10
    warmup: int = 3
    page_tokens: int = 32
    seed: int = 0


@dataclass(frozen=True)
class ModelBenchRow:
    """One preset's result; errors are max|x - ref| / max|ref| over the candidate logits."""

    preset: str
    batch: int
    n_static: int
    n_rt: int
    n_cand: int
    dtype: str
    device: str
    kernels: str
    full_ms: float
    cached_ms: float
    speedup: float
    flop_ratio: float
    full_tflops: float
    cached_tflops: float
    cached_vs_full_err: float
    full_vs_fp32_err: float
    cached_vs_fp32_err: float
    plain_vs_fp32_err: float
    precision_ok: bool


def bench_config(preset: str, settings: ModelBenchSettings, kernel_impl: str) -> MTGRConfig:
    """Preset with U = n_user and limits wide enough for the benchmark's shape."""
    base = get_config(preset)
    return get_config(preset, n_user_tokens=settings.n_user, max_seq=max(base.max_seq, settings.n_seq),
                      max_rt=max(base.max_rt, settings.n_rt), max_cand=max(base.max_cand, settings.n_cand),
                      kernel_impl=kernel_impl)


def validate(settings: ModelBenchSettings) -> None:
    """Check every option before any work starts."""
    for preset in settings.presets:
        get_config(preset)
    parse_dtype(settings.dtype)
    resolve_device(settings.device)
    for name in ("batch", "iters", "page_tokens", "n_cand", "n_user"):
        if getattr(settings, name) < 1:
            raise MtbenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    for name in ("warmup", "n_seq", "n_rt"):
        if getattr(settings, name) < 0:
            raise MtbenchError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(settings, name)}")
    if settings.kernels not in ("auto", "reference"):
        raise MtbenchError(f"--kernels must be auto or reference, got {settings.kernels!r}")


def median_ms(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Median wall time of fn() in ms after `warmup` untimed calls (CUDA events on a CUDA device)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return float((x.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


def _reference_logits(preset: str, settings: ModelBenchSettings, batch: RequestBatch, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """Candidate logits of the same weights (seeded init) in `dtype` with the PyTorch reference kernels."""
    model = MTGR(bench_config(preset, settings, "reference")).to(device=device, dtype=dtype).eval()
    logits = model(batch).logits
    del model
    return logits


def bench_preset(preset: str, settings: ModelBenchSettings) -> ModelBenchRow:
    device, dtype = resolve_device(settings.device), parse_dtype(settings.dtype)
    cfg = bench_config(preset, settings, settings.kernels)
    n_static = settings.n_user + settings.n_seq
    requests = sample_requests(cfg, settings.batch, n_static=n_static, n_rt=settings.n_rt,
                               n_cand=settings.n_cand, seed=settings.seed)
    miss = build_batch(requests, cfg, device)
    hit = build_batch([replace(r, n_cached=r.n_static) for r in requests], cfg, device)
    model = MTGR(cfg).to(device=device, dtype=dtype).eval()
    paged = page_static_kv(model.encode_prefix(miss), settings.page_tokens, seed=settings.seed)

    full_ms = median_ms(lambda: model(miss), settings.iters, settings.warmup, device)
    cached_ms = median_ms(lambda: model.forward_cached(hit, paged.prefix, check_prefix=False),
                          settings.iters, settings.warmup, device)
    full_logits = model(miss).logits
    cached_logits = model.forward_cached(hit, paged.prefix).logits
    del model, paged

    fp32_logits = _reference_logits(preset, settings, miss, torch.float32, device)
    if dtype == torch.float32:
        plain_err = 0.0
    else:
        plain_err = _rel_err(_reference_logits(preset, settings, miss, dtype, device), fp32_logits)
    full_err, cached_err = _rel_err(full_logits, fp32_logits), _rel_err(cached_logits, fp32_logits)
    if dtype == torch.float32:
        ok = max(full_err, cached_err) <= FP32_RTOL
    else:
        ok = max(full_err, cached_err) <= LOW_PRECISION_FACTOR * plain_err

    miss_flops, hit_flops = miss_and_hit_flops(cfg, n_static, settings.n_rt, settings.n_cand)
    return ModelBenchRow(
        preset=preset, batch=settings.batch, n_static=n_static, n_rt=settings.n_rt, n_cand=settings.n_cand,
        dtype=settings.dtype, device=str(device), kernels=settings.kernels,
        full_ms=full_ms, cached_ms=cached_ms, speedup=full_ms / cached_ms,
        flop_ratio=miss_flops.total / hit_flops.total,
        full_tflops=settings.batch * miss_flops.total / (full_ms * 1e9),
        cached_tflops=settings.batch * hit_flops.total / (cached_ms * 1e9),
        cached_vs_full_err=_rel_err(cached_logits, full_logits), full_vs_fp32_err=full_err,
        cached_vs_fp32_err=cached_err, plain_vs_fp32_err=plain_err, precision_ok=ok,
    )


def run_model_bench(settings: ModelBenchSettings, progress: Progress | None = None) -> list[ModelBenchRow]:
    """Benchmark every preset in `settings.presets` (validated first); one row per preset."""
    validate(settings)
    rows = []
    task = progress.add_task("bench model", total=len(settings.presets)) if progress else None
    for preset in settings.presets:
        if progress is not None:
            progress.update(task, description=f"bench model: {preset}")
        rows.append(bench_preset(preset, settings))
        if progress is not None:
            progress.advance(task)
    return rows


def bench_json(settings: ModelBenchSettings, rows: list[ModelBenchRow]) -> dict:
    """The numbers as a JSON-ready dict: settings, torch version, device name, one object per preset."""
    device = resolve_device(settings.device)
    return {
        "kind": "bench-model",
        "settings": {**asdict(settings), "presets": list(settings.presets)},
        "torch_version": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "rows": [asdict(row) for row in rows],
    }
