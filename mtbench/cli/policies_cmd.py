"""`mtbench compare-policies` (policy x capacity sweeps of the two-tier simulator) and `mtbench bench sim`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtbench.cache.policies import POLICY_NAMES
from mtbench.cli.options import ForceOpt, HostKvOpt, KvDtypeOpt, MaxRequestsOpt, ModelOpt, SortOpt
from mtbench.errors import MtbenchError
from mtbench.units import OBJECT_SIZES, format_capacity

DEFAULT_POLICIES = "lru,arc,s3fifo,sieve,gdsf,mtserve,opt"


def compare_policies(
    trace: Path = typer.Argument(..., help="Request trace (parquet)."),
    policies: str = typer.Option(DEFAULT_POLICIES, "--policies", help=f"Comma-separated, from: {', '.join(POLICY_NAMES)}."),
    gpu_cache: str = typer.Option("2GiB,4GiB,8GiB,16GiB", "--gpu-cache", help="GPU tier capacities (bytes; entries with --object-size unit)."),
    host_cache: str = typer.Option("64GiB", "--host-cache", help="Host tier capacity; 0 = single tier."),
    model: ModelOpt = "large",
    dtype: KvDtypeOpt = "bf16",
    kv_dtype: HostKvOpt = "auto",
    page_tokens: int = typer.Option(32, "--page-tokens", help="Tokens per GPU page; entries round up to whole pages."),
    write_back: bool = typer.Option(True, "--write-back/--write-through", help="Copy to host on GPU eviction, or at once."),
    inclusive: bool = typer.Option(True, "--inclusive/--exclusive", help="Keep the host copy of an entry promoted to the GPU."),
    object_size: str = typer.Option("bytes", "--object-size", help=f"{' or '.join(OBJECT_SIZES)}: entries take their bytes, or "
                                                                   "count 1 each (capacities are then entry counts)."),
    lookahead: int = typer.Option(0, "--lookahead", help="Batches planned (pinned, hinted, loading) while the oldest computes; the replay uses 1."),
    batch_size: int = typer.Option(1, "--batch-size", help="Requests per batch (1: per request, as libCacheSim; the replay's batch size to match it)."),
    append: bool = typer.Option(False, "--append", help="Causal (append) variant: prefixes may grow, partial hits."),
    cost_model: Optional[Path] = typer.Option(None, "--cost-model", help="Calibration JSON from `mtbench calibrate`."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (default: every core)."),
    max_requests: MaxRequestsOpt = None,
    sort: SortOpt = False,
    backend: str = typer.Option("local", "--backend", help="local (processes on this machine) or ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster (host:port); default a local ray.init()."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report directory (default: reports/runs/compare-policies-<time>)."),
    force: ForceOpt = False,
) -> None:
    """Simulate every policy at every GPU capacity (two tiers, no tensors) and write a report.

    A policy can only matter between the trace's cold-miss limit (the first
    use of every key misses, whatever the capacity) and the capacity that
    holds its working set (`mtbench trace stats` prints both); capacities
    outside that range give the same row for every policy.

    Examples:

      mtbench compare-policies traces/synth-small.parquet \\
        --policies lru,s3fifo,mtserve,opt --gpu-cache 64MiB,256MiB \\
        --host-cache 1GiB --max-requests 5000 -o runs/policies

      mtbench compare-policies traces/synth-small.parquet \\
        --policies lru,opt --gpu-cache 64MiB,256MiB --host-cache 1GiB \\
        --write-through --max-requests 5000 -o runs/policies-wt

      mtbench compare-policies traces/movielens-small.parquet \\
        --object-size unit --gpu-cache 20,50 --host-cache 0 \\
        --policies lru,arc,opt --max-requests 5000 -o runs/policies-unit
    """
    from mtbench.cache.control import TierSettings
    from mtbench.cache.pool import parse_host_kv
    from mtbench.fleet.backend import check_backend
    from mtbench.report import print_summary, validate_out_dir, write_report
    from mtbench.sim.runner import PolicySweep, prepare_compare_policies, run_compare_policies
    from mtbench.units import parse_size, parse_size_list

    if lookahead < 0:
        raise MtbenchError(f"--lookahead must be >= 0, got {lookahead}")
    if batch_size < 1:
        raise MtbenchError(f"--batch-size must be >= 1, got {batch_size}")
    if max_requests is not None and max_requests < 1:
        raise MtbenchError(f"--max-requests must be >= 1, got {max_requests}")
    check_backend(backend, ray_address)
    parse_host_kv(kv_dtype, dtype)  # before the progress bar draws
    setup = PolicySweep(
        trace=trace, policies=policies, gpu_capacities=tuple(parse_size_list(gpu_cache, "--gpu-cache")),
        host_capacity=parse_size(host_cache, "--host-cache"), model=model, dtype=dtype, kv_dtype=kv_dtype,
        page_tokens=page_tokens,
        settings=TierSettings(write_back=write_back, inclusive=inclusive, lookahead=lookahead, append=append,
                              batch_size=batch_size),
        object_size=object_size, cost_model=cost_model, workers=workers, max_requests=max_requests, sort=sort,
        backend=backend, ray_address=ray_address)
    out = validate_out_dir(out, force, "compare-policies")
    prepared = prepare_compare_policies(setup)
    console = Console()
    with Progress(TextColumn("[bold]compare-policies"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as progress:

        def start(total: int):
            task = progress.add_task("", total=total)
            return lambda row: progress.update(
                task, advance=1, description=f"{row['policy']} @ {format_capacity(row['gpu_capacity'], object_size)}")

        outcome = run_compare_policies(prepared, start)
    target = write_report(out, outcome.summary, outcome.rows, "compare-policies", force)
    print_summary(outcome.summary, console)
    console.print(f"report: {target}")


def bench_sim(
    trace: Optional[Path] = typer.Argument(None, help="Request trace (parquet); keys = (user_id, static_version)."),
    arc: bool = typer.Option(False, "--arc", help="Use the ARC OLTP trace from ../shared/data instead."),
    policies: str = typer.Option("lru,fifo,s3fifo", "--policies", help=f"Policies to time, from: {', '.join(POLICY_NAMES)}."),
    gpu_cache: str = typer.Option("1000,10000", "--gpu-cache", help="Cache sizes in entries (unit size, one tier), comma-separated."),
    max_requests: MaxRequestsOpt = None,
    sort: SortOpt = False,
) -> None:
    """Requests/s of our single-tier unit-size simulator vs libCacheSim's on the same trace.

    Needs the libcachesim Python package (pip install libcachesim); the
    other commands do not.

    Examples:

      mtbench bench sim traces/movielens-small.parquet --policies lru,fifo \\
        --gpu-cache 50,200 --max-requests 20000
    """
    from mtbench.cache.policies import parse_policy_list
    from mtbench.sim.peer import PeerTrace
    from mtbench.sim.simulator import Workload, simulate

    names = parse_policy_list(policies)
    capacities = [int(c) for c in _int_list(gpu_cache, "--gpu-cache")]
    if max_requests is not None and max_requests < 1:
        raise MtbenchError(f"--max-requests must be >= 1, got {max_requests}")
    keys = _bench_keys(trace, arc, sort)
    if max_requests is not None:
        keys = keys[:max_requests]
    workload = Workload.from_keys(keys)
    table = Table(title=f"simulator speed, {workload.n_requests:,} requests, unit size, one tier")
    for column in ("policy", "capacity", "hits (ours)", "hits (libCacheSim)", "ours req/s", "libCacheSim req/s"):
        table.add_column(column, justify="right" if column != "policy" else "left")
    with PeerTrace(workload.key) as peer:
        for name in names:
            for cap in capacities:
                start = time.perf_counter()
                result, _ = simulate(workload, name, cap)
                ours_s = time.perf_counter() - start
                peer_hits, peer_s = peer.run(name, cap)
                table.add_row(name, f"{cap:,}", f"{result.gpu_hits:,}", f"{peer_hits:,}",
                              f"{workload.n_requests / ours_s:,.0f}", f"{workload.n_requests / max(peer_s, 1e-9):,.0f}")
    Console().print(table)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MtbenchError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise MtbenchError(f"{what}: expected positive integers, got {text!r}")
    return values


def _bench_keys(trace: Path | None, arc: bool, sort: bool) -> np.ndarray:
    if arc == (trace is not None):
        raise MtbenchError("bench sim: give a trace file or --arc (exactly one)")
    if arc:
        from mtbench.trace.importers import read_arc

        path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cachetrace-arc-ibm" / "OLTP.lis.zst"
        if not path.is_file():
            raise MtbenchError(f"--arc: {path} is missing")
        return read_arc(path).key
    from mtbench.trace import open_trace

    columns = open_trace(trace, sort=sort).arrays(["user_id", "static_version"])
    return columns["user_id"] * (int(columns["static_version"].max(initial=0)) + 1) + columns["static_version"]


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `compare-policies` and `bench sim`."""
    app.command("compare-policies")(compare_policies)
    bench.command("sim")(bench_sim)
