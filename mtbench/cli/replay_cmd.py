"""`mtbench replay` (real cache + model over a trace) and `mtbench calibrate` (cost-model file)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtbench.cache.layouts import LAYOUT_NAMES
from mtbench.cache.manager import CACHE_MODES
from mtbench.cache.policies import POLICY_NAMES
from mtbench.cli.options import DeviceOpt, DtypeOpt, ForceOpt, MaxRequestsOpt, ModelOpt, SortOpt, resolve_device_dtype
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


def _load_budget(text: str) -> str | int:
    if text in ("auto", "all"):
        return text
    return parse_size(text, "--load-budget (auto, all or a size)")


def replay(
    trace: Path = typer.Argument(..., help="Trace parquet file (see traces/README.md)."),
    model: ModelOpt = "large",
    policy: str = typer.Option("lru", "--policy", help=f"Replacement policy of both tiers: {', '.join(POLICY_NAMES)}."),
    layout: str = typer.Option("hybrid", "--layout", help=f"Host layout, or several comma-separated to compare them: "
                                                         f"{', '.join(LAYOUT_NAMES)}."),
    cache: str = typer.Option("tiered", "--cache", help=f"Cache mode: {', '.join(CACHE_MODES)}."),
    gpu_cache: str = typer.Option("64MiB", "--gpu-cache", help="GPU tier capacity (4GiB, 512MB, ...)."),
    host_cache: str = typer.Option("256MiB", "--host-cache", help="Host tier capacity."),
    batch_size: int = typer.Option(16, "--batch-size", help="Most requests per batch."),
    window: Optional[float] = typer.Option(None, "--window", help="Batch only requests arriving within SECONDS."),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    sync: bool = typer.Option(False, "--sync", help="Blocking copies, no lookahead (the synchronous baseline)."),
    baseline: bool = typer.Option(False, "--baseline", help="Also run no-cache, GPU-only and --sync baselines."),
    verify: int = typer.Option(0, "--verify", help="Re-run N sampled requests with the full forward and check."),
    max_requests: MaxRequestsOpt = None,
    warmup: int = typer.Option(0, "--warmup", help="Leave the batches of the first N requests out of the figures."),
    page_tokens: int = typer.Option(32, "--page-tokens", help="Tokens per GPU pool page."),
    seed: int = typer.Option(0, "--seed", help="Model weights and verify sampling seed."),
    load_budget: str = typer.Option("auto", "--load-budget",
                                    help="Host-hit bytes loaded per batch: auto (what PCIe moves while the GPU computes "
                                         "a batch; the rest are recomputed), all, or a size (2GiB)."),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs",
                                     help="Replay the cached forward's layers as CUDA graphs (CUDA only)."),
    sort: SortOpt = False,
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report directory (default reports/runs/replay-<time>)."),
    force: ForceOpt = False,
) -> None:
    """Replay a trace through the real GPU/host KV cache and MTGR, and write a report directory.

    Examples:

      mtbench replay traces/movielens-small.parquet --model mini --device cpu \\
        --gpu-cache 8MiB --host-cache 64MiB --batch-size 8 --max-requests 24 \\
        --warmup 8 -o runs/replay

      mtbench replay traces/synth-small.parquet --model large \\
        --device cuda --layout hybrid,user,zerocopy,paged --baseline \\
        --gpu-cache 1GiB --host-cache 16GiB --batch-size 64 --verify 32 \\
        --max-requests 8000 -o runs/replay-gpu  # needs a CUDA GPU
    """
    from mtbench.report import print_summary, validate_out_dir, write_report
    from mtbench.replay.engine import ReplayOptions
    from mtbench.replay.runner import ReplaySetup, run_replay

    device, dtype = resolve_device_dtype(device, dtype)
    chosen_layouts = tuple(p.strip() for p in layout.split(",") if p.strip())
    if not chosen_layouts:
        raise MtbenchError("--layout: no layout given")
    setup = ReplaySetup(
        trace=trace, model=model, dtype=dtype, device=device, cache=cache, policy=policy, layouts=chosen_layouts,
        gpu_capacity=parse_size(gpu_cache, "--gpu-cache"), host_capacity=parse_size(host_cache, "--host-cache"),
        sync=sync, baseline=baseline, verify=verify, sort=sort,
        options=ReplayOptions(batch_size=batch_size, window=window, max_requests=max_requests, warmup=warmup,
                              page_tokens=page_tokens, seed=seed, cuda_graphs=cuda_graphs,
                              load_budget=_load_budget(load_budget)),
    )
    out = validate_out_dir(out, force, "replay")
    console = Console()
    progress = _progress()
    try:
        outcome = run_replay(setup, _progress_factory(progress))
    finally:
        if progress.live.is_started:
            progress.stop()
    report_dir = write_report(out, outcome.summary, outcome.records, "replay", force)
    print_summary(outcome.summary, console)
    console.print(f"report: {report_dir}")
    if outcome.verify is not None:
        console.print(outcome.verify.message())
        if not outcome.verify.ok:
            Console(stderr=True).print(f"[bold red]error:[/] {outcome.verify.message()}")
            raise typer.Exit(1)


def calibrate(
    model: ModelOpt = "large",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    out: Path = typer.Option(Path("costmodel.json"), "-o", "--out", help="Cost-model JSON to write."),
    compare_trace: Optional[Path] = typer.Option(None, "--compare-trace",
                                                 help="Also replay this trace and compare measured vs simulated speedup."),
    gpu_cache: str = typer.Option("64MiB", "--gpu-cache", help="GPU tier for --compare-trace."),
    host_cache: str = typer.Option("256MiB", "--host-cache", help="Host tier for --compare-trace."),
    policy: str = typer.Option("lru", "--policy", help=f"Policy for --compare-trace: {', '.join(POLICY_NAMES)}."),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch size (calibration and --compare-trace)."),
    max_requests: MaxRequestsOpt = None,
    sort: SortOpt = False,
    report: Optional[Path] = typer.Option(None, "--report", help="Report directory for --compare-trace."),
    force: ForceOpt = False,
) -> None:
    """Measure per-token compute costs and PCIe bandwidth; write the cost model compare-policies reads.

    Run it on the GPU the figures are for; on the CPU it is a smoke test.

    Examples:

      mtbench calibrate --model tiny --device cpu --batch-size 4 \\
        -o costmodel.json

      mtbench calibrate --model large --device cuda \\
        -o costmodel-h200.json  # needs a CUDA GPU
    """
    from mtbench.paths import check_output_file
    from mtbench.replay.calibrate import run_calibrate
    from mtbench.report import validate_out_dir

    device, dtype = resolve_device_dtype(device, dtype)
    check_output_file(out, "--out")
    if report is not None:
        validate_out_dir(report, force)
    if batch_size < 1:
        raise MtbenchError(f"--batch-size must be >= 1, got {batch_size}")
    run_calibrate(model=model, device=device, dtype=dtype, out=out, compare_trace=compare_trace,
                  gpu_capacity=parse_size(gpu_cache, "--gpu-cache"), host_capacity=parse_size(host_cache, "--host-cache"),
                  policy=policy, batch_size=batch_size, max_requests=max_requests, report=report,
                  console=Console(), sort=sort, force=force)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `replay` and `calibrate` to the main app."""
    app.command("replay")(replay)
    app.command("calibrate")(calibrate)
