"""Service time of each batch the discrete-event simulator serves, decided batch by batch.

`CacheService` is the DES's service-time function (`mtbench.serve.des.serve_queue`). For each batch
the batcher closes it does what the real open-loop server does, in the same order:
- the cache's decisions come from the one control plane (`mtbench.cache.control`), batch by batch:
  a batch that was full before the previous one started is planned before the previous one is
  released (the server's lookahead), any other after it; each batch gets the "auto" load budget
  (`mtbench.cache.budget`) from the cost model's compute times of the batches before it;
- its price: the batch's fixed cost from a `BatchOverhead` (host work, launches, the end-of-batch
  synchronisation, and per request what the per-token model misses; measured on the device by `capacity
  --measure`), compute (R+C tokens plus the static tokens it recomputes), and the host->GPU copies of
  the entries it loads not hidden under those two (`CostModel.exposed_ms`), as the layer-wise
  pipeline hides them; a serial batch whose copies outlast that work ends the overhead's
  `copy_tail` after its last copy. The load budget observes fixed + compute, as the replay observes
  a batch's device time minus its copy stalls.
A measured overhead also has a `spread`: how the calibration batches' fixed cost scattered around its
plane. Each batch then draws its own deviation from that distribution (mean zero; one seeded stream
per service, stratified), because a queue's waiting grows with the variance of its service times as
well as with their mean: a deterministic price put the H200's p99 at 70% load 5-15% low (BENCHMARKS.md
section 17; `ModeServer` reports the median of several such runs).
Mode `none` recomputes every prefix; `gpu` has no host tier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mtbench.cache.budget import AutoLoadBudget
from mtbench.cache.control import READS_CACHE, BatchDecisions, ControlPlane, Outcome, Request
from mtbench.cache.sizes import EntrySizer
from mtbench.errors import MtbenchError
from mtbench.graphs import GraphLimits
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload, control_config, request_columns

CACHE_MODES = ("none", "gpu", "tiered")
SPREAD_QUANTILES = 101  # of a measured fixed cost's scatter around its plane (`BatchOverhead.spread`)
STRATA = 100  # batches over which `CacheService` draws each stratum of a spread once
OUTCOME_NAMES = np.array([outcome.label for outcome in sorted(Outcome)])
assert all(OUTCOME_NAMES[int(o)] == o.label for o in Outcome)  # indexed by the outcome codes


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
class BatchOverhead:
    """What a batch costs beyond the cost model's compute and copies: a plane in its composition,
    `serial` (a batch planned after the previous one finished) or `pipelined` (planned while the
    previous one ran: a full batch under load) ms, plus `per_recompute` ms for each request that
    computes its prefix and `per_reuse` ms for each that reads one from the cache (`READS_CACHE`).
    The per-request terms carry what the per-token cost model misses per request on the device (on
    the H200, a recomputed prefix in a cache mode costs about 0.26 ms more than the model says: its
    admission into the pool); the intercepts carry the host work, launches and end-of-batch
    synchronisation. `copy_tail`: ms a serial batch whose host loads outlast its device work still
    takes after its last copy (the last layer, the heads, the end of the batch); a pipelined batch's
    loads began while the previous batch ran, so none is charged there. A constant overhead:
    `constant(ms)`.

    With `graphs` (the replay's `GraphLimits`) the plane above prices the batches the CUDA graphs take
    and `eager` = (serial, per_recompute, per_reuse) the others: an eager forward issues every kernel
    from the host, a fixed cost that a plane over both paths would spread over every batch size (on
    the H200 host 3 ms for a graphed batch of 16, 9-13 ms for an eager one of 32-64; BENCHMARKS.md
    section 15). `pipelined` is the intercept of a full batch on either path.

    `spread` (and `eager_spread`, of the eager plane): SPREAD_QUANTILES evenly spaced quantiles (0 to 1)
    of the fitted batches' fixed ms less their plane, shifted to mean zero; `deviation` maps a uniform
    draw through the batch's path's. None: every batch costs exactly its plane. Per path, because the
    paths scatter differently (on the H200 the graphed batches by 0.4-1.1 ms (sd), the eager ones by
    4 ms)."""

    serial: float = 0.0
    pipelined: float = 0.0
    per_recompute: float = 0.0
    per_reuse: float = 0.0
    copy_tail: float = 0.0
    eager: tuple[float, float, float] | None = None
    graphs: GraphLimits | None = None
    spread: tuple[float, ...] | None = None
    eager_spread: tuple[float, ...] | None = None

    @classmethod
    def constant(cls, ms: float) -> "BatchOverhead":
        return cls(ms, ms)

    @classmethod
    def from_dict(cls, curve: dict) -> "BatchOverhead":
        if not isinstance(curve.get("serial"), (int, float)):
            raise MtbenchError("batch_overhead_curve: a report of an older mtbench (serial fixed cost by batch size, "
                               "not by composition); re-run `mtbench capacity --measure`")
        eager, graphs = curve.get("eager"), curve.get("graphs")  # absent in reports before 2026-12-01
        spreads = {name: tuple(float(v) for v in curve[name]) if curve.get(name) is not None else None
                   for name in ("spread", "eager_spread")}  # absent in reports made before the spread (2026-12-01)
        return cls(**{name: float(curve[name]) for name in
                      ("serial", "pipelined", "per_recompute", "per_reuse", "copy_tail")},
                   eager=tuple(float(v) for v in eager) if eager is not None else None,
                   graphs=GraphLimits(**graphs) if graphs is not None else None, **spreads)

    @staticmethod
    def spread_of(residuals: np.ndarray) -> tuple[float, ...] | None:
        """The `spread` of these residuals (ms): SPREAD_QUANTILES quantiles, shifted so that the
        piecewise-linear distribution `deviation` draws from has mean zero (None without residuals)."""
        if len(residuals) < 2:
            return None
        quantiles = np.quantile(np.asarray(residuals, dtype=float), np.linspace(0.0, 1.0, SPREAD_QUANTILES))
        mean = (quantiles[:-1] + quantiles[1:]).mean() / 2  # the mean of the linear interpolation
        return tuple((quantiles - mean).tolist())

    @property
    def has_spread(self) -> bool:
        return self.spread is not None or self.eager_spread is not None

    def deviation(self, uniform: float, requests: int, rows: int) -> float:
        """The fixed-cost deviation from its plane of a batch of this many requests and computed rows,
        for a uniform draw in [0, 1) (0 where its path has no spread)."""
        spread = self.eager_spread if self._eager(requests, rows) else self.spread
        if spread is None:
            return 0.0
        position = uniform * (len(spread) - 1)
        below = min(int(position), len(spread) - 2)
        return spread[below] + (position - below) * (spread[below + 1] - spread[below])

    def ms(self, recomputed: float, reused: float, early: bool, rows: int = 0) -> float:
        """Fixed ms of a batch with `recomputed` + `reused` requests and `rows` computed rows."""
        serial, per_recompute, per_reuse = self.plane(int(recomputed + reused), rows)
        return (self.pipelined if early else serial) + per_recompute * recomputed + per_reuse * reused

    def plane(self, requests: int, rows: int) -> tuple[float, float, float]:
        """(serial, per_recompute, per_reuse) of a batch of this many requests and computed rows."""
        return self.eager if self._eager(requests, rows) else (self.serial, self.per_recompute, self.per_reuse)

    def _eager(self, requests: int, rows: int) -> bool:
        """Whether such a batch takes the eager path's plane."""
        return self.eager is not None and self.graphs is not None and not self.graphs.takes(requests, rows)

    def tail_ms(self, early: bool) -> float:
        return 0.0 if early else self.copy_tail

    def to_dict(self) -> dict:
        return {"serial": self.serial, "pipelined": self.pipelined, "per_recompute": self.per_recompute,
                "per_reuse": self.per_reuse, "copy_tail": self.copy_tail,
                "eager": list(self.eager) if self.eager is not None else None,
                "graphs": self.graphs.to_dict() if self.graphs is not None else None,
                "spread": list(self.spread) if self.spread is not None else None,
                "eager_spread": list(self.eager_spread) if self.eager_spread is not None else None}


@dataclass
class CacheService:
    """The cache and cost of one server over one workload, served in FIFO batches (module docstring).

    State: the control plane (None for mode none), the planned batch not yet released, the load
    budget's recent compute, the random stream of the fixed cost's deviations (`seed`; one stratified
    draw per batch, whether or not the overhead has a spread), and per request its outcome code and
    recomputed static tokens (-1 / unset until served). Invariant: batches arrive in FIFO order, each
    once.
    """

    workload: Workload
    setting: CacheSetting
    cost: CostModel
    overhead: BatchOverhead = field(default_factory=BatchOverhead)
    seed: int | tuple[int, ...] = 0
    outcomes: np.ndarray = field(init=False)
    recomputed: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.setting.check()
        w = self.workload
        n = w.n_requests
        self.outcomes = np.full(n, -1, dtype=np.int8)
        self.recomputed = w.n_static.copy()
        self._new_tokens = w.n_rt + w.n_cand
        self._keys, self._n_static, self._ts, self._next_use = request_columns(w)
        self._plane: ControlPlane | None = None
        if self.setting.mode != "none":
            host = self.setting.host_capacity if self.setting.mode == "tiered" else 0
            self._plane = ControlPlane(control_config(w, self.setting.policy, self.setting.gpu_capacity, host,
                                                      TierSettings(lookahead=1), self.cost))
        self._held: BatchDecisions | None = None  # the last batch's plan: planned, not released
        self._budget = AutoLoadBudget() if self.setting.mode == "tiered" else None
        self._random = np.random.default_rng(self.seed)
        self._uniforms: list[float] = []

    def __call__(self, start: int, end: int, early: bool) -> float:
        """Plan, release and price the batch [start, end): its service time in ms."""
        if self._plane is None:
            self.outcomes[start:end] = int(Outcome.MISS)
            fixed = self._fixed_ms(end - start, 0, early, start, end)
            return batch_price_ms(self.cost, self._compute_ms(start, end), 0.0, fixed)
        if not early:
            self._release_held()
        requests = [Request(self._keys[i], self._n_static[i], self._ts[i], self._next_use[i]) for i in range(start, end)]
        loaded_before = self._plane.stats.bytes_h2d
        plan = self._plane.plan(requests, self._budget.bytes() if self._budget is not None else None)
        h2d = float(self.cost.h2d_ms(self._plane.stats.bytes_h2d - loaded_before))
        if early:
            self._release_held()
        self._held = plan
        self.outcomes[start:end] = [int(o) for o in plan.outcomes]
        self.recomputed[start:end] = self.workload.n_static[start:end] - np.asarray(plan.cached)
        compute = self._compute_ms(start, end)
        reused = sum(outcome in READS_CACHE for outcome in plan.outcomes)
        fixed = self._fixed_ms(end - start - reused, reused, early, start, end)
        if self._budget is not None:
            self._budget.observe(fixed + compute)  # the batch's device time without copy stalls, as the replay feeds it
        return batch_price_ms(self.cost, compute, h2d, fixed, self.overhead.tail_ms(early))

    @property
    def outcome_names(self) -> np.ndarray:
        return OUTCOME_NAMES[self.outcomes]

    def _rows(self, start: int, end: int) -> int:
        """Computed rows of the batch: its recomputed static tokens and its R and C tokens."""
        return int(self.recomputed[start:end].sum() + self._new_tokens[start:end].sum())

    def _fixed_ms(self, recomputed: int, reused: int, early: bool, start: int, end: int) -> float:
        """The batch's fixed cost: its plane, plus its own draw from the overhead's spread."""
        rows = self._rows(start, end)
        deviation = self.overhead.deviation(self._next_uniform(), end - start, rows)
        return self.overhead.ms(recomputed, reused, early, rows) + deviation

    def _next_uniform(self) -> float:
        """The next batch's uniform draw, stratified over each STRATA batches in a random order: every
        STRATA batches draw once from each 1/STRATA of the spread, so a run's mean deviation stays near
        zero (i.i.d. draws moved a saturated run's throughput by up to 4% with one seed)."""
        if not self._uniforms:
            self._uniforms = ((self._random.permutation(STRATA) + self._random.random(STRATA)) / STRATA).tolist()
        return self._uniforms.pop()

    def _compute_ms(self, start: int, end: int) -> float:
        return float(np.sum(self.cost.compute_ms(self._new_tokens[start:end], self.recomputed[start:end])))

    def _release_held(self) -> None:
        if self._held is not None:
            self._plane.release(self._held)
        self._held = None


def batch_price_ms(cost: CostModel, compute_ms: float, h2d_ms: float, fixed_ms: float = 0.0,
                   copy_tail_ms: float = 0.0) -> float:
    """A batch's device time by the cost model: its fixed cost and compute, plus the copies not hidden
    under them (the layer-wise pipeline overlaps copies with all of the batch's device work); a batch
    that loads anything takes at least its copies and the `copy_tail_ms` after the last one. A fitted
    fixed cost may be negative (it corrects the cost model); the busy time never is."""
    busy = max(fixed_ms + compute_ms, 0.0)
    price = busy + cost.exposed_ms(h2d_ms, busy)
    return max(price, h2d_ms + copy_tail_ms) if h2d_ms > 0 else price


def record_rows(records: pd.DataFrame) -> pd.Series:
    """Rows each replay record adds to its batch's forward: its recomputed static tokens, R and C."""
    return records["computed_tokens"] + records["n_rt"] + records["n_cand"]


def batch_costs(records: pd.DataFrame, cost: CostModel, sizer: EntrySizer) -> pd.DataFrame:
    """Per batch_index of a replay's records (its real decisions): `compute_ms` (R+C tokens and the
    recomputed static tokens) and `h2d_ms` (its host hits' loads) by the cost model, as `CacheService`
    charges them, the requests that `reused` a cached prefix or `recomputed` theirs and its computed
    `rows` (`BatchOverhead`)."""
    new = (records["n_rt"] + records["n_cand"]).to_numpy()
    compute = pd.Series(cost.compute_ms(new, records["computed_tokens"].to_numpy()), index=records.index)
    compute = compute.groupby(records["batch_index"]).sum()
    loads = records[records["outcome"] == Outcome.HOST_HIT.label].drop_duplicates(["batch_index", "user_id", "static_version"])
    moved = pd.Series([sizer.moved_bytes(int(t)) for t in loads["n_cached"]], index=loads.index, dtype=np.float64)
    h2d = moved.groupby(loads["batch_index"]).sum().reindex(compute.index, fill_value=0.0)
    reused = records["outcome"].isin([outcome.label for outcome in READS_CACHE]).groupby(records["batch_index"]).sum()
    size = records.groupby("batch_index").size()
    rows = record_rows(records).groupby(records["batch_index"]).sum()
    return pd.DataFrame({"compute_ms": compute, "h2d_ms": cost.h2d_ms(h2d.to_numpy()),
                         "reused": reused.astype(np.int64), "recomputed": (size - reused).astype(np.int64),
                         "rows": rows.astype(np.int64)},
                        index=compute.index)
