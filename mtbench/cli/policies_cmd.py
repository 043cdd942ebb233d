"""`mtbench compare-policies` (policy x capacity sweeps of the two-tier simulator) and `mtbench bench sim`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtbench.errors import MtbenchError

DEFAULT_POLICIES = "lru,arc,s3fifo,sieve,gdsf,mtserve,opt"
OBJECT_SIZES = ("bytes", "unit")


def compare_policies(
    trace: Path = typer.Argument(..., help="Request trace (parquet)."),
    policies: str = typer.Option(DEFAULT_POLICIES, "--policies", help="Comma-separated policy names."),
    gpu_cache: str = typer.Option("2GiB,4GiB,8GiB,16GiB", "--gpu-cache", help="GPU tier capacities (bytes; entries with --object-size unit)."),
    host_cache: str = typer.Option("64GiB", "--host-cache", help="Host tier capacity; 0 = single tier."),
    model: str = typer.Option("large", "--model", help="Model preset: sets the bytes per cached token."),
    dtype: str = typer.Option("bf16", "--dtype", help="KV dtype: bf16, fp16, fp32."),
    page_tokens: int = typer.Option(32, "--page-tokens", help="Tokens per GPU page; entries round up to whole pages."),
    write_back: bool = typer.Option(True, "--write-back/--write-through", help="Copy to host on GPU eviction, or at once."),
    inclusive: bool = typer.Option(True, "--inclusive/--exclusive", help="Keep the host copy of an entry promoted to the GPU."),
    object_size: str = typer.Option("bytes", "--object-size", help="bytes, or unit (every entry 1; capacities are entry counts)."),
    lookahead: int = typer.Option(0, "--lookahead", help="Queued requests whose entries are pinned and hinted to the policy."),
    append: bool = typer.Option(False, "--append", help="Causal (append) variant: prefixes may grow, partial hits."),
    cost_model: Optional[Path] = typer.Option(None, "--cost-model", help="Calibration JSON from `mtbench calibrate`."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (default: every core)."),
    backend: str = typer.Option("local", "--backend", help="local (processes on this machine) or ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster (host:port); default a local ray.init()."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report directory (default: reports/runs/compare-policies-<time>)."),
) -> None:
    """Simulate every policy at every GPU capacity (two tiers, no tensors) and write a report."""
    from mtbench.cache.policies import parse_policy_list
    from mtbench.fleet.backend import check_backend, make_backend
    from mtbench.model import get_config
    from mtbench.model.config import parse_dtype
    from mtbench.report import print_summary, trace_fingerprint, validate_out_dir, write_report
    from mtbench.sim.costmodel import CostModel
    from mtbench.sim.simulator import TierSettings, Workload
    from mtbench.sim.sizes import EntrySizer
    from mtbench.sim.sweep import SweepPoint, run_sweep
    from mtbench.trace import open_trace
    from mtbench.units import parse_size, parse_size_list

    names = parse_policy_list(policies)
    if object_size not in OBJECT_SIZES:
        raise MtbenchError(f"--object-size: expected one of {', '.join(OBJECT_SIZES)}, got {object_size!r}")
    unit = object_size == "unit"
    gpu_capacities = parse_size_list(gpu_cache, "--gpu-cache")
    host_capacity = parse_size(host_cache, "--host-cache")
    cfg = get_config(model)
    kv_dtype = parse_dtype(dtype)
    if lookahead < 0:
        raise MtbenchError(f"--lookahead must be >= 0, got {lookahead}")
    if workers is not None and workers < 1:
        raise MtbenchError(f"--workers must be >= 1, got {workers}")
    check_backend(backend, ray_address)
    sizer = EntrySizer(cfg.kv_bytes_per_token(kv_dtype), page_tokens, unit)
    cost = CostModel.load(cost_model) if cost_model is not None else CostModel.default(cfg, dtype)
    if out is not None:
        validate_out_dir(out)
    opened = open_trace(trace, limits=cfg.limits())
    columns = opened.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    workload = Workload.from_columns(columns, sizer)
    settings = TierSettings(write_back=write_back, inclusive=inclusive, lookahead=lookahead, append=append)
    workload.check_static_lengths(append)
    _check_capacities(workload, gpu_capacities, host_capacity, unit)

    points = [SweepPoint(name, cap, host_capacity) for name in names for cap in gpu_capacities]
    console = Console()
    pool = make_backend(backend, workers, ray_address) if backend != "local" else None  # local: run_sweep's pool
    with pool_closed(pool), Progress(TextColumn("[bold]compare-policies"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                                     transient=False) as progress:
        task = progress.add_task("", total=len(points))

        def done(row: dict) -> None:
            progress.update(task, advance=1, description=f"{row['policy']} @ {row['gpu_capacity']}")

        rows = run_sweep(workload, points, settings, cost, 1.0 / sizer.bytes_per_token if not unit else 1.0,
                         workers, done, pool)
    summary = {
        "kind": "compare-policies",
        "trace": trace_fingerprint(trace, opened.num_rows),
        "model": model, "dtype": dtype,
        "config": {"policies": names, "gpu_cache": gpu_capacities, "host_cache": host_capacity,
                   "page_tokens": page_tokens, "write_back": write_back, "inclusive": inclusive,
                   "object_size": object_size, "lookahead": lookahead, "append": append,
                   "cost_model": cost.to_dict(), "workers": workers, "backend": backend,
                   "entry_bytes_mean": float(workload.size.mean()) if workload.n_requests else 0.0},
        "rows": rows,
    }
    target = write_report(out, summary, pd.DataFrame(rows), "compare-policies")
    print_summary(summary, console)
    console.print(f"report: {target}")


@contextmanager
def pool_closed(pool) -> Iterator[None]:
    """Close a backend (e.g. shut down the Ray instance it started) when the sweep ends."""
    try:
        yield
    finally:
        if pool is not None:
            pool.close()


def _check_capacities(workload, gpu_capacities: list[int], host_capacity: int, unit: bool) -> None:
    """Every GPU capacity (and a non-zero host capacity) must hold the largest entry of the trace."""
    from mtbench.units import format_bytes

    largest = int(workload.size.max(initial=1))
    what = (lambda n: f"{n} entries") if unit else (lambda n: f"{format_bytes(n)} ({n} bytes)")
    for capacity in gpu_capacities:
        if capacity < largest:
            raise MtbenchError(f"--gpu-cache {what(capacity)} cannot hold one entry: the largest entry of the trace "
                               f"needs {what(largest)}")
    if host_capacity and host_capacity < largest:
        raise MtbenchError(f"--host-cache {what(host_capacity)} cannot hold one entry: the largest entry needs "
                           f"{what(largest)} (use 0 for a single tier)")


def bench_sim(
    trace: Optional[Path] = typer.Argument(None, help="Request trace (parquet); keys = (user_id, static_version)."),
    arc: bool = typer.Option(False, "--arc", help="Use the ARC OLTP trace from ../shared/data instead."),
    policies: str = typer.Option("lru,fifo,s3fifo", "--policies", help="Policies to time."),
    capacity: str = typer.Option("1000,10000", "--capacity", help="Cache sizes in entries (unit size, one tier)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N requests."),
) -> None:
    """Requests/s of our single-tier unit-size simulator vs libCacheSim's on the same trace."""
    from mtbench.cache.policies import parse_policy_list
    from mtbench.sim.peer import PeerTrace
    from mtbench.sim.simulator import Workload, simulate

    names = parse_policy_list(policies)
    capacities = [int(c) for c in _int_list(capacity, "--capacity")]
    keys = _bench_keys(trace, arc)
    if limit is not None:
        keys = keys[:limit]
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


def _bench_keys(trace: Path | None, arc: bool) -> np.ndarray:
    if arc == (trace is not None):
        raise MtbenchError("bench sim: give a trace file or --arc (exactly one)")
    if arc:
        from mtbench.trace.importers import read_arc

        path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cachetrace-arc-ibm" / "OLTP.lis.zst"
        if not path.is_file():
            raise MtbenchError(f"--arc: {path} is missing")
        return read_arc(path).key
    from mtbench.trace import open_trace

    columns = open_trace(trace).arrays(["user_id", "static_version"])
    return columns["user_id"] * (int(columns["static_version"].max(initial=0)) + 1) + columns["static_version"]


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `compare-policies` and `bench sim`."""
    app.command("compare-policies")(compare_policies)
    bench.command("sim")(bench_sim)
