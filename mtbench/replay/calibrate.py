"""`mtbench calibrate`: measure the cost model's fields on this device and save them.

Measured in steady state (warm-up calls first, then back-to-back calls between two CUDA events, or
the wall clock on the CPU), at the replay's batch size:
- `new_token_ms`, `request_overhead_ms`: cached forwards (prefix from the pool, through the replay's
  pooled forward and its CUDA graphs) of a batch with two different R+C lengths; the per-request
  time is linear in R+C tokens: slope and intercept.
- `static_token_ms`: (full forward - cached forward) per request / static tokens.
- `h2d_GBps`: host-tier loads through the hybrid layout (pinned extents -> staging rows -> pages);
  `d2h_GBps`: write-backs the other way.
`--compare-trace T` then replays T (tiered/hybrid and the baselines; the first quarter of the
requests is warm-up), runs the same requests through the same control plane in the same batches
(`simulate_replay`: every decision equal to the replay's) with the measured cost model, and prints
measured vs estimated speedup (the gap should be within 15%).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from mtbench.cache.control import READS_CACHE
from mtbench.cache.host import Fp8RowArena, HostArena
from mtbench.cache.layouts import HostPlacement, TransferJob, make_layout
from mtbench.cache.pool import KVShape, PagedKVPool, parse_host_kv
from mtbench.cache.transfer import TransferEngine
from mtbench.paths import check_output_file
from mtbench.model import MTGR, RequestSpec, build_batch
from mtbench.model.config import get_config
from mtbench.model.pooled import DeviceArange, ForwardGraphs, PooledInputs, graphs_supported, pooled_forward
from mtbench.model.device_batch import batch_to_device
from mtbench.device import resolve_device
from mtbench.model.config import parse_dtype
from mtbench.replay.runner import build_model
from mtbench.sim.costmodel import CostModel

GAP_LIMIT = 0.10  # issue 12: the simulator predicts the replay's speedup within 10%


def _time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmups: int = 2) -> float:
    """Milliseconds per fn() in steady state: `warmups` untimed calls (compilation, allocator growth),
    then `repeats` calls issued back to back between two CUDA events (wall clock on the CPU).

    Back-to-back calls measure what the replay sees: its batches are issued one after another, so
    the host issuing call i+1 overlaps the device running call i, and a launch-bound forward costs
    max(host issue time, device time), not their sum as a single synchronised call would."""
    for _ in range(warmups):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) * 1e3 / repeats


def _paged(model: MTGR, specs: list[RequestSpec], page_tokens: int):
    """Encode the specs' prefixes into a pool; returns (pool, host page table int32 [B, W])."""
    cfg = model.cfg
    shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, model.dtype, page_tokens)
    pages_needed = sum(shape.pages_for(s.n_static) for s in specs)
    pool = PagedKVPool(shape, pages_needed * shape.page_bytes, model.device)
    static_kv = model.encode_prefix(build_batch([replace(s, n_cached=0) for s in specs], cfg, model.device))
    offsets = static_kv.offsets.tolist()
    tables = []
    for b, spec in enumerate(specs):
        pages = pool.allocate(spec.n_static)
        slots = pool.slots(pages, spec.n_static)
        for layer in range(cfg.n_layers):
            src = torch.stack([static_kv.k[layer][offsets[b]:offsets[b + 1]], static_kv.v[layer][offsets[b]:offsets[b + 1]]])
            pool.layer(layer)[slots // page_tokens, :, slots % page_tokens] = src.transpose(0, 1)
        tables.append(pages)
    width = max(len(pages) for pages in tables)
    table = np.zeros((len(specs), width), dtype=np.int32)
    for row, pages in enumerate(tables):
        table[row, : len(pages)] = pages
    return pool, table


def measure_compute(model: MTGR, batch_size: int, n_static: int, new_tokens: tuple[int, int], repeats: int,
                    page_tokens: int = 32) -> dict[str, float]:
    """static_token_ms, new_token_ms and request_overhead_ms of `model` on its device, through the
    replay's own paths: the pooled forward (CUDA graphs where the replay uses them) for hits, the plain
    forward for misses."""
    cfg = model.cfg
    graphs = ForwardGraphs(batch_size) if graphs_supported(model) else None
    arange = DeviceArange()
    per_request = {}
    full_ms = None
    for n_new in new_tokens:
        n_rt = min(cfg.max_rt, n_new // 3)
        n_cand = min(cfg.max_cand, n_new - n_rt)
        specs = [RequestSpec(u, 0, u, n_static, n_rt, n_cand, n_cached=n_static) for u in range(batch_size)]
        pool, table = _paged(model, specs, page_tokens)
        host_batch = build_batch(specs, cfg, "cpu")
        inputs = PooledInputs.from_batch(pool.kv, host_batch, table)
        per_request[n_new] = _time_ms(lambda: pooled_forward(model, host_batch, inputs, arange, None, graphs),
                                      model.device, repeats) / batch_size
        if n_new == new_tokens[-1]:
            full = batch_to_device(build_batch([replace(s, n_cached=0) for s in specs], cfg, "cpu"), model.device)
            full_ms = _time_ms(lambda: model(full), model.device, repeats) / batch_size
        del pool
    (n1, n2) = new_tokens
    slope = max((per_request[n2] - per_request[n1]) / (n2 - n1), 0.0)
    overhead = max(per_request[n1] - slope * n1, 0.0)
    static = max((full_ms - per_request[n2]) / n_static, 0.0)
    return {"static_token_ms": static, "new_token_ms": slope, "request_overhead_ms": overhead}


def measure_bandwidth(cfg, dtype: torch.dtype, device: torch.device, entries: int, n_static: int,
                      repeats: int, page_tokens: int = 32, host_kv: str | None = None) -> dict[str, float]:
    """h2d_GBps / d2h_GBps through the hybrid layout (the replay's default path; with an fp8 host tier
    its copy-engine fp8 path), in host bytes (what the cost model prices `moved_bytes` with)."""
    shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, dtype, page_tokens)
    sizer = shape.sizer_for(host_kv)
    pool = PagedKVPool(shape, entries * sizer.size_of(n_static), device)
    pin = device.type == "cuda"
    arena = (HostArena(entries * sizer.host_size_of(n_static), dtype, pin) if host_kv is None else
             Fp8RowArena(entries * sizer.host_size_of(n_static), shape.heads, shape.head_dim, pin))
    layout = make_layout("hybrid", shape, host_kv)
    engine = TransferEngine(pool, arena, layout)
    jobs = []
    for user in range(entries):
        pages = pool.allocate(n_static)
        offsets = [arena.allocate(size) for size in layout.extent_elements(n_static)]
        jobs.append(TransferJob((user, 0), HostPlacement(offsets, n_static), pages))
    moved = entries * sizer.moved_bytes(n_static)

    def load() -> None:
        engine.load(jobs).synchronize()

    def store() -> None:
        for job in jobs:
            handle = engine.store(job)
            if handle is not None and handle.event is not None:
                handle.event.synchronize()

    h2d_ms = _time_ms(load, device, repeats)
    d2h_ms = _time_ms(store, device, repeats)
    return {"h2d_GBps": moved / (h2d_ms * 1e6), "d2h_GBps": moved / (d2h_ms * 1e6)}


def run_calibrate(model: str, device: str, dtype: str, out: Path, compare_trace: Path | None, gpu_capacity: int,
                  host_capacity: int, policy: str, batch_size: int, max_requests: int | None, report: Path | None,
                  console: Console, sort: bool = False, force: bool = False, kv_dtype: str = "auto") -> CostModel:
    """Measure, save the cost model, and (with compare_trace) compare simulated and measured speedups."""
    torch_device, torch_dtype = resolve_device(device), parse_dtype(dtype)
    host_kv = parse_host_kv(kv_dtype, dtype)
    cfg = get_config(model)
    check_output_file(out, "--out")
    setup = None
    if compare_trace is not None:
        from mtbench.replay.engine import ReplayOptions
        from mtbench.replay.runner import ReplaySetup, validate_setup

        setup = ReplaySetup(trace=compare_trace, model=model, dtype=dtype, device=device, cache="tiered",
                            policy=policy, gpu_capacity=gpu_capacity, host_capacity=host_capacity, baseline=True,
                            sort=sort, kv_dtype=kv_dtype, options=ReplayOptions(batch_size=batch_size, max_requests=max_requests,
                                                             warmup=compare_warmup(compare_trace, max_requests, sort)))
        validate_setup(setup)
    small = torch_device.type == "cpu"
    net = build_model(cfg, torch_device, torch_dtype, seed=0)
    n_static = min(cfg.max_static, 132 if small else cfg.n_user_tokens + min(1000, cfg.max_seq))
    compute = measure_compute(net, batch_size, n_static, (24, 96) if small else (60, 300), repeats=3 if small else 10)
    bandwidth = measure_bandwidth(cfg, torch_dtype, torch_device, entries=4 if small else 16, n_static=n_static,
                                  repeats=3 if small else 5, host_kv=host_kv)
    host = f", host KV {host_kv}" if host_kv is not None else ""
    cost = CostModel(**compute, **bandwidth, source=f"calibrated on {_device_name(torch_device)} "
                     f"({model}, {dtype}{host}, batch {batch_size})")
    cost.save(out)
    table = Table(title=f"cost model ({cost.source})")
    table.add_column("field")
    table.add_column("value", justify="right")
    for name, value in cost.to_dict().items():
        if name != "source":
            table.add_row(name, f"{value:.4g}")
    console.print(table)
    console.print(f"wrote {out}")
    if setup is not None:
        compare_with_simulator(setup, cost, report, console, force)
    return cost


def compare_warmup(trace_path: Path, max_requests: int | None, sort: bool = False) -> int:
    """Warm-up requests of the --compare-trace replay: a quarter of the replayed requests."""
    from mtbench.trace import open_trace

    rows = open_trace(trace_path, sort=sort).num_rows
    return (rows if max_requests is None else min(rows, max_requests)) // 4


def simulate_replay(setup, cost: CostModel, records: pd.DataFrame, label: str) -> dict:
    """The simulator's estimate of exactly what the replay measured.

    The replay's requests go through the same control plane (`cache.control`) in the replay's batches,
    planned one batch ahead (none with --sync), each batch with the load budget the replay planned it
    with (recorded per request), so every decision equals the replay's (`decisions_equal`); the cost
    model then prices the timed batches (warm-up batches excluded).
    """
    from mtbench.cache.control import ControlPlane, Outcome, Request, run_batches
    from mtbench.replay.batching import iter_batches
    from mtbench.replay.runner import planned_runs
    from mtbench.sim.simulator import Workload
    from mtbench.trace import open_trace

    cfg = get_config(setup.model)
    options = setup.options
    trace = open_trace(setup.trace, limits=cfg.limits(), sort=setup.sort)
    columns = trace.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    if options.max_requests is not None:
        columns = {k: v[: options.max_requests] for k, v in columns.items()}
    config = dict(planned_runs(setup))[label]
    shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, parse_dtype(setup.dtype), options.page_tokens)
    control = config.control(shape, cost)
    plane = ControlPlane(replace(control, settings=replace(control.settings, lookahead=0 if config.sync else 1)))
    workload = Workload.from_columns(columns, control.sizer)
    measured = records[records["run"] == label].sort_values("request_index")
    budgets = measured["load_budget"].to_numpy()
    batches, first_timed = [], len(measured)
    for batch in iter_batches(trace, options.batch_size, options.window, options.max_requests):
        if batch.first_index >= options.warmup:
            first_timed = min(first_timed, batch.first_index)
        requests = [Request((int(columns["user_id"][i]), int(columns["static_version"][i])), int(columns["n_static"][i]),
                            float(columns["ts"][i]), int(workload.next_use[i])) for i in batch.request_index]
        budget = int(budgets[batch.first_index])
        batches.append((requests, None if budget < 0 else budget))
    outcomes: list[Outcome] = []
    cached: list[int] = []
    h2d_bytes = [0.0]

    def released(plan) -> None:
        seen: set = set()
        for request, outcome, tokens in zip(plan.requests, plan.outcomes, plan.cached):
            if len(outcomes) >= first_timed and outcome is Outcome.HOST_HIT and request.key not in seen:
                h2d_bytes[0] += control.sizer.moved_bytes(tokens)
            seen.add(request.key)
            outcomes.append(outcome)
            cached.append(tokens)

    run_batches(plane, [requests for requests, _ in batches], released, [budget for _, budget in batches])
    labels = [outcome.label for outcome in outcomes]
    recomputed = workload.n_static - np.asarray(cached, dtype=np.int64)
    timed = slice(first_timed, len(recomputed))
    n_new = (workload.n_rt + workload.n_cand)[timed]
    total_ms, exposed_ms = cost.total_ms(n_new, recomputed[timed], h2d_bytes[0])
    baseline_ms, _ = cost.total_ms(n_new, workload.n_static[timed], 0.0)
    requests = max(len(n_new), 1)
    hits = np.isin(np.asarray(outcomes[timed], dtype=np.int64), [int(o) for o in READS_CACHE])
    return {"requests": len(n_new), "hit_ratio": float(hits.mean()) if len(n_new) else 0.0,
            "decisions_equal": labels == measured["outcome"].tolist(),
            "est_ms_per_request": total_ms / requests, "est_transfer_exposed_ms": exposed_ms / requests,
            "est_speedup": baseline_ms / total_ms if total_ms > 0 else float("nan")}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def compare_with_simulator(setup, cost: CostModel, report: Path | None, console: Console, force: bool = False) -> dict:
    """Replay (tiered + no-cache) and simulate the same trace; print and return the speedup gap."""
    from mtbench.replay.runner import run_replay

    outcome = run_replay(replace(setup, options=replace(setup.options, policy_costs=cost)))
    main = outcome.summary["rows"][0]
    estimate = simulate_replay(setup, cost, outcome.records, main["run"])
    measured = main.get("speedup_vs_none")
    estimated = estimate["est_speedup"]
    gap = abs(estimated - measured) / measured if measured else float("nan")
    host_ms = (main["bookkeeping_ms"] + main["forward_host_ms"]) / max(main["requests"], 1)
    comparison = {"measured_speedup": measured, "estimated_speedup": estimated, "gap": gap,
                  "within_limit": bool(gap <= GAP_LIMIT), "measured_hit_ratio": main["hit_ratio"],
                  "simulated_hit_ratio": estimate["hit_ratio"], "timed_requests": estimate["requests"],
                  "decisions_equal": estimate["decisions_equal"],
                  "warmup": setup.options.warmup, "measured_ms_per_request": main["ms_per_request"],
                  "measured_host_ms_per_request": host_ms,
                  "estimated_ms_per_request": estimate["est_ms_per_request"]}
    sim_row = estimate
    table = Table(title=f"simulator vs measured on {setup.trace.name} ({setup.policy})")
    for column in ("", "hit ratio", "speedup vs no cache"):
        table.add_column(column, justify="right")
    table.add_row("measured (replay)", f"{main['hit_ratio']:.4f}", f"{measured:.3f}x" if measured else "—")
    table.add_row("estimated (simulator)", f"{sim_row['hit_ratio']:.4f}", f"{estimated:.3f}x")
    console.print(table)
    console.print(f"gap {gap:.1%} ({'within' if comparison['within_limit'] else 'OUTSIDE'} the {GAP_LIMIT:.0%} limit); "
                  f"simulated decisions {'equal' if estimate['decisions_equal'] else 'DIFFER from'} the replay's")
    console.print(f"per request: measured {main['ms_per_request']:.4f} ms, of which {host_ms:.4f} ms of host work "
                  f"(cache manager + issuing the forward; on the CPU that includes the compute); the simulator's "
                  f"cost model (device time, no host term) {estimate['est_ms_per_request']:.4f} ms")
    if report is not None:
        from mtbench.report import write_report

        summary = dict(outcome.summary)
        summary["config"] = {**summary["config"], "cost_model": cost.to_dict()}
        summary["calibration"] = {**comparison, "simulated_row": sim_row}
        write_report(report, summary, outcome.records, "replay", force)
        console.print(f"report: {report}")
    return comparison
