"""What the cache is worth under a feature pipeline: hit ratio and estimated speedup against the period
at which static features are rebuilt, for the bidirectional (replace) and causal (append) prefixes.

Each (period, history) point rewrites the trace with `mtbench.trace.reversion.reversion` and runs the
two-tier simulator once (`simulate`, append variant for causal histories). The speedup of a point is
over recomputing every prefix *of that point's trace*: a rarely rebuilt bidirectional prefix is short
(most history moves to the capped real-time part), so its no-cache time is lower too; both times are
reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload, simulate
from mtbench.sim.sizes import EntrySizer
from mtbench.trace.reversion import HISTORIES, reversion


@dataclass(frozen=True)
class RefreshSetup:
    """Everything but the period and the history: one policy, one GPU and one host capacity, sizes, costs."""

    policy: str
    gpu_capacity: int
    host_capacity: int
    sizer: EntrySizer
    cost: CostModel
    max_static: int
    max_rt: int


def refresh_workload(columns: dict[str, np.ndarray], period: float | None, history: str,
                     setup: RefreshSetup) -> Workload:
    return Workload.from_columns(reversion(columns, period, history, setup.max_static, setup.max_rt), setup.sizer)


def refresh_rows(columns: dict[str, np.ndarray], periods: Sequence[tuple[str, float | None]], setup: RefreshSetup,
                 on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """One compare-policies-style row per (period, history), plus `period`, `history`, `keys` and
    `baseline_ms_per_request` (no cache)."""
    rows = []
    for label, period in periods:
        for history in HISTORIES:
            workload = refresh_workload(columns, period, history, setup)
            result, recomputed = simulate(workload, setup.policy, setup.gpu_capacity, setup.host_capacity,
                                          TierSettings(append=history == "causal"), setup.cost,
                                          1.0 / setup.sizer.bytes_per_token)
            row = result.row(setup.cost, workload, recomputed)
            baseline_ms, _ = setup.cost.total_ms(workload.n_rt + workload.n_cand, workload.n_static, 0.0)
            row.update(period=label, history=history, keys=int(workload.key.max(initial=-1)) + 1,
                       baseline_ms_per_request=baseline_ms / max(workload.n_requests, 1))
            rows.append(row)
            if on_done is not None:
                on_done(row)
    return rows
