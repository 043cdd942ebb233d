"""The policy table of reports/POLICIES.md: hit ratio per capacity of each policy on the real traces.

A `TableCase` is one trace seen one way (unit-size single tier, or MTGR entry sizes with a host tier)
at several GPU capacities. `default_cases` builds the cases of the report from the shared data
(ARC OLTP, CloudPhysics and MovieLens, loaded through the importers) and the embedded samples
(traces/); `run_case` simulates every policy at every capacity; `case_markdown` renders the tables
with a last row "mtserve - best classic" (classic = every online policy of the run but mtserve).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload, simulate
from mtbench.sim.sizes import EntrySizer
from mtbench.units import format_bytes

DEFAULT_TABLE_POLICIES = ("lru", "arc", "s3fifo", "sieve", "mtserve", "opt")
TRACE_COLUMNS = ("ts", "user_id", "static_version", "n_static", "n_rt", "n_cand")


@dataclass(frozen=True)
class TableCase:
    """One trace at several GPU capacities (entries when the workload is unit-size), one host capacity."""

    title: str
    workload: Workload
    capacities: tuple[int, ...]
    cost: CostModel
    host_capacity: int = 0

    def capacity_label(self, capacity: int) -> str:
        return f"{capacity:,}" if self.workload.unit else format_bytes(capacity)


def arc_oltp_keys(data_dir: Path, limit: int | None = None) -> np.ndarray:
    """The ARC paper's OLTP block trace (page keys), optionally its first `limit` requests."""
    from mtbench.trace.importers import read_arc

    return read_arc(_existing(data_dir / "cachetrace-arc-ibm" / "OLTP.lis.zst")).key[:limit]


def cloudphysics_keys(data_dir: Path, limit: int | None = None) -> np.ndarray:
    """The CloudPhysics VM block trace (libCacheSim's plain id list)."""
    from mtbench.trace.importers import read_libcachesim_txt

    path = _existing(data_dir / "cachetrace-cloudphysics-libcachesim" / "cloudPhysicsIO.txt")
    return read_libcachesim_txt(path).key[:limit]


def movielens_columns(data_dir: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """MovieLens ml-latest-small ratings through the importer with its default rules (one request per rating)."""
    from mtbench.trace.events import EventRules
    from mtbench.trace.importers import import_events

    columns, _, _ = import_events("movielens", [_existing(data_dir / "movielens-latest-small" / "ratings.csv")],
                               EventRules())
    return {name: columns[name][:limit] for name in TRACE_COLUMNS}


def parquet_columns(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    from mtbench.trace import open_trace

    columns = open_trace(_existing(path)).arrays(list(TRACE_COLUMNS))
    return {name: values[:limit] for name, values in columns.items()}


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise MtbenchError(f"{path}: no such file (the policy table needs ../shared/data and traces/)")
    return path


def model_cost(model: str, dtype: str) -> CostModel:
    from mtbench.model import get_config

    return CostModel.default(get_config(model), dtype)


def request_cases(name: str, columns: dict[str, np.ndarray], model: str, dtype: str, gpu_bytes: Sequence[int],
                  host_bytes: int, unit_entries: Sequence[int]) -> list[TableCase]:
    """A request trace twice: MTGR entry sizes with a host tier, and the single-tier unit-size view."""
    sized = EntrySizer.for_model(model, dtype)
    unit = EntrySizer.for_model(model, dtype, unit=True)
    cost = model_cost(model, dtype)
    return [
        TableCase(f"{name}, MTGR-{model} {dtype} entries, host tier {format_bytes(host_bytes)}",
                  Workload.from_columns(columns, sized), tuple(gpu_bytes), cost, host_bytes),
        TableCase(f"{name}, unit size, one tier (capacity in entries)", Workload.from_columns(columns, unit),
                  tuple(unit_entries), cost),
    ]


def default_cases(data_dir: Path, traces_dir: Path, model: str = "large", dtype: str = "bf16") -> list[TableCase]:
    """Every trace of the report at the capacities where the policies differ (see reports/POLICIES.md)."""
    mib, gib = 1 << 20, 1 << 30
    cost = model_cost(model, dtype)
    return [
        TableCase("ARC OLTP (914,145 requests), unit size, one tier", Workload.from_keys(arc_oltp_keys(data_dir)),
                  (100, 1000, 5000, 10000, 20000, 50000, 100000), cost),
        TableCase("CloudPhysics (113,872 requests), unit size, one tier",
                  Workload.from_keys(cloudphysics_keys(data_dir)), (100, 1000, 3000, 5000, 10000, 20000), cost),
        *request_cases("MovieLens ml-latest-small (shared, imported)", movielens_columns(data_dir), model, dtype,
                       (48 * mib, 64 * mib, 96 * mib, 256 * mib, gib), 64 * gib, (1, 2, 4, 8, 32)),
        *request_cases("synth-small (traces/)", parquet_columns(traces_dir / "synth-small.parquet"), model, dtype,
                       (256 * mib, gib, 1536 * mib, 4 * gib, 8 * gib), 64 * gib, (5, 20, 50, 100, 200)),
    ]


def run_case(case: TableCase, policies: Sequence[str], on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """One summary row (compare-policies fields) per (policy, capacity), policies outermost."""
    rows = []
    for policy in policies:
        for capacity in case.capacities:
            result, recomputed = simulate(case.workload, policy, capacity, case.host_capacity, TierSettings(),
                                          case.cost)
            rows.append(result.row(case.cost, case.workload, recomputed))
            if on_done is not None:
                on_done(rows[-1])
    return rows


def best_classic_gap(rows: list[dict], field: str, capacities: Sequence[int]) -> list[float] | None:
    """mtserve's `field` minus the best classic policy's, per capacity (None without mtserve or classics)."""
    by_point = {(row["policy"], row["gpu_capacity"]): row[field] for row in rows}
    classics = sorted({row["policy"] for row in rows} - {"mtserve", "opt"})
    if not classics or ("mtserve", capacities[0]) not in by_point:
        return None
    return [by_point["mtserve", c] - max(by_point[p, c] for p in classics) for c in capacities]


def case_markdown(case: TableCase, rows: list[dict]) -> str:
    """The case's tables (GPU hit ratio, and the two-tier hit ratio when there is a host tier) in markdown."""
    fields = [("gpu_hit_ratio", "GPU hit ratio"), ("hit_ratio", "hit ratio (both tiers)")] if case.host_capacity \
        else [("hit_ratio", "hit ratio")]
    policies = list(dict.fromkeys(row["policy"] for row in rows))
    by_point = {(row["policy"], row["gpu_capacity"]): row for row in rows}
    lines = [f"#### {case.title}", ""]
    for field, label in fields:
        lines += [f"{label}:", "", "| policy | " + " | ".join(case.capacity_label(c) for c in case.capacities) + " |",
                  "| --- |" + " ---: |" * len(case.capacities)]
        for policy in policies:
            cells = [f"{by_point[policy, c][field]:.4f}" for c in case.capacities]
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        gap = best_classic_gap(rows, field, case.capacities)
        if gap is not None:
            lines.append("| mtserve - best classic | " + " | ".join(f"{100 * g:+.3f} pt" for g in gap) + " |")
        lines.append("")
    return "\n".join(lines)
