"""`mtbench compare-policies` end to end: validate the setup, sweep policy x GPU capacity through the
simulator (the shared control plane, `mtbench.cache.control`), and assemble the report's summary.

The host tier is placed as the replay's default host layout places it (`hybrid` extents in the host
arena, `cache.extents`; with `--kv-dtype fp8` the fp8 row extents of `zerocopy-fp8`, host entries and
PCIe bytes in fp8), so host fragmentation counts here exactly as in `mtbench replay`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from mtbench.cache.control import TierSettings, require_fits
from mtbench.cache.extents import HostGeometry
from mtbench.cache.policies import parse_policy_list
from mtbench.cache.pool import KVShape, parse_host_kv
from mtbench.errors import MtbenchError
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import Workload
from mtbench.sim.sweep import SweepPoint, run_sweep
from mtbench.units import OBJECT_SIZES, format_capacity

HOST_LAYOUT = "hybrid"  # the replay's default host layout


@dataclass(frozen=True)
class PolicySweep:
    """Everything `mtbench compare-policies` was asked to do (also written as the summary's `config`)."""

    trace: Path
    policies: str
    gpu_capacities: tuple[int, ...]
    host_capacity: int
    model: str = "large"
    dtype: str = "bf16"
    kv_dtype: str = "auto"  # the host tier's KV: auto (= dtype) or fp8
    page_tokens: int = 32
    settings: TierSettings = TierSettings()
    object_size: str = "bytes"
    cost_model: Path | None = None
    workers: int | None = None
    max_requests: int | None = None
    sort: bool = False
    backend: str = "local"  # or "ray" (mtbench.fleet.backend)
    ray_address: str | None = None


@dataclass
class SweepOutcome:
    summary: dict
    rows: pd.DataFrame


@dataclass
class PreparedSweep:
    """A validated `PolicySweep`: its workload, points and everything the summary names."""

    setup: PolicySweep
    names: list[str]
    workload: Workload
    points: list[SweepPoint]
    cost: CostModel
    geometry: HostGeometry | None
    host_kv: str | None
    trace_rows: int


def prepare_compare_policies(setup: PolicySweep) -> PreparedSweep:
    """Check every option and read the trace (bad input fails here, before any progress is shown)."""
    from mtbench.model import get_config
    from mtbench.model.config import parse_dtype
    from mtbench.trace import open_trace

    names = parse_policy_list(setup.policies)
    if setup.object_size not in OBJECT_SIZES:
        raise MtbenchError(f"--object-size: expected one of {', '.join(OBJECT_SIZES)}, got {setup.object_size!r}")
    if setup.workers is not None and setup.workers < 1:
        raise MtbenchError(f"--workers must be >= 1, got {setup.workers}")
    unit = setup.object_size == "unit"
    cfg = get_config(setup.model)
    shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, parse_dtype(setup.dtype), setup.page_tokens)
    host_kv = parse_host_kv(setup.kv_dtype, setup.dtype)
    sizer = replace(shape.sizer_for(host_kv), unit=unit)
    cost = CostModel.load(setup.cost_model) if setup.cost_model is not None else CostModel.default(cfg, setup.dtype)
    opened = open_trace(setup.trace, limits=cfg.limits(), sort=setup.sort)
    columns = opened.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    if setup.max_requests is not None:
        columns = {name: values[:setup.max_requests] for name, values in columns.items()}
    workload = Workload.from_columns(columns, sizer)
    workload.check_static_lengths(setup.settings.append)
    check_capacities(workload, setup.gpu_capacities, setup.host_capacity, unit)
    geometry = None if unit or not setup.host_capacity else shape.host_geometry(HOST_LAYOUT, host_kv,
                                                                                 setup.host_capacity)
    points = [SweepPoint(name, cap, setup.host_capacity) for name in names for cap in setup.gpu_capacities]
    return PreparedSweep(setup, names, workload, points, cost, geometry, host_kv, opened.num_rows)


def run_compare_policies(prepared: PreparedSweep, on_start: Callable[[int], Callable[[dict], None]] | None = None
                         ) -> SweepOutcome:
    """Simulate every (policy, GPU capacity) point and return the report's summary and rows.
    `on_start(total)` returns the callback called as each point finishes (progress)."""
    from mtbench.report import trace_fingerprint

    setup, names, workload, points = prepared.setup, prepared.names, prepared.workload, prepared.points
    cost, geometry, host_kv = prepared.cost, prepared.geometry, prepared.host_kv
    done = on_start(len(points)) if on_start is not None else None
    from mtbench.fleet.backend import make_backend  # the fleet's backends run sweep points too

    backend = make_backend(setup.backend, setup.workers, setup.ray_address) if setup.backend != "local" else None
    try:
        rows = run_sweep(workload, points, setup.settings, cost, geometry, setup.workers, done, backend)
    finally:
        if backend is not None:
            backend.close()
    settings = setup.settings
    summary = {
        "kind": "compare-policies",
        "trace": trace_fingerprint(setup.trace, prepared.trace_rows),
        "model": setup.model, "dtype": setup.dtype,
        "config": {"kv_dtype": host_kv or setup.dtype, "lossy": host_kv is not None, "policies": names, "gpu_cache": list(setup.gpu_capacities), "host_cache": setup.host_capacity,
                   "page_tokens": setup.page_tokens, "write_back": settings.write_back,
                   "inclusive": settings.inclusive, "object_size": setup.object_size,
                   "lookahead": settings.lookahead, "batch_size": settings.batch_size, "append": settings.append,
                   "host_layout": geometry.layout if geometry is not None else None,
                   "cost_model": cost.to_dict(), "workers": setup.workers,
                   "max_requests": setup.max_requests, "sort": setup.sort, "backend": setup.backend,
                   "entry_bytes_mean": float(workload.size.mean()) if workload.n_requests else 0.0},
        "rows": rows,
    }
    if host_kv is not None:
        summary["note"] = (f"host tier in {host_kv}: host entries and PCIe bytes sized in {host_kv}, GPU entries in "
                           f"{setup.dtype}; a replay with this host tier is LOSSY (scores differ from recomputation)")
    return SweepOutcome(summary, pd.DataFrame(rows))


def check_capacities(workload: Workload, gpu_capacities: tuple[int, ...], host_capacity: int, unit: bool) -> None:
    """Every GPU capacity (and a non-zero host capacity) must hold the largest entry of the trace."""
    if unit:
        for capacity in gpu_capacities:
            if capacity < 1:
                raise MtbenchError(f"--gpu-cache {format_capacity(capacity, 'unit')} cannot hold one entry")
        return
    largest = int(workload.size.max(initial=1))
    tokens = int(workload.n_static.max(initial=1))
    for capacity in gpu_capacities:
        require_fits("--gpu-cache", capacity, largest, tokens)
    if host_capacity:
        require_fits("--host-cache (use 0 for a single tier)", host_capacity, workload.sizer.host_size_of(tokens),
                     tokens)
