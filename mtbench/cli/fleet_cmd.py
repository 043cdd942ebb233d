"""`mtbench fleet`: a trace routed over 1..N simulated cache replicas, per router and replica count."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mtbench.cli.options import ForceOpt, MaxRequestsOpt
from mtbench.errors import MtbenchError

DEFAULT_ROUTERS = "round-robin,random,user-hash,consistent-hash,residency"


def fleet(
    trace: Path = typer.Argument(..., help="Request trace (parquet)."),
    replicas: str = typer.Option("1,2,4,8,16", "--replicas", help="Comma-separated replica counts (GPUs)."),
    router: str = typer.Option(DEFAULT_ROUTERS, "--router", help="Comma-separated routers: " + DEFAULT_ROUTERS + "."),
    policy: str = typer.Option("lru", "--policy", help="Replacement policy of every replica's tiers."),
    gpu_cache: str = typer.Option("4GiB", "--gpu-cache", help="GPU tier of EACH replica."),
    host_cache: str = typer.Option("64GiB", "--host-cache", help="Host tier of each replica; 0 = single tier."),
    model: str = typer.Option("large", "--model", help="Model preset: sets the bytes per cached token."),
    dtype: str = typer.Option("bf16", "--dtype", help="KV dtype: bf16, fp16, fp32."),
    page_tokens: int = typer.Option(32, "--page-tokens", help="Tokens per GPU page; entries round up to whole pages."),
    write_back: bool = typer.Option(True, "--write-back/--write-through", help="Copy to host on GPU eviction, or at once."),
    inclusive: bool = typer.Option(True, "--inclusive/--exclusive", help="Keep the host copy of a promoted entry."),
    batch_size: int = typer.Option(1, "--batch-size", help="Requests per planned batch on each replica (1: per request; "
                                                          "a replay's --batch-size to match `mtbench replay`)."),
    lookahead: int = typer.Option(0, "--lookahead", help="Batches planned while the oldest computes; the replay uses 1."),
    max_requests: MaxRequestsOpt = None,
    cost_model: Optional[Path] = typer.Option(None, "--cost-model", help="Calibration JSON from `mtbench calibrate`."),
    target_qps: Optional[float] = typer.Option(None, "--target-qps",
                                               help="Rate the fleet must sustain: latency is estimated at it and the "
                                                    "fewest GPUs meeting it are reported (default: the trace's rate)."),
    queue_bound_ms: float = typer.Option(50.0, "--queue-bound-ms",
                                         help="residency router: leave the entry's replica when its queue exceeds this."),
    balance: float = typer.Option(1.25, "--balance", help="consistent-hash: a replica holds at most this x the mean users."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random router and the hash ring."),
    warmup: int = typer.Option(0, "--warmup", help="Simulate the first N requests but leave them out of the figures."),
    backend: str = typer.Option("local", "--backend", help="local (processes on this machine) or ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster (host:port); default a local ray.init()."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes / Ray CPUs (default: every core)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report directory (default: reports/runs/fleet-<time>)."),
    force: ForceOpt = False,
) -> None:
    """Simulate a fleet of cache replicas behind each router: hit ratios, load imbalance, p99, GPUs needed.

    Examples:

      mtbench fleet traces/synth-small.parquet --replicas 1,2,4 \\
        --router user-hash,round-robin --gpu-cache 256MiB --host-cache 4GiB \\
        -o runs/fleet
    """
    from mtbench.cache.policies import policy_class
    from mtbench.fleet.backend import check_backend, make_backend
    from mtbench.fleet.replica import ReplicaSpec
    from mtbench.fleet.routers import parse_router_list
    from mtbench.fleet.simulate import (
        FleetSettings, FleetTrace, gpus_for_target, per_replica_records, plan_tasks, run_task, summary_row,
        trace_rate_qps,
    )
    from mtbench.model import get_config
    from mtbench.model.config import parse_dtype
    from mtbench.report import print_summary, trace_fingerprint, validate_out_dir, write_report
    from mtbench.sim.costmodel import CostModel
    from mtbench.sim.simulator import TierSettings, Workload
    from mtbench.sim.sizes import EntrySizer
    from mtbench.trace import open_trace
    from mtbench.units import parse_size

    started = time.perf_counter()
    counts = parse_replica_counts(replicas)
    routers = parse_router_list(router)
    policy_class(policy)
    if warmup < 0:
        raise MtbenchError(f"--warmup must be >= 0, got {warmup}")
    if batch_size < 1:
        raise MtbenchError(f"--batch-size must be >= 1, got {batch_size}")
    if lookahead < 0:
        raise MtbenchError(f"--lookahead must be >= 0, got {lookahead}")
    if max_requests is not None and max_requests < 1:
        raise MtbenchError(f"--max-requests must be >= 1, got {max_requests}")
    if target_qps is not None and not target_qps > 0:
        raise MtbenchError(f"--target-qps must be > 0, got {target_qps}")
    cfg = get_config(model)
    sizer = EntrySizer(cfg.kv_bytes_per_token(parse_dtype(dtype)), page_tokens)
    cost = CostModel.load(cost_model) if cost_model is not None else CostModel.default(cfg, dtype)
    gpu_capacity, host_capacity = parse_size(gpu_cache, "--gpu-cache"), parse_size(host_cache, "--host-cache")
    tier_settings = TierSettings(write_back=write_back, inclusive=inclusive, lookahead=lookahead, batch_size=batch_size)
    spec = ReplicaSpec(policy, gpu_capacity, host_capacity, tier_settings, cost)
    if "residency" in routers:
        spec.check_stepwise()
    check_backend(backend, ray_address)
    if out is not None:
        validate_out_dir(out, force, "fleet")
    pool = make_backend(backend, workers, ray_address)
    try:
        opened = open_trace(trace, limits=cfg.limits())
        columns = opened.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
        if max_requests is not None:
            columns = {name: values[:max_requests] for name, values in columns.items()}
        workload = Workload.from_columns(columns, sizer)
        workload.check_static_lengths(False)
        largest = int(workload.size.max())
        for option, capacity in (("--gpu-cache", gpu_capacity), ("--host-cache", host_capacity or largest)):
            if capacity < largest:
                raise MtbenchError(f"{option} {capacity} bytes cannot hold one entry: the largest needs {largest} bytes")
        trace_rate = trace_rate_qps(workload.ts)
        offered = target_qps if target_qps is not None else trace_rate
        if offered == float("inf"):
            raise MtbenchError(f"{trace}: every request has the same ts, so the trace has no rate; give --target-qps")
        if warmup >= workload.n_requests:
            raise MtbenchError(f"--warmup {warmup} leaves no request of the {workload.n_requests} in the trace")
        settings = FleetSettings(spec, cost, offered, queue_bound_ms, balance, seed, warmup)
        shared = FleetTrace.prepare(workload, columns["user_id"], settings)
        del columns
        tasks = plan_tasks(routers, counts)
        console = Console()
        with Progress(TextColumn("[bold]fleet"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console) as progress:
            bar = progress.add_task("", total=len(tasks))

            def done(stats: list) -> None:
                progress.update(bar, advance=1, description=f"{stats[0].router} x{stats[0].n_replicas}")

            results = pool.map(run_task, tasks, shared, done)
    finally:
        pool.close()
    by_point: dict[tuple[str, int], list] = {}
    for stats in results:
        for s in stats:
            by_point.setdefault((s.router, s.n_replicas), []).append(s)
    rows = [summary_row(by_point[(r, n)], shared) for r in routers for n in counts]
    records = pd.DataFrame([rec for r in routers for n in counts for rec in per_replica_records(by_point[(r, n)])])
    summary = {
        "kind": "fleet", "trace": trace_fingerprint(trace, opened.num_rows), "model": model, "dtype": dtype,
        "config": {"replicas": counts, "routers": routers, "policy": policy, "gpu_capacity": gpu_capacity,
                   "host_capacity": host_capacity, "page_tokens": page_tokens, "write_back": write_back,
                   "inclusive": inclusive, "batch_size": batch_size,
                   "lookahead": lookahead, "max_requests": max_requests, "target_qps": target_qps, "offered_qps": offered,
                   "trace_rate_qps": trace_rate, "queue_bound_ms": queue_bound_ms, "balance": balance, "seed": seed,
                   "warmup": warmup,
                   "backend": backend, "cost_model": cost.to_dict(),
                   "latency_model": "FIFO per replica, one request at a time (mtbench.fleet.queueing)"},
        "rows": rows,
        "resources": resources_used(started),
    }
    if target_qps is not None:
        summary["gpus_for_target"] = gpus_for_target(rows, target_qps)
    target = write_report(out, summary, records, "fleet", force)
    print_summary(summary, console)
    if target_qps is not None:
        for name, gpus in summary["gpus_for_target"].items():
            text = f"{gpus} GPUs" if gpus is not None else f"more than {max(counts)} GPUs"
            console.print(f"{name}: {text} for {target_qps:g} requests/s")
    console.print(f"report: {target}")


def parse_replica_counts(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; every count a positive integer."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MtbenchError(f"--replicas: expected comma-separated integers, got {text!r}") from None
    if not counts:
        raise MtbenchError("--replicas: no replica count given")
    if min(counts) < 1:
        raise MtbenchError(f"--replicas: every count must be >= 1, got {min(counts)}")
    return sorted(set(counts))


def resources_used(started: float) -> dict:
    """Wall time and peak resident memory of this process and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_s": round(time.perf_counter() - started, 2), "peak_rss_mib": round(own, 1),
            "peak_rss_mib_children": round(children, 1)}


def bench_stream(
    trace: Path = typer.Argument(..., help="Request trace (parquet), of any length."),
    policy: str = typer.Option("lru", "--policy", help="Replacement policy (online: OPT needs the future)."),
    gpu_cache: str = typer.Option("4GiB", "--gpu-cache", help="GPU tier."),
    host_cache: str = typer.Option("64GiB", "--host-cache", help="Host tier; 0 = single tier."),
    model: str = typer.Option("large", "--model", help="Model preset: sets the bytes per cached token."),
    dtype: str = typer.Option("bf16", "--dtype", help="KV dtype: bf16, fp16, fp32."),
    page_tokens: int = typer.Option(32, "--page-tokens", help="Tokens per GPU page."),
    batch_rows: int = typer.Option(1 << 20, "--batch-rows", help="Requests read from the file at a time."),
) -> None:
    """Stream a trace through one simulated replica in bounded memory; print requests/s and peak RSS.

    Examples:

      mtbench bench stream traces/synth-small.parquet --gpu-cache 256MiB \\
        --host-cache 4GiB
    """
    from rich.table import Table

    from mtbench.fleet.replica import ReplicaSpec
    from mtbench.fleet.stream import stream_simulate
    from mtbench.model import get_config
    from mtbench.model.config import parse_dtype
    from mtbench.sim.costmodel import CostModel
    from mtbench.sim.sizes import EntrySizer
    from mtbench.trace import open_trace
    from mtbench.units import parse_size

    if batch_rows < 1:
        raise MtbenchError(f"--batch-rows must be >= 1, got {batch_rows}")
    started = time.perf_counter()
    cfg = get_config(model)
    sizer = EntrySizer(cfg.kv_bytes_per_token(parse_dtype(dtype)), page_tokens)
    spec = ReplicaSpec(policy, parse_size(gpu_cache, "--gpu-cache"), parse_size(host_cache, "--host-cache"),
                       cost=CostModel.default(cfg, dtype))
    spec.check_stepwise()
    opened = open_trace(trace, limits=cfg.limits())
    validated = time.perf_counter()
    console = Console()
    with Progress(TextColumn("[bold]stream"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task("", total=opened.num_rows)
        result = stream_simulate(opened, spec, sizer, batch_rows, lambda n: progress.advance(bar, n))
    simulated = time.perf_counter() - validated
    used = resources_used(started)
    table = Table(title=f"streaming simulation, one replica ({policy}, GPU {gpu_cache}, host {host_cache})",
                  show_header=False, title_justify="left")
    for label, value in (("requests", f"{result.requests:,}"), ("distinct keys", f"{result.keys:,}"),
                         ("hit ratio (GPU + host)", f"{result.hit_ratio:.4f}"),
                         ("GPU / host hits", f"{result.gpu_hits:,} / {result.host_hits:,}"),
                         ("validation s", f"{validated - started:.1f}"), ("simulation s", f"{simulated:.1f}"),
                         ("simulated requests/s", f"{result.requests / max(simulated, 1e-9):,.0f}"),
                         ("wall s", f"{used['wall_s']:.1f}"), ("peak RSS MiB", f"{used['peak_rss_mib']:,.0f}")):
        table.add_row(label, value)
    console.print(table)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `fleet` and `bench stream`."""
    app.command("fleet")(fleet)
    bench.command("stream")(bench_stream)
