"""Fleet simulation: a trace routed over N replicas, each with its own simulated GPU + host tiers.

Per (router, replica count) point:
- stateless routers: the assignment of the whole trace is computed at once (`Router.assign`); the
  replicas are then independent, so each replica's sub-trace is simulated alone (`simulate_subtrace`),
  in shards of replicas that run as separate tasks (`Backend.map`: local processes or Ray);
- the residency router: one task steps every replica request by request (`SimReplica`), asking the
  replicas whether they hold the user's entry and how much work they have queued.
Time: a request's service time is the cost model's (`CostModel.total_ms` spread over the replica's
requests in proportion to their compute time, so a replica's busy time is exactly its `total_ms`).
Closed-loop throughput = requests / the busiest replica's busy time (the fleet is as fast as its most
loaded replica). Latency: requests arrive at their trace times scaled to `offered_qps` and queue FIFO
at their replica (`queueing.fifo_latency`); a replica whose busy time exceeds the trace's span at that
rate is overloaded and the point has no p99.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mtbench.cache.control import Outcome
from mtbench.fleet.queueing import FifoClock, fifo_latency
from mtbench.fleet.replica import ReplicaSpec, SimReplica, simulate_subtrace
from mtbench.fleet.routers import make_router, router_class
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import GPU_HIT, HOST_HIT, MISS, STALE, Workload

SHARD_REPLICAS = 16
STEP_CHUNK = 1 << 20


@dataclass(frozen=True)
class FleetSettings:
    replica: ReplicaSpec
    cost: CostModel
    offered_qps: float
    queue_bound_ms: float = 50.0
    balance: float = 1.25
    seed: int = 0
    warmup: int = 0  # requests (trace order) simulated but left out of every count, busy time and latency
    # (per replica in whole batches, as the replay leaves out a GPU's batches that start in the warm-up)


@dataclass
class FleetTrace:
    """The prepared trace every task shares: the simulator's workload, raw user ids, arrivals (ms)."""

    workload: Workload
    user_ids: np.ndarray
    arrival_ms: np.ndarray
    settings: FleetSettings

    @classmethod
    def prepare(cls, workload: Workload, user_ids: np.ndarray, settings: FleetSettings) -> "FleetTrace":
        return cls(workload, np.asarray(user_ids, dtype=np.int64),
                   arrival_times_ms(workload.ts, settings.offered_qps), settings)


def trace_rate_qps(ts: np.ndarray) -> float:
    """Mean request rate of a trace (requests per second over its span; inf when all ts are equal)."""
    span = float(ts[-1] - ts[0]) if len(ts) else 0.0
    return len(ts) / span if span > 0 else math.inf


def arrival_times_ms(ts: np.ndarray, offered_qps: float) -> np.ndarray:
    """Arrivals (ms) keeping the trace's shape (bursts stay bursts) at a mean rate of `offered_qps`;
    a trace whose ts are all equal arrives evenly spaced."""
    n = len(ts)
    span = float(ts[-1] - ts[0]) if n else 0.0
    if span <= 0:
        return np.arange(n, dtype=np.float64) * (1000.0 / offered_qps)
    return (np.asarray(ts, dtype=np.float64) - ts[0]) * (1000.0 * n / (offered_qps * span))


@dataclass(frozen=True)
class ShardTask:
    """Replicas `replicas` of an `n_replicas` fleet behind `router` (all of them for a stateful router)."""

    router: str
    n_replicas: int
    replicas: tuple[int, ...]


@dataclass
class ReplicaStats:
    """What one replica did: outcome counts, tokens, bytes, busy time and its requests' latencies."""

    router: str
    n_replicas: int
    replica: int
    requests: int
    outcome_counts: list[int]
    static_tokens: int
    recomputed_tokens: int
    bytes_h2d: int
    bytes_d2h: int
    busy_ms: float
    latency_ms: np.ndarray = field(repr=False)


def plan_tasks(routers: list[str], replica_counts: list[int], shard: int = SHARD_REPLICAS) -> list[ShardTask]:
    """Every (router, count) point as tasks: stateful routers first (one long task each), then shards."""
    tasks = [ShardTask(r, n, tuple(range(n))) for r in routers if router_class(r).stateful for n in replica_counts]
    for router in routers:
        if router_class(router).stateful:
            continue
        for n in replica_counts:
            tasks += [ShardTask(router, n, tuple(range(start, min(n, start + shard)))) for start in range(0, n, shard)]
    return tasks


def run_task(task: ShardTask, trace: FleetTrace) -> list[ReplicaStats]:
    """Simulate the replicas of one task (a Backend task function)."""
    settings = trace.settings
    router = make_router(task.router, task.n_replicas, settings.seed, settings.queue_bound_ms, settings.balance)
    if router.stateful:
        return _run_stateful(task, trace, router)
    assignment = router.assign(trace.user_ids)
    stats = []
    for replica in task.replicas:
        indices = np.flatnonzero(assignment == replica)
        result, recomputed, _ = simulate_subtrace(trace.workload, indices, settings.replica)
        stats.append(_replica_stats(task, replica, trace, indices, result.outcomes, recomputed, result.bytes_h2d,
                                    result.bytes_d2h))
    return stats


def _replica_stats(task: ShardTask, replica: int, trace: FleetTrace, indices: np.ndarray, outcomes: np.ndarray,
                   recomputed: np.ndarray, bytes_h2d: int, bytes_d2h: int) -> ReplicaStats:
    w, cost, warmup = trace.workload, trace.settings.cost, trace.settings.warmup
    n_new = w.n_rt[indices] + w.n_cand[indices]
    compute = cost.compute_ms(n_new, recomputed)
    busy, _ = cost.total_ms(n_new, recomputed, float(bytes_h2d))
    compute_sum = float(np.sum(compute))
    service = compute * (busy / compute_sum) if compute_sum > 0 else compute
    latency = fifo_latency(trace.arrival_ms[indices], service)  # warm-up requests queue too
    # warm-up as the replay counts it on each GPU: its batches that start before the replica's share of the
    # first `warmup` requests (indices ascend, so that share is the replica's first `before` requests)
    batch = trace.settings.replica.settings.batch_size
    before = int(np.count_nonzero(indices < warmup))
    timed = np.arange(len(indices)) >= -(-before // batch) * batch
    if warmup:
        busy = float(np.sum(service[timed]))
    return ReplicaStats(
        router=task.router, n_replicas=task.n_replicas, replica=replica, requests=int(np.count_nonzero(timed)),
        outcome_counts=[int(c) for c in np.bincount(outcomes[timed], minlength=len(Outcome))],
        static_tokens=int(w.n_static[indices[timed]].sum()), recomputed_tokens=int(np.sum(recomputed[timed])),
        bytes_h2d=int(bytes_h2d), bytes_d2h=int(bytes_d2h), busy_ms=float(busy),
        latency_ms=latency[timed].astype(np.float32),
    )


class _SteppedFleet:
    """Every replica of a fleet, stepped together (the FleetView a stateful router asks)."""

    def __init__(self, n_replicas: int, trace: FleetTrace) -> None:
        w = trace.workload
        self.replicas = [SimReplica(trace.settings.replica, w.key_user, w.key_version, w.sizer) for _ in range(n_replicas)]
        self.clocks = [FifoClock() for _ in range(n_replicas)]
        self.now = 0.0

    def holds(self, replica: int, key: int) -> bool:
        return self.replicas[replica].holds(key)

    def backlog_ms(self, replica: int) -> float:
        return self.clocks[replica].backlog_ms(self.now)

    def backlogs_ms(self) -> list[float]:
        now = self.now
        return [max(0.0, clock.free_at - now) for clock in self.clocks]


def _run_stateful(task: ShardTask, trace: FleetTrace, router) -> list[ReplicaStats]:
    w, cost = trace.workload, trace.settings.cost
    n = w.n_requests
    fleet = _SteppedFleet(task.n_replicas, trace)
    assignment = np.empty(n, dtype=np.int64)
    outcomes = np.empty(n, dtype=np.int8)
    recomputed = np.empty(n, dtype=np.int64)
    static_ms = cost.static_token_ms
    for start in range(0, n, STEP_CHUNK):
        stop = min(n, start + STEP_CHUNK)
        part = slice(start, stop)
        # the router's load signal: compute time, linear in the recomputed tokens (CostModel.compute_ms)
        base_ms = cost.compute_ms(w.n_rt[part] + w.n_cand[part], 0).tolist()
        columns = zip(trace.user_ids[part].tolist(), w.key[part].tolist(), w.user[part].tolist(),
                      w.n_static[part].tolist(), w.size[part].tolist(), w.ts[part].tolist(),
                      trace.arrival_ms[part].tolist(), base_ms)
        for i, (user_id, key, user, n_static, size, t, arrival, base) in enumerate(columns, start):
            fleet.now = arrival
            replica = router.route(user_id, key, fleet)
            outcome, redo = fleet.replicas[replica].serve(key, n_static, t)
            fleet.clocks[replica].serve(arrival, base + static_ms * redo)
            assignment[i], outcomes[i], recomputed[i] = replica, outcome, redo
    stats = []
    for replica, sim in enumerate(fleet.replicas):
        indices = np.flatnonzero(assignment == replica)
        stats.append(_replica_stats(task, replica, trace, indices, outcomes[indices], recomputed[indices],
                                    sim.bytes_h2d, sim.bytes_d2h))
    return stats


def summary_row(stats: list[ReplicaStats], trace: FleetTrace) -> dict:
    """The report row of one (router, replica count) point from all its replicas."""
    stats = sorted(stats, key=lambda s: s.replica)
    w = trace.workload
    n = max(1, sum(s.requests for s in stats))  # timed requests (after the warm-up)
    counts = np.sum([s.outcome_counts for s in stats], axis=0)
    requests = np.array([s.requests for s in stats], dtype=np.float64)
    busy = np.array([s.busy_ms for s in stats])
    span_ms = float(trace.arrival_ms[-1] - trace.arrival_ms[0]) if w.n_requests else 0.0
    throughput = n / (busy.max() / 1000.0) if busy.max() > 0 else math.inf
    overloaded = bool(busy.max() > span_ms) if span_ms > 0 else True
    latency = np.concatenate([s.latency_ms for s in stats]).astype(np.float64)
    static = sum(s.static_tokens for s in stats)
    row = {
        "router": stats[0].router, "replicas": stats[0].n_replicas,
        "hit_ratio": float(counts[GPU_HIT] + counts[HOST_HIT]) / n, "gpu_hit_ratio": float(counts[GPU_HIT]) / n,
        "host_hit_ratio": float(counts[HOST_HIT]) / n, "miss_ratio": float(counts[MISS]) / n,
        "stale_ratio": float(counts[STALE]) / n,
        "token_hit_ratio": 1.0 - sum(s.recomputed_tokens for s in stats) / max(static, 1),
        "imbalance_req": float(requests.max() / requests.mean()),
        "imbalance_busy": float(busy.max() / busy.mean()) if busy.mean() > 0 else 1.0,
        "busy_max_ms": float(busy.max()),
        "throughput_rps": float(throughput),
        "offered_qps": trace.settings.offered_qps,
        "utilization": float(busy.max() / span_ms) if span_ms > 0 else math.inf,
        "overloaded": overloaded,
        "p50_ms": None if overloaded else float(np.percentile(latency, 50)),
        "p99_ms": None if overloaded else float(np.percentile(latency, 99)),
    }
    return row


def per_replica_records(stats: list[ReplicaStats]) -> list[dict]:
    """One record per replica (the report's records.parquet)."""
    return [{"router": s.router, "replicas": s.n_replicas, "replica": s.replica, "requests": s.requests,
             "gpu_hits": s.outcome_counts[GPU_HIT], "host_hits": s.outcome_counts[HOST_HIT],
             "misses": s.outcome_counts[MISS], "stale": s.outcome_counts[STALE], "busy_ms": s.busy_ms,
             "bytes_h2d": s.bytes_h2d, "bytes_d2h": s.bytes_d2h,
             "p99_ms": float(np.percentile(s.latency_ms, 99)) if s.requests else None}
            for s in sorted(stats, key=lambda s: (s.router, s.n_replicas, s.replica))]


def gpus_for_target(rows: list[dict], target_qps: float) -> dict[str, int | None]:
    """Per router, the fewest replicas (among those simulated) whose closed-loop throughput reaches
    `target_qps` without overload at the offered rate; None when no simulated count does."""
    best: dict[str, int | None] = {}
    for row in rows:
        best.setdefault(row["router"], None)
        meets = row["throughput_rps"] >= target_qps and not row["overloaded"]
        if meets and (best[row["router"]] is None or row["replicas"] < best[row["router"]]):
            best[row["router"]] = row["replicas"]
    return best
