"""`mtbench replay` (real cache + model over a trace) and `mtbench calibrate` (cost-model file)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtbench.cache.layouts import LAYOUT_NAMES
from mtbench.cache.manager import CACHE_MODES
from mtbench.cache.policies import POLICY_NAMES
from mtbench.cli.options import (
    DeviceOpt, DtypeOpt, ForceOpt, HostKvOpt, MaxRequestsOpt, ModelOpt, SortOpt, resolve_device_dtype,
)
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
    batch_size: int = typer.Option(16, "--batch-size", "--max-batch", help="Most requests per batch."),
    window: Optional[float] = typer.Option(None, "--window", help="Batch only requests arriving within SECONDS."),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    kv_dtype: HostKvOpt = "auto",
    sync: bool = typer.Option(False, "--sync", help="Blocking copies, no lookahead (the synchronous baseline)."),
    write_back: bool = typer.Option(True, "--write-back/--write-through",
                                    help="Copy an entry to the host when the GPU evicts it, or as soon as it is computed."),
    inclusive: bool = typer.Option(True, "--inclusive/--exclusive", help="Keep the host copy of an entry promoted to the GPU."),
    history: str = typer.Option("bidirectional", "--history",
                                help="bidirectional (MTGR's U+S prefix, fixed per static version) or causal (HSTU-style "
                                     "history: a cached prefix is extended in place, partial hits; `mtbench trace "
                                     "reversion --history causal` makes such traces)."),
    baseline: bool = typer.Option(False, "--baseline", help="Also run no-cache, GPU-only and --sync baselines."),
    verify: int = typer.Option(0, "--verify", help="Re-run N sampled requests with the full forward and check."),
    max_requests: MaxRequestsOpt = None,
    warmup: int = typer.Option(0, "--warmup", help="Leave the batches of the first N requests out of the figures (open loop: served before the clock starts)."),
    page_tokens: int = typer.Option(32, "--page-tokens", help="Tokens per GPU pool page."),
    seed: int = typer.Option(0, "--seed", help="Model weights and verify sampling seed."),
    load_budget: str = typer.Option("auto", "--load-budget",
                                    help="Host-hit bytes loaded per batch: auto (what PCIe moves while the GPU computes "
                                         "a batch; the rest are recomputed), all, or a size (2GiB)."),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs",
                                     help="Replay the cached forward's layers as CUDA graphs (CUDA only)."),
    sort: SortOpt = False,
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
    router: Optional[str] = typer.Option(None, "--router",
                                         help="Under torchrun / with --gpus: route requests over the GPUs "
                                              "(user-hash, round-robin, random, consistent-hash; default user-hash)."),
    gpus: int = typer.Option(1, "--gpus", help="Launch N processes, one per GPU, through torch.distributed.run."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report directory (default reports/runs/replay-<time>)."),
    force: ForceOpt = False,
) -> None:
    """Replay a trace through the real GPU/host KV cache and MTGR, and write a report directory.

    With --arrivals trace|poisson requests arrive in real time (open loop) and a
    dynamic batcher forms batches; latency then runs from a request's arrival to
    its scores (queueing included).

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
    from mtbench.serve.arrivals import ArrivalSpec
    from mtbench.serve.batcher import BatcherConfig
    from mtbench.serve.openloop import check_open_loop, open_loop_feeds
    from mtbench.serve.options import ServingOptions

    serving = ServingOptions(ArrivalSpec(arrivals, speed, rate, seed), BatcherConfig(batch_size, max_wait_ms, max_batch_tokens),
                             slo_ms).check()
    device, dtype = resolve_device_dtype(device, dtype)
    chosen_layouts = tuple(p.strip() for p in layout.split(",") if p.strip())
    if not chosen_layouts:
        raise MtbenchError("--layout: no layout given")
    setup = ReplaySetup(
        trace=trace, model=model, dtype=dtype, device=device, cache=cache, policy=policy, layouts=chosen_layouts,
        gpu_capacity=parse_size(gpu_cache, "--gpu-cache"), host_capacity=parse_size(host_cache, "--host-cache"),
        sync=sync, write_back=write_back, inclusive=inclusive, history=history, baseline=baseline, verify=verify,
        sort=sort, kv_dtype=kv_dtype,
        options=ReplayOptions(batch_size=batch_size, window=window, max_requests=max_requests, warmup=warmup,
                              page_tokens=page_tokens, seed=seed, cuda_graphs=cuda_graphs,
                              load_budget=_load_budget(load_budget)),
    )
    feeds = open_loop_feeds(serving, setup.options) if serving.arrivals.open_loop else None
    if feeds is not None:
        check_open_loop(trace, serving, setup.options.max_requests)
    out = validate_out_dir(out, force, "replay")
    # ---- multi-GPU hook (mtbench.fleet.distributed): launch, or run this rank's share and merge on rank 0
    from mtbench.fleet.distributed import RankInfo, check_router, launch, run_distributed_replay

    if gpus < 1:
        raise MtbenchError(f"--gpus must be >= 1, got {gpus}")
    check_router(router or "user-hash")
    if gpus > 1 and RankInfo.from_env() is None:
        from mtbench.replay.runner import validate_setup

        validate_setup(setup)  # bad input is one line here, not one per launched rank
        launch(gpus, _without_gpus_option(sys.argv[1:]))
        return
    if RankInfo.from_env() is not None:
        progress = _progress()
        try:
            merged = run_distributed_replay(setup, router or "user-hash", _progress_factory(progress))
        finally:
            if progress.live.is_started:
                progress.stop()
        if merged is None:
            return
        report_dir = write_report(out, merged[0], merged[1], "replay", force)
        print_summary(merged[0], Console())
        Console().print(f"report: {report_dir}")
        return
    # ---- single GPU
    console = Console()
    progress = _progress()
    try:
        outcome = run_replay(setup, _progress_factory(progress), feeds)
        if feeds is not None:
            outcome.summary["config"].update(serving.config_dict())
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


def _without_gpus_option(argv: list[str]) -> list[str]:
    """The command line with `--gpus N` / `--gpus=N` taken out (what each launched process runs)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            kept.append(arg)
    return kept


def calibrate(
    model: ModelOpt = "large",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    kv_dtype: HostKvOpt = "auto",
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
                  console=Console(), sort=sort, force=force, kv_dtype=kv_dtype)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `replay` and `calibrate` to the main app."""
    app.command("replay")(replay)
    app.command("calibrate")(calibrate)
