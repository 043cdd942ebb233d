"""Per-request outcomes and costs of a trace under one cache mode, for the discrete-event simulator.

Outcomes come from the cache simulator (`mtbench.sim.simulator.simulate`, the same tier decisions as
the real cache), with the replay's hierarchy (inclusive, write-through) and the queued batch as
lookahead; `none` recomputes every prefix. Costs per request come from the cost model: compute time
(R+C tokens, plus the static tokens it recomputes) and, for a host hit, the host->GPU copy of its
entry. `BatchCost` turns them into the service time of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.serve.des import BatchCost
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import GPU_HIT, HOST_HIT, MISS, STALE, TierSettings, Workload, simulate

CACHE_MODES = ("none", "gpu", "tiered")
OUTCOME_NAMES = np.array(["gpu_hit", "host_hit", "miss", "stale"])
assert [GPU_HIT, HOST_HIT, MISS, STALE] == [0, 1, 2, 3]  # OUTCOME_NAMES is indexed by these


@dataclass(frozen=True)
class CacheSetting:
    """One cache configuration to serve with: mode, policy and tier capacities (bytes)."""

    mode: str
    policy: str = "lru"
    gpu_capacity: int = 0
    host_capacity: int = 0

    def check(self) -> "CacheSetting":
        if self.mode not in CACHE_MODES:
            raise MtbenchError(f"--cache: unknown mode {self.mode!r} (choose from {', '.join(CACHE_MODES)})")
        return self


@dataclass(frozen=True)
class ServedRequests:
    """Outcome names and per-request costs of a trace under one cache setting."""

    outcomes: np.ndarray  # names, OUTCOME_NAMES
    compute_ms: np.ndarray
    h2d_ms: np.ndarray

    def batch_cost(self, cost: CostModel, batch_overhead_ms: float = 0.0) -> BatchCost:
        return BatchCost(self.compute_ms, self.h2d_ms, cost, batch_overhead_ms)


def serve_costs(workload: Workload, setting: CacheSetting, cost: CostModel, batch_size: int) -> ServedRequests:
    """Simulate the cache over the workload (trace order) and price every request."""
    setting.check()
    n_new = workload.n_rt + workload.n_cand
    if setting.mode == "none":
        outcomes = np.full(workload.n_requests, MISS, dtype=np.int8)
        recomputed = workload.n_static
    else:
        host = setting.host_capacity if setting.mode == "tiered" else 0
        # the replay's hierarchy and pipeline: its default write-back, batches of `batch_size`, one batch ahead
        settings = TierSettings(lookahead=1, batch_size=batch_size)
        result, recomputed = simulate(workload, setting.policy, setting.gpu_capacity, host, settings, cost=cost,
                                      keep_outcomes=True)
        outcomes = result.outcomes
    h2d = np.where(outcomes == HOST_HIT, cost.h2d_ms(workload.size), 0.0)
    return ServedRequests(OUTCOME_NAMES[outcomes], cost.compute_ms(n_new, recomputed).astype(np.float64), h2d)
