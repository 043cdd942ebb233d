"""`mtbench capacity`: the highest rate one GPU sustains within a latency SLO, per cache mode
(discrete-event simulation over the cost model; `--measure` checks it with the real open-loop replay),
and the GPUs a target rate needs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtbench.cli.options import ForceOpt
from mtbench.errors import MtbenchError

def capacity(
    trace: Path = typer.Argument(..., help="Trace parquet file (see traces/README.md)."),
    slo_ms: float = typer.Option(50.0, "--slo-ms", help="Latency objective (ms), arrival to scores."),
    percentile: float = typer.Option(99.0, "--percentile", help="Latency percentile that must meet the SLO."),
    cache: str = typer.Option("none,gpu,tiered", "--cache", help="Cache modes to compare: none, gpu, tiered."),
    policy: str = typer.Option("lru", "--policy", help="Replacement policy of both tiers."),
    gpu_cache: str = typer.Option("8GiB", "--gpu-cache", help="GPU tier capacity per GPU."),
    host_cache: str = typer.Option("64GiB", "--host-cache", help="Host tier capacity per GPU."),
    model: str = typer.Option("large", "--model", help="Model preset (entry sizes, default cost model)."),
    dtype: str = typer.Option("bf16", "--dtype", help="KV and compute dtype: bf16, fp16, fp32."),
    page_tokens: int = typer.Option(32, "--page-tokens", help="Tokens per GPU page."),
    cost_model: Optional[Path] = typer.Option(None, "--cost-model", help="Calibration JSON from `mtbench calibrate`."),
    batch_overhead_ms: str = typer.Option("0", "--batch-overhead-ms",
                                          help="Fixed ms per batch on top of the cost model's per-request costs, or "
                                               "auto: measure it per cache mode on --device (replays with every "
                                               "request queued, then open-loop runs at 30, 60 and 90% of the "
                                               "measured throughput; the simulator draws each batch's deviation "
                                               "from how those batches scattered, the median of five runs)."),
    batch_size: int = typer.Option(16, "--batch-size", "--max-batch", help="Most requests per batch."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="A batch closes this long after its first request."),
    max_batch_tokens: Optional[int] = typer.Option(None, "--max-batch-tokens", help="Token budget per batch."),
    arrivals: str = typer.Option("poisson", "--arrivals", help="poisson, or trace (the trace's ts rescaled to each rate)."),
    seed: int = typer.Option(0, "--seed", help="Poisson arrivals seed (and model weights with --measure, and the simulated batches' draws)."),
    target_qps: Optional[float] = typer.Option(None, "--target-qps", help="Also size the fleet for this rate."),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Use only the first N requests."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Requests that fill the cache before the clock starts, left out of the figures (default: a tenth)."),
    measure: bool = typer.Option(False, "--measure", help="Check each mode's answer with the real open-loop replay."),
    measure_rates: Optional[str] = typer.Option(None, "--measure-rates",
                                                help="With --measure: also replay at these rates (r1,r2,...)."),
    measure_fractions: Optional[str] = typer.Option(None, "--measure-fractions",
                                                    help="With --measure: also replay at these fractions of each "
                                                         "mode's simulated saturation (0.2,0.5,...)."),
    measure_steps: Optional[int] = typer.Option(None, "--measure-steps",
                                                help="With --measure: device runs that bisect between the highest "
                                                     "measured rate within the SLO and the lowest above it that "
                                                     "missed, so the measured max QPS is searched (default 3)."),
    measure_repeats: Optional[int] = typer.Option(None, "--measure-repeats",
                                                  help="With --measure: replay each rate N times on the same "
                                                       "arrivals and report the median run and the spread of "
                                                       "its percentile latency (default 1)."),
    device: str = typer.Option("auto", "--device", help="--measure: cpu, cuda, or auto."),
    cpus: Optional[str] = typer.Option(None, "--cpus",
                                       help="Pin this process to these CPUs (0,1 or 0-3) before the replays, "
                                            "as a serving process is pinned: its host work per batch then "
                                            "stays steady from run to run."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report directory (default reports/runs/capacity-<time>)."),
    force: ForceOpt = False,
) -> None:
    """Find the highest rate one GPU sustains within the SLO, per cache mode, and GPUs for a target rate.

    Simulated: the cache simulator decides outcomes, the cost model prices
    batches, a discrete-event simulation serves them at each rate. GPUs for
    --target-qps assume requests split evenly across GPUs by user hash (each
    GPU with the given tier sizes).

    Examples:

      mtbench capacity traces/synth-small.parquet --model mini --dtype fp32 \\
        --gpu-cache 64MiB --host-cache 1GiB --max-requests 2000 \\
        --slo-ms 5 --max-wait-ms 1

      mtbench capacity traces/synth-small.parquet --model mini --dtype fp32 \\
        --cache none,tiered --gpu-cache 64MiB --host-cache 1GiB \\
        --max-requests 2000 --slo-ms 5 --max-wait-ms 1 --percentile 99.9 \\
        --arrivals trace --target-qps 100000
    """
    from mtbench.report import validate_out_dir, write_report
    from mtbench.serve.arrivals import ArrivalSpec
    from mtbench.serve.batcher import BatcherConfig
    from mtbench.serve.capacity import MEASURE_STEPS, CapacityQuestion, ModeCost, load_workload, plan_capacity
    from mtbench.serve.options import ServingOptions
    from mtbench.serve.service import BatchOverhead, CacheSetting
    from mtbench.sim.costmodel import CostModel
    from mtbench.model import get_config
    from mtbench.affinity import pin_cpus
    from mtbench.units import parse_size

    modes = [m.strip() for m in cache.split(",") if m.strip()]
    if not modes or len(set(modes)) != len(modes):
        raise MtbenchError(f"--cache: expected distinct modes from none, gpu, tiered; got {cache!r}")
    settings = [CacheSetting(mode, policy, parse_size(gpu_cache, "--gpu-cache"), parse_size(host_cache, "--host-cache")).check()
                for mode in modes]
    overhead = _overhead(batch_overhead_ms)
    rates = _rates(measure_rates, "--measure-rates") if measure_rates else ()
    fractions = _rates(measure_fractions, "--measure-fractions") if measure_fractions else ()
    if (rates or fractions or measure_steps is not None or measure_repeats is not None) and not measure:
        raise MtbenchError("--measure-rates, --measure-fractions, --measure-steps and --measure-repeats need --measure")
    if measure_repeats is not None and measure_repeats < 1:
        raise MtbenchError(f"--measure-repeats must be >= 1, got {measure_repeats}")
    repeats = 1 if measure_repeats is None else measure_repeats
    if measure_steps is not None and measure_steps < 0:
        raise MtbenchError(f"--measure-steps must be >= 0, got {measure_steps}")
    steps = MEASURE_STEPS if measure_steps is None else measure_steps
    serving = ServingOptions(ArrivalSpec(arrivals, rate=1.0, seed=seed), BatcherConfig(batch_size, max_wait_ms, max_batch_tokens),
                             slo_ms)
    CapacityQuestion(serving, percentile, target_qps).check()
    pinned = pin_cpus(cpus) if cpus is not None else None
    cost = CostModel.load(cost_model) if cost_model is not None else CostModel.default(get_config(model), dtype)
    workload, fingerprint = load_workload(trace, model, dtype, page_tokens, max_requests)
    question = CapacityQuestion(serving, percentile, target_qps,
                                warmup=workload.n_requests // 10 if warmup is None else warmup).check()
    _check_entries(workload, settings)
    if arrivals == "trace":
        from mtbench.serve.arrivals import arrival_times

        arrival_times(workload.ts, question.arrivals_at(1.0))
    if out is not None:
        validate_out_dir(out, force, "capacity")
    console = Console()
    progress = Progress(TextColumn("[bold]capacity"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"), console=Console(stderr=True))
    context = _measure_context(trace, model, dtype, device, settings, question, page_tokens, max_requests, seed,
                               progress, repeats) if measure or overhead is None else None
    with progress:
        if overhead is None:
            costs = {s.mode: ModeCost(cost, context.batch_overhead(s.mode, cost, workload.sizer)) for s in settings}
        else:
            costs = {s.mode: ModeCost(cost, BatchOverhead.constant(overhead)) for s in settings}
        task = progress.add_task("", total=len(settings) * (3 if measure else 2))
        outcome = plan_capacity(workload, settings, costs, question, context if measure else None,
                                rates, fractions, lambda what: progress.update(task, advance=1, description=what), steps)
    summary = {
        "kind": "capacity", "trace": fingerprint, "model": model, "dtype": dtype,
        "config": {"slo_ms": slo_ms, "percentile": percentile, "cache": modes, "policy": policy,
                   "gpu_cache": settings[0].gpu_capacity, "host_cache": settings[0].host_capacity,
                   "page_tokens": page_tokens, "batch_size": batch_size, "max_wait_ms": max_wait_ms,
                   "max_batch_tokens": max_batch_tokens, "arrivals": arrivals, "seed": seed, "target_qps": target_qps,
                   "max_requests": max_requests, "warmup": question.warmup, "measure": measure,
                   "measure_rates": list(rates), "measure_fractions": list(fractions), "measure_steps": steps,
                   "measure_repeats": repeats,
                   "device": device if context is not None else None, "cpus": pinned, "cost_model": cost.to_dict(),
                   "batch_overhead_ms": batch_overhead_ms,
                   "fleet_split": "even by user hash"},
        "result": outcome.result, "rows": outcome.rows,
    }
    tables = {name: table for name, table in (("measured_requests", outcome.measured_requests),
                                              ("calibration_requests", outcome.calibration_requests))
              if table is not None} or None
    report_dir = write_report(out, summary, pd.DataFrame(outcome.points), "capacity", force, tables)
    console.print(capacity_table(outcome.rows, question))
    console.print(curve_table(outcome.points))
    spread = spread_table(outcome.points, percentile)
    if spread is not None:
        console.print(spread)
    console.print(outcome.result)
    console.print(f"report: {report_dir}")


def _rates(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise MtbenchError(f"{option}: expected comma-separated positive numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise MtbenchError(f"{option}: expected positive numbers, got {text!r}")
    return values


def _overhead(text: str) -> float | None:
    """--batch-overhead-ms: milliseconds, or None for auto (measured)."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise MtbenchError(f"--batch-overhead-ms: expected milliseconds or auto, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise MtbenchError(f"--batch-overhead-ms must be a finite number >= 0, got {text}")
    return value


def _check_entries(workload, settings) -> None:
    from mtbench.units import format_bytes

    largest = int(workload.size.max(initial=1))
    for setting in settings:
        tiers = {"none": [], "gpu": ["gpu"], "tiered": ["gpu", "host"]}[setting.mode]
        for tier in tiers:
            capacity = getattr(setting, f"{tier}_capacity")
            if capacity < largest:
                raise MtbenchError(f"--{tier}-cache {format_bytes(capacity)} cannot hold one entry: the trace's largest "
                                   f"entry needs {format_bytes(largest)}")


def _measure_context(trace, model, dtype, device, settings, question, page_tokens, max_requests, seed, progress,
                     repeats):
    from mtbench.cli.options import resolve_device_dtype
    from mtbench.replay.engine import ReplayOptions
    from mtbench.replay.runner import ReplaySetup
    from mtbench.serve.capacity import MeasureContext

    device, dtype = resolve_device_dtype(device, dtype)
    tiered = next((s for s in settings if s.mode == "tiered"), settings[0])
    setup = ReplaySetup(trace=trace, model=model, dtype=dtype, device=device, cache=tiered.mode, policy=tiered.policy,
                        gpu_capacity=tiered.gpu_capacity, host_capacity=tiered.host_capacity,
                        options=ReplayOptions(batch_size=question.serving.batcher.max_batch, max_requests=max_requests,
                                              warmup=question.warmup, page_tokens=page_tokens, seed=seed))

    def make(label: str, total: int):
        task = progress.add_task(f"replay {label}", total=total)
        return lambda n: progress.advance(task, n)

    return MeasureContext(setup, question, make, repeats)


def _ms(value) -> str:
    return "—" if value is None or value != value else f"{value:.1f}"


def capacity_table(rows: list[dict], question) -> Table:
    """Per cache mode: hit ratio, saturation, max rate within the SLO, speedups, GPUs for the target."""
    from mtbench.serve.capacity import format_rate

    percentile = f"p{question.percentile:g}"
    table = Table(title=f"Capacity per GPU within {percentile} <= {question.serving.slo_ms:g} ms", box=box.SIMPLE_HEAD,
                  title_justify="left")
    columns = ["mode", "hit", "sat. QPS", "max QPS", f"{percentile} ms", "cap. x", "thr. x"]
    if question.target_qps is not None:
        columns.append(f"GPUs @{question.target_qps:,.0f}")
    for name in columns:
        table.add_column(name, justify="left" if name == "mode" else "right")
    for row in rows:
        cells = [row["cache_mode"], f"{row['hit_ratio']:.3f}", format_rate(row["saturation_qps"]), format_rate(row["max_qps"]),
                 _ms(row.get("latency_at_percentile_ms")),
                 "—" if row.get("capacity_speedup") is None else f"{row['capacity_speedup']:.2f}",
                 "—" if row.get("throughput_speedup") is None else f"{row['throughput_speedup']:.2f}"]
        if question.target_qps is not None:
            cells.append("—" if row.get("gpus_needed") is None else str(row["gpus_needed"]))
        table.add_row(*cells)
    return table


def curve_table(points: list[dict]) -> Table:
    """Latency vs load, simulated and (where measured) measured side by side."""
    from mtbench.serve.capacity import format_rate

    measured = {(p["cache_mode"], round(p["rate"], 6)): p for p in points if p["source"] == "measured"}
    table = Table(title="Latency vs load (simulated | measured)", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("mode", "QPS", "p50", "p99", "SLO %", "p50 m", "p99 m", "SLO % m"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    modes = list(dict.fromkeys(p["cache_mode"] for p in points))
    simulated = sorted((p for p in points if p["source"] == "simulated"),
                       key=lambda p: (modes.index(p["cache_mode"]), p["rate"]))
    for point in simulated:
        real = measured.get((point["cache_mode"], round(point["rate"], 6)), {})
        table.add_row(point["cache_mode"], format_rate(point["rate"]), _ms(point["p50_ms"]),
                      "overloaded" if point["overloaded"] else _ms(point["p99_ms"]),
                      _percent(point["slo_attainment"]), _ms(real.get("p50_ms")),
                      ("overloaded" if real.get("overloaded") else _ms(real.get("p99_ms"))) if real else "—",
                      _percent(real.get("slo_attainment")))
    return table


def spread_table(points: list[dict], percentile: float) -> Table | None:
    """Per measured rate replayed more than once (`--measure-repeats`): the lowest, median and highest
    latency at the percentile over its runs; None when no rate was repeated."""
    from mtbench.serve.capacity import format_rate

    repeated = [p for p in points if p["source"] == "measured" and (p.get("repeats") or 1) > 1]
    if not repeated:
        return None
    table = Table(title=f"Measured p{percentile:g} over repeated runs (same arrivals), ms", box=box.SIMPLE_HEAD,
                  title_justify="left")
    for name in ("mode", "QPS", "runs", "lowest", "median run", "highest"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for point in repeated:
        median = "overloaded" if point["overloaded"] else _ms(point["latency_at_percentile_ms"])
        highest = point["latency_at_percentile_ms_max"]
        table.add_row(point["cache_mode"], format_rate(point["rate"]), str(point["repeats"]),
                      _ms(point["latency_at_percentile_ms_min"]), median,
                      "overloaded" if highest is None else _ms(highest))
    return table


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `mtbench capacity`."""
    app.command("capacity")(capacity)
