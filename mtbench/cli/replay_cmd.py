"""`mtbench replay` (real cache + model over a trace) and `mtbench calibrate` (cost-model file)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtbench.device import resolve_device
from mtbench.errors import MtbenchError
from mtbench.units import parse_size


def _progress_factory(progress: Progress):
    """Tasks for `progress`, which starts with the first one: nothing is drawn while the setup is
    validated, so a bad option ends with the error line alone."""
    def make(label: str, total: int):
        if not progress.live.is_started:
            progress.start()
        task = progress.add_task(f"replay {label}", total=total)
        return lambda n: progress.advance(task, n)
    return make


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True))


def _resolve_auto(device: str, dtype: str) -> tuple[str, str]:
    """Device and dtype names with "auto" resolved: the device by `resolve_device`, the dtype to bf16
    on CUDA and fp32 on the CPU."""
    torch_device = resolve_device(device)
    if dtype == "auto":
        dtype = "bf16" if torch_device.type == "cuda" else "fp32"
    return str(torch_device), dtype


def _load_budget(text: str) -> str | int:
    if text in ("auto", "all"):
        return text
    return parse_size(text, "--load-budget (auto, all or a size)")


def replay(
    trace: Path = typer.Argument(..., help="Trace parquet file (see traces/README.md)."),
    model: str = typer.Option("large", "--model", help="Model preset: tiny, mini, small, medium, large."),
    policy: str = typer.Option("lru", "--policy", help="Replacement policy of both tiers (as compare-policies)."),
    layout: str = typer.Option("hybrid", "--layout", help="Host layout: paged, user, hybrid or zerocopy."),
    layouts: Optional[str] = typer.Option(None, "--layouts", help="Compare several layouts: paged,user,hybrid,zerocopy."),
    cache: str = typer.Option("tiered", "--cache", help="none | gpu | tiered."),
    gpu_cache: str = typer.Option("64MiB", "--gpu-cache", help="GPU tier capacity (4GiB, 512MB, ...)."),
    host_cache: str = typer.Option("256MiB", "--host-cache", help="Host tier capacity."),
    batch_size: int = typer.Option(16, "--batch-size", "--max-batch", help="Most requests per batch."),
    window: Optional[float] = typer.Option(None, "--window", help="Batch only requests arriving within SECONDS."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, or auto (cuda when a GPU is present)."),
    dtype: str = typer.Option("auto", "--dtype", help="bf16, fp32, or auto (bf16 on cuda, fp32 on cpu)."),
    sync: bool = typer.Option(False, "--sync", help="Blocking copies, no lookahead (the synchronous baseline)."),
    baseline: bool = typer.Option(False, "--baseline", help="Also run no-cache, GPU-only and --sync baselines."),
    verify: int = typer.Option(0, "--verify", help="Re-run N sampled requests with the full forward and check."),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Replay only the first N requests."),
    warmup: int = typer.Option(0, "--warmup", help="Leave the batches of the first N requests out of the figures."),
    page_tokens: int = typer.Option(32, "--page-tokens", help="Tokens per GPU pool page."),
    seed: int = typer.Option(0, "--seed", help="Model weights and verify sampling seed."),
    load_budget: str = typer.Option("auto", "--load-budget",
                                    help="Host-hit bytes loaded per batch: auto (what PCIe moves while the GPU computes "
                                         "a batch; the rest are recomputed), all, or a size (2GiB)."),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs",
                                     help="Replay the cached forward's layers as CUDA graphs (CUDA only)."),
    arrivals: str = typer.Option("closed", "--arrivals",
                                 help="closed (next batch when the last is done: throughput), or open loop: trace "
                                      "(the trace's ts, scaled by --speed or to --rate) or poisson (--rate)."),
    speed: Optional[float] = typer.Option(None, "--speed", help="--arrivals trace: play the trace X times faster."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Open loop: mean arrival rate in requests/s."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms",
                                      help="Open loop: a batch closes this long after its first request at the latest."),
    max_batch_tokens: Optional[int] = typer.Option(None, "--max-batch-tokens",
                                                   help="Open loop: token budget per batch (U+S+R+C tokens)."),
    slo_ms: float = typer.Option(50.0, "--slo-ms", help="Open loop: latency objective for SLO attainment and goodput."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report directory (default reports/runs/replay-<time>)."),
) -> None:
    """Replay a trace through the real GPU/host KV cache and MTGR, and write a report directory.

    With --arrivals trace|poisson requests arrive in real time (open loop) and a dynamic batcher
    forms batches; latency then runs from a request's arrival to its scores (queueing included)."""
    from mtbench.report import print_summary, validate_out_dir, write_report
    from mtbench.replay.engine import ReplayOptions
    from mtbench.replay.runner import ReplaySetup, run_replay
    from mtbench.serve.arrivals import ArrivalSpec
    from mtbench.serve.batcher import BatcherConfig
    from mtbench.serve.openloop import check_open_loop, open_loop_feeds
    from mtbench.serve.options import ServingOptions

    serving = ServingOptions(ArrivalSpec(arrivals, speed, rate, seed), BatcherConfig(batch_size, max_wait_ms, max_batch_tokens),
                             slo_ms).check()
    device, dtype = _resolve_auto(device, dtype)
    chosen_layouts = tuple(p.strip() for p in (layouts or layout).split(",") if p.strip())
    if not chosen_layouts:
        raise MtbenchError("--layouts: no layout given")
    setup = ReplaySetup(
        trace=trace, model=model, dtype=dtype, device=device, cache=cache, policy=policy, layouts=chosen_layouts,
        gpu_capacity=parse_size(gpu_cache, "--gpu-cache"), host_capacity=parse_size(host_cache, "--host-cache"),
        sync=sync, baseline=baseline, verify=verify,
        options=ReplayOptions(batch_size=batch_size, window=window, max_requests=max_requests, warmup=warmup,
                              page_tokens=page_tokens, seed=seed, cuda_graphs=cuda_graphs,
                              load_budget=_load_budget(load_budget)),
    )
    feeds = open_loop_feeds(serving, setup.options) if serving.arrivals.open_loop else None
    if feeds is not None:
        check_open_loop(trace, serving, setup.options.max_requests)
    if out is not None:
        validate_out_dir(out)
    console = Console()
    progress = _progress()
    try:
        outcome = run_replay(setup, _progress_factory(progress), feeds)
        if feeds is not None:
            outcome.summary["config"].update(serving.config_dict())
    finally:
        if progress.live.is_started:
            progress.stop()
    report_dir = write_report(out, outcome.summary, outcome.records, "replay")
    print_summary(outcome.summary, console)
    console.print(f"report: {report_dir}")
    if outcome.verify is not None:
        console.print(outcome.verify.message())
        if not outcome.verify.ok:
            Console(stderr=True).print(f"[bold red]error:[/] {outcome.verify.message()}")
            raise typer.Exit(1)


def calibrate(
    model: str = typer.Option("large", "--model", help="Model preset."),
    device: str = typer.Option("cuda", "--device", help="cuda (or cpu, for a smoke test)."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 or fp32."),
    out: Path = typer.Option(Path("costmodel.json"), "-o", "--out", help="Cost-model JSON to write."),
    compare_trace: Optional[Path] = typer.Option(None, "--compare-trace",
                                                 help="Also replay this trace and compare measured vs simulated speedup."),
    gpu_cache: str = typer.Option("64MiB", "--gpu-cache", help="GPU tier for --compare-trace."),
    host_cache: str = typer.Option("256MiB", "--host-cache", help="Host tier for --compare-trace."),
    policy: str = typer.Option("lru", "--policy", help="Policy for --compare-trace."),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch size (calibration and --compare-trace)."),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="--compare-trace: first N requests."),
    report: Optional[Path] = typer.Option(None, "--report", help="Report directory for --compare-trace."),
) -> None:
    """Measure per-token compute costs and PCIe bandwidth; write the cost model compare-policies reads."""
    from mtbench.replay.calibrate import run_calibrate

    run_calibrate(model=model, device=device, dtype=dtype, out=out, compare_trace=compare_trace,
                  gpu_capacity=parse_size(gpu_cache, "--gpu-cache"), host_capacity=parse_size(host_cache, "--host-cache"),
                  policy=policy, batch_size=batch_size, max_requests=max_requests, report=report,
                  console=Console())


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `replay` and `calibrate` to the main app."""
    app.command("replay")(replay)
    app.command("calibrate")(calibrate)
