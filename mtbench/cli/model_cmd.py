"""`mtbench model info|forward` and `mtbench bench model`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtbench.cli.options import HELP_MARKUP, DeviceOpt, DtypeOpt, KvDtypeOpt, ModelListOpt, ModelOpt, resolve_device_dtype
from mtbench.device import resolve_device
from mtbench.bench.model import FP32_RTOL, ModelBenchRow, ModelBenchSettings, bench_json, median_ms, run_model_bench, validate
from mtbench.errors import MtbenchError
from mtbench.model import (
    MTGR,
    build_batch,
    count_parameters,
    get_config,
    miss_and_hit_flops,
    page_static_kv,
    parse_dtype,
    sample_requests,
)
from mtbench.model.config import PAPER_GFLOPS
from mtbench.paths import check_output_file, write_text_atomic
from mtbench.units import format_bytes

model_app = typer.Typer(help="The MTGR model: shapes, sizes, FLOPs, a sample forward.", no_args_is_help=True,
                        rich_markup_mode=HELP_MARKUP)
console = Console()


def _count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _flops(n: float) -> str:
    return f"{_count(n)} FLOP"


def model_info(
    preset: ModelOpt = "large",
    n_static: int | None = typer.Option(None, help="U+S tokens per request (default: the preset's maximum)"),
    n_rt: int | None = typer.Option(None, help="R tokens per request (default: the preset's maximum)"),
    n_cand: int = typer.Option(200, help="candidates per request"),
    dtype: KvDtypeOpt = "bf16",
    history: str = typer.Option("bidirectional", help="bidirectional (MTGR) or causal (append) history"),
) -> None:
    """Parameters, KV bytes per static token and per user, FLOPs per request for a miss vs a hit.

    Examples:

      mtbench model info --model large

      mtbench model info --model mini --dtype fp32 --n-static 132 --n-rt 20
    """
    cfg = get_config(preset, history=history)
    torch_dtype = parse_dtype(dtype)
    n_static = cfg.max_static if n_static is None else n_static
    n_rt = cfg.max_rt if n_rt is None else n_rt
    for option, value, low, high in (("--n-static", n_static, 1, cfg.max_static), ("--n-rt", n_rt, 0, cfg.max_rt),
                                     ("--n-cand", n_cand, 1, cfg.max_cand)):
        if not low <= value <= high:
            raise MtbenchError(f"{option} {value} is outside [{low}, {high}] for preset {preset!r}")
    params = count_parameters(cfg)
    miss, hit = miss_and_hit_flops(cfg, n_static, n_rt, n_cand)

    table = Table(title=f"MTGR {preset}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads "
                        f"(head_dim {cfg.head_dim}), U={cfg.n_user_tokens}, {history} history")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("parameters (total)", _count(params.total)),
        ("  embedding tables", _count(params.embedding)),
        ("  dense (MLPs, HSTU layers, heads)", _count(params.dense)),
        ("request shape (U+S / R / C)", f"{n_static} / {n_rt} / {n_cand}"),
        (f"KV bytes per static token ({dtype})", f"{cfg.kv_bytes_per_token(torch_dtype):,} B"),
        (f"KV bytes per user ({n_static} static tokens)", format_bytes(cfg.kv_bytes(n_static, torch_dtype))),
        ("FLOPs per request, miss (U+S+R+C computed)", _flops(miss.total)),
        ("  of which attention (unmasked pairs)", _flops(miss.attention)),
        ("FLOPs per request, hit (R+C computed)", _flops(hit.total)),
        ("  of which attention (unmasked pairs)", _flops(hit.attention)),
        ("miss / hit FLOP ratio", f"{miss.total / hit.total:.2f}x"),
    ]
    if preset in PAPER_GFLOPS:
        rows.append(("paper GFLOPs per example (Table 2, its own lengths)", f"{PAPER_GFLOPS[preset]:.2f}"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def model_forward(
    preset: ModelOpt = "tiny",
    batch: int = typer.Option(4, "--batch-size", help="requests in the sample batch"),
    n_static: int | None = typer.Option(None, help="U+S tokens per request (default: random per request)"),
    n_rt: int | None = typer.Option(None, help="R tokens per request (default: random per request)"),
    n_cand: int | None = typer.Option(None, help="candidates per request (default: random per request)"),
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    seed: int = typer.Option(0, help="seed of the sample batch"),
    iters: int = typer.Option(3, help="timed runs per forward (median)"),
) -> None:
    """Run a full and a cached forward on a sample batch; print scores, timing and max |cached - full|.

    Examples:

      mtbench model forward --model tiny --device cpu --batch-size 2 \\
        --n-static 64 --n-rt 8 --n-cand 16

      mtbench model forward --model large --device cuda  # needs a CUDA GPU
    """
    cfg = get_config(preset)
    device, dtype = resolve_device_dtype(device, dtype)
    torch_dtype, torch_device = parse_dtype(dtype), resolve_device(device)
    if iters < 1:
        raise MtbenchError(f"--iters must be >= 1, got {iters}")
    if batch < 1:
        raise MtbenchError(f"--batch-size must be >= 1, got {batch}")
    requests = sample_requests(cfg, batch, n_static=n_static, n_rt=n_rt, n_cand=n_cand, seed=seed)
    miss = build_batch(requests, cfg, torch_device)
    hit = build_batch([replace(r, n_cached=r.n_static) for r in requests], cfg, torch_device)
    model = MTGR(cfg).to(device=torch_device, dtype=torch_dtype).eval()

    full = model(miss)
    paged = page_static_kv(model.encode_prefix(miss), seed=seed)
    cached = model.forward_cached(hit, paged.prefix)
    timings = {
        "full forward": median_ms(lambda: model(miss), iters, 1, torch_device),
        "encode_prefix": median_ms(lambda: model.encode_prefix(miss), iters, 1, torch_device),
        "cached forward (paged prefix)": median_ms(lambda: model.forward_cached(hit, paged.prefix), iters, 1, torch_device),
    }

    scores = Table(title=f"MTGR {preset} sample batch ({dtype}, {torch_device})")
    for column in ("request", "user", "U+S", "R", "C", "mean CTR", "mean CTCVR", "max |Δ| CTR"):
        scores.add_column(column, justify="right")
    offsets = full.offsets.tolist()
    for b, r in enumerate(requests):
        part = slice(offsets[b], offsets[b + 1])
        scores.add_row(str(b), str(r.user_id), str(r.n_static), str(r.n_rt), str(r.n_cand),
                       f"{full.ctr[part].mean():.4f}", f"{full.ctcvr[part].mean():.4f}",
                       f"{(cached.ctr[part] - full.ctr[part]).abs().max():.2e}")
    console.print(scores)

    timing = Table(title="timing (median ms) and exactness")
    timing.add_column("what")
    timing.add_column("value", justify="right")
    for name, ms in timings.items():
        timing.add_row(name, f"{ms:.3f} ms")
    hidden_diff = (cached.hidden[hit.request_rows()] - full.hidden[miss.request_rows()]).abs().max()
    timing.add_row("max |cached - full| scores (CTR, CTCVR)",
                   f"{max((cached.ctr - full.ctr).abs().max(), (cached.ctcvr - full.ctcvr).abs().max()):.2e}")
    timing.add_row("max |cached - full| R and C hidden states", f"{float(hidden_diff):.2e}")
    console.print(timing)


def bench_model(
    presets: ModelListOpt = "small,medium,large",
    batch: int = typer.Option(16, "--batch-size", help="requests per batch"),
    n_user: int = typer.Option(32, help="U tokens per request"),
    n_seq: int = typer.Option(1000, help="S tokens per request"),
    n_rt: int = typer.Option(100, help="R tokens per request"),
    n_cand: int = typer.Option(200, help="candidates per request"),
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    kernels: str = typer.Option("auto", help="auto (Triton on CUDA) or reference (PyTorch)"),
    iters: int = typer.Option(10, help="timed iterations (median)"),
    warmup: int = typer.Option(3, help="untimed warm-up iterations"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the numbers to this JSON file"),
) -> None:
    """Forward time of MTGR, full vs cached (paged prefix), per preset, with a precision check.

    Use small shapes on the CPU; the figures mean something on the GPU.

    Examples:

      mtbench bench model --model tiny --device cpu --batch-size 2 --n-seq 64 \\
        --n-rt 8 --n-cand 16 --iters 1 --warmup 0

      mtbench bench model --model medium,large --device cuda  # needs a CUDA GPU
    """
    device, dtype = resolve_device_dtype(device, dtype)
    settings = ModelBenchSettings(
        presets=tuple(p.strip() for p in presets.split(",") if p.strip()), batch=batch, n_user=n_user,
        n_seq=n_seq, n_rt=n_rt, n_cand=n_cand, dtype=dtype, device=device, kernels=kernels, iters=iters,
        warmup=warmup)
    if not settings.presets:
        raise MtbenchError("--model: no preset given")
    validate(settings)
    if json_path is not None:
        check_output_file(json_path, "--json")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as progress:
        rows = run_model_bench(settings, progress)
    for table in _bench_tables(rows):
        console.print(table)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(bench_json(settings, rows), indent=2) + "\n")
        console.print(f"wrote {json_path}")


def _bench_tables(rows: list[ModelBenchRow]) -> tuple[Table, Table]:
    """(timing table, precision table)."""
    first = rows[0]
    timing = Table(title=f"MTGR forward, full vs cached: batch {first.batch}, U+S {first.n_static}, R {first.n_rt}, "
                         f"C {first.n_cand}, {first.dtype} on {first.device}, kernels {first.kernels} (median ms)")
    for column in ("preset", "full ms", "cached ms", "speedup", "FLOP ratio", "full TFLOP/s", "cached TFLOP/s"):
        timing.add_column(column, justify="right")
    for r in rows:
        timing.add_row(r.preset, f"{r.full_ms:.3f}", f"{r.cached_ms:.3f}", f"{r.speedup:.2f}x",
                       f"{r.flop_ratio:.2f}x", f"{r.full_tflops:.3g}", f"{r.cached_tflops:.3g}")
    rule = "error vs fp32 <= 2x plain-PyTorch error" if first.dtype != "fp32" else f"relative error <= {FP32_RTOL:g}"
    precision = Table(title=f"precision of candidate logits, max|x-ref|/max|ref| ({rule})")
    for column in ("preset", "cached vs full", "full vs fp32", "cached vs fp32", "plain vs fp32", "verdict"):
        precision.add_column(column, justify="right")
    for r in rows:
        precision.add_row(r.preset, f"{r.cached_vs_full_err:.2e}", f"{r.full_vs_fp32_err:.2e}",
                          f"{r.cached_vs_fp32_err:.2e}", f"{r.plain_vs_fp32_err:.2e}",
                          "[green]ok[/]" if r.precision_ok else "[red]FAIL[/]")
    return timing, precision


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `mtbench model info|forward` and `mtbench bench model`."""
    model_app.command("info")(model_info)
    model_app.command("forward")(model_forward)
    app.add_typer(model_app, name="model")
    bench.command("model")(bench_model)
