"""Capacity planning: the highest request rate one GPU sustains within a latency SLO, per cache mode,
and the GPUs a target rate needs.

Per cache mode (`ModeServer`): the cache simulator decides every request's outcome, the cost model
prices it (`mtbench.serve.service`), and the discrete-event simulator serves the requests at a given
arrival rate (`serve_queue`). A rate *meets the SLO* when the run is not overloaded and the latency
at `percentile` (over the requests after warm-up) is at most `slo_ms`. The search:
- saturation = closed-loop throughput (full batches back to back): no open-loop rate above it is
  sustainable;
- the SLO rate is bisected on a log scale between 1% of saturation and saturation (excluded), assuming a rate
  meets the SLO when a higher one does (tail latency grows with load) until it brackets the answer
  within `SEARCH_PRECISION`.
GPUs for a target rate: ceil(target / max rate per GPU), assuming requests are split evenly across
GPUs by a hash of the user id, so each GPU sees the same traffic shape at 1/N of the rate and keeps
its own users' entries. That is conservative for the cache: a GPU serving 1/N of the users hits at
least as often with the same tier sizes under recency-based policies. Routers that do better are
`mtbench.fleet`'s job.
`MeasureContext.run` checks a simulated point on the device: the real open-loop replay at that rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.serve.arrivals import ArrivalSpec, arrival_times
from mtbench.serve.des import BatchCost, closed_loop_rate, serve_queue
from mtbench.serve.openloop import ServingOptions
from mtbench.serve.service import CacheSetting, ServedRequests, serve_costs
from mtbench.serve.stats import Timeline, serving_stats
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import Workload

SEARCH_PRECISION = 0.005  # relative width of the final bracket of the SLO rate
LOWEST_FRACTION = 0.01  # of saturation: below this the SLO is called unreachable
CURVE_FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95, 1.0, 1.1)


@dataclass(frozen=True)
class CapacityQuestion:
    """What `mtbench capacity` asks: SLO, percentile, arrivals, batching, optional target rate."""

    serving: ServingOptions
    percentile: float = 99.0
    target_qps: float | None = None
    warmup: int = 0

    def check(self) -> "CapacityQuestion":
        self.serving.check()
        if self.serving.arrivals.mode not in ("poisson", "trace"):
            raise MtbenchError("capacity: --arrivals must be poisson or trace (open loop)")
        if not (0 < self.percentile < 100):
            raise MtbenchError(f"--percentile must be between 0 and 100 (exclusive), got {self.percentile}")
        if self.target_qps is not None and not (math.isfinite(self.target_qps) and self.target_qps > 0):
            raise MtbenchError(f"--target-qps must be a positive number of requests/s, got {self.target_qps}")
        if self.warmup < 0:
            raise MtbenchError(f"--warmup must be >= 0, got {self.warmup}")
        return self

    def arrivals_at(self, rate: float) -> ArrivalSpec:
        return replace(self.serving.arrivals, rate=rate, speed=None)


class ModeServer:
    """One cache mode over one workload: outcomes and costs once, then a DES run per rate.

    `saturation_qps` is the closed-loop throughput; `at(rate)` memoises each rate's row.
    """

    def __init__(self, workload: Workload, setting: CacheSetting, cost: CostModel, batch_overhead_ms: float,
                 question: CapacityQuestion, tokens_per_byte: float) -> None:
        self.workload, self.setting, self.question = workload, setting, question
        max_batch = question.serving.batcher.max_batch
        self.served: ServedRequests = serve_costs(workload, setting, cost, max_batch, tokens_per_byte)
        self.batch_cost: BatchCost = self.served.batch_cost(cost, batch_overhead_ms)
        self.tokens = workload.n_static + workload.n_rt + workload.n_cand
        self.saturation_qps = closed_loop_rate(workload.n_requests, self.batch_cost, max_batch)
        self._rows: dict[float, dict] = {}

    def at(self, rate: float) -> dict:
        """Serving row at `rate` requests/s (simulated), plus `latency_at_percentile_ms` and `meets_slo`."""
        if rate not in self._rows:
            question = self.question
            arrivals = arrival_times(self.workload.ts, question.arrivals_at(rate))
            timeline = serve_queue(arrivals, self.batch_cost, question.serving.batcher, self.tokens)
            self._rows[rate] = point_row(timeline, self.served.outcomes, question, rate)
        return self._rows[rate]

    def search(self) -> float:
        """Highest rate meeting the SLO (0.0 when even LOWEST_FRACTION of saturation does not)."""
        high = self.saturation_qps  # never sustainable: the queue of a server at full load does not settle
        low = high * LOWEST_FRACTION
        if not self.at(low)["meets_slo"]:
            return 0.0
        while high / low > 1 + SEARCH_PRECISION:
            middle = math.sqrt(low * high)
            low, high = (middle, high) if self.at(middle)["meets_slo"] else (low, middle)
        return low


def point_row(timeline: Timeline, outcomes: np.ndarray, question: CapacityQuestion, rate: float) -> dict:
    """Stats of the requests after warm-up, and whether the SLO holds at `question.percentile`."""
    keep = slice(min(question.warmup, max(len(timeline.arrival) - 1, 0)), None)
    timed = Timeline(timeline.arrival[keep], timeline.start[keep], timeline.finish[keep], timeline.server_free[keep])
    serving = question.serving
    row = {"rate": rate, **serving_stats(timed, outcomes[keep], serving.slo_ms, serving.batcher.max_batch)}
    latency = timed.latency_ms
    at_percentile = float(np.percentile(latency, question.percentile)) if len(latency) else math.inf
    row["latency_at_percentile_ms"] = None if row["overloaded"] else at_percentile
    row["meets_slo"] = bool(not row["overloaded"] and at_percentile <= serving.slo_ms)
    return row


def gpus_needed(target_qps: float | None, max_qps: float) -> int | None:
    """GPUs for `target_qps` split evenly by user hash (module docstring); None without a target or a
    mode that cannot meet the SLO at all."""
    if target_qps is None or max_qps <= 0:
        return None
    return max(1, math.ceil(target_qps / max_qps))


@dataclass
class MeasureContext:
    """What the real replays of `--measure` share: one validated setup, one model, the question."""

    setup: object  # mtbench.replay.runner.ReplaySetup
    question: CapacityQuestion
    progress: Callable[[str, int], Callable[[int], None]] | None = None

    def __post_init__(self) -> None:
        from mtbench.replay.runner import build_model, validate_setup

        cfg, self.trace, device, dtype = validate_setup(self.setup)
        self.model = build_model(cfg, device, dtype, self.setup.options.seed)

    def run(self, mode: str, rate: float) -> dict:
        from mtbench.replay.engine import replay_run
        from mtbench.replay.runner import planned_runs
        from mtbench.serve.openloop import open_loop_feeds

        setup = replace(self.setup, cache=mode, baseline=False)
        label, config = planned_runs(setup)[0]
        serving = replace(self.question.serving, arrivals=self.question.arrivals_at(rate))
        feed = open_loop_feeds(serving, setup.options)(self.trace)
        total = len(feed.arrivals)
        progress = self.progress(f"{label} @ {rate:,.0f}/s", total) if self.progress else None
        result = replay_run(self.model, self.trace, config, setup.options, label, progress, feed=feed)
        timed = result.records[~result.records["warmup"].to_numpy(dtype=bool)]
        latency = timed["latency_ms"].to_numpy(dtype=float)
        row = dict(result.row)
        at_percentile = float(np.percentile(latency, self.question.percentile)) if len(latency) else math.inf
        row["rate"] = rate
        row["latency_at_percentile_ms"] = None if row["overloaded"] else at_percentile
        row["meets_slo"] = bool(not row["overloaded"] and at_percentile <= self.question.serving.slo_ms)
        return row


def load_workload(trace: Path, model: str, dtype: str, page_tokens: int, max_requests: int | None
                  ) -> tuple[Workload, float, dict]:
    """(workload of the first max_requests requests, tokens per byte, trace fingerprint)."""
    from mtbench.model import get_config
    from mtbench.model.config import parse_dtype
    from mtbench.sim.sizes import EntrySizer
    from mtbench.trace import open_trace

    cfg = get_config(model)
    opened = open_trace(trace, limits=cfg.limits())
    columns = opened.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    if max_requests is not None:
        if max_requests < 1:
            raise MtbenchError(f"--max-requests must be >= 1, got {max_requests}")
        columns = {name: values[:max_requests] for name, values in columns.items()}
    sizer = EntrySizer(cfg.kv_bytes_per_token(parse_dtype(dtype)), page_tokens)
    return Workload.from_columns(columns, sizer), 1.0 / sizer.bytes_per_token, opened.fingerprint()


@dataclass
class CapacityOutcome:
    """The report of a capacity run: one row per cache mode, one record per (source, mode, rate)."""

    rows: list[dict]
    points: list[dict]
    result: str


def plan_capacity(workload: Workload, settings: list[CacheSetting], cost: CostModel, batch_overhead_ms: float,
                  question: CapacityQuestion, tokens_per_byte: float, measure: MeasureContext | None = None,
                  measure_rates: tuple[float, ...] = (), step: Callable[[str], None] | None = None
                  ) -> CapacityOutcome:
    """Search every mode's SLO rate, draw its latency-vs-load curve, and (with `measure`) check on the device."""
    question.check()
    servers: dict[str, ModeServer] = {}
    max_qps: dict[str, float] = {}
    for setting in settings:
        servers[setting.mode] = ModeServer(workload, setting, cost, batch_overhead_ms, question, tokens_per_byte)
        max_qps[setting.mode] = servers[setting.mode].search()
        if step:
            step(f"searched {setting.mode}")
    shared = tuple(rate for rate in max_qps.values() if rate > 0) + tuple(measure_rates)
    points = []
    for mode, server in servers.items():
        own = [fraction * server.saturation_qps for fraction in CURVE_FRACTIONS]
        own = [rate for rate in own if all(abs(rate - other) > 0.01 * other for other in shared)]
        for rate in sorted(set(own) | set(shared)):
            points.append({"source": "simulated", "cache_mode": mode, **server.at(rate)})
        if step:
            step(f"curve {mode}")
    measured: dict[str, dict] = {}
    if measure is not None:
        for mode in servers:
            for rate in sorted(set(measure_rates) | ({max_qps[mode]} if max_qps[mode] > 0 else set())):
                row = measure.run(mode, rate)
                points.append({"source": "measured", "cache_mode": mode, **_point_fields(row)})
                if rate == max_qps[mode]:
                    measured[mode] = row
            if step:
                step(f"measured {mode}")
    rows = [_mode_row(servers[mode], max_qps[mode], question, measured.get(mode)) for mode in servers]
    _add_speedups(rows)
    return CapacityOutcome(rows, points, result_line(rows, question))


POINT_FIELDS = ("rate", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "latency_at_percentile_ms", "meets_slo",
                "slo_attainment", "goodput", "offered_rate", "served_rate", "overloaded", "queue_growth", "queue_max",
                "queue_mean", "utilization", "queueing_ms_mean", "formation_ms_mean", "service_ms_mean",
                "gpu_hit_p50_ms", "gpu_hit_p99_ms", "host_hit_p50_ms", "host_hit_p99_ms", "miss_p50_ms", "miss_p99_ms",
                "hit_ratio", "arrival_lag_ms_max")


def _point_fields(row: dict) -> dict:
    return {name: row.get(name) for name in POINT_FIELDS}


def _mode_row(server: ModeServer, max_qps: float, question: CapacityQuestion, measured: dict | None) -> dict:
    outcomes = server.served.outcomes
    counts = {name: int(np.count_nonzero(outcomes == name)) for name in ("gpu_hit", "host_hit", "miss", "stale")}
    n = max(len(outcomes), 1)
    at_capacity = server.at(max_qps) if max_qps > 0 else {}
    setting = server.setting
    row = {
        "run": setting.mode, "cache_mode": setting.mode, "policy": setting.policy if setting.mode != "none" else "none",
        "gpu_capacity": setting.gpu_capacity if setting.mode != "none" else 0,
        "host_capacity": setting.host_capacity if setting.mode == "tiered" else 0,
        "requests": len(outcomes), "gpu_hits": counts["gpu_hit"], "host_hits": counts["host_hit"],
        "misses": counts["miss"], "stale": counts["stale"],
        "hit_ratio": (counts["gpu_hit"] + counts["host_hit"]) / n, "gpu_hit_ratio": counts["gpu_hit"] / n,
        "saturation_qps": server.saturation_qps, "max_qps": max_qps,
        "p50_ms": at_capacity.get("p50_ms"), "p99_ms": at_capacity.get("p99_ms"),
        "latency_at_percentile_ms": at_capacity.get("latency_at_percentile_ms"),
        "slo_attainment": at_capacity.get("slo_attainment"), "goodput": at_capacity.get("goodput"),
        "target_qps": question.target_qps, "gpus_needed": gpus_needed(question.target_qps, max_qps),
    }
    if measured is not None:
        row.update({"measured_p50_ms": measured.get("p50_ms"), "measured_p99_ms": measured.get("p99_ms"),
                    "measured_latency_at_percentile_ms": measured.get("latency_at_percentile_ms"),
                    "measured_slo_attainment": measured.get("slo_attainment"),
                    "measured_meets_slo": measured.get("meets_slo"), "measured_hit_ratio": measured.get("hit_ratio")})
    return row


def _add_speedups(rows: list[dict]) -> None:
    """capacity_speedup = max_qps / no-cache max_qps; throughput_speedup the same for saturation."""
    none = next((row for row in rows if row["cache_mode"] == "none"), None)
    for row in rows:
        row["capacity_speedup"] = row["max_qps"] / none["max_qps"] if none and none["max_qps"] > 0 else None
        row["throughput_speedup"] = row["saturation_qps"] / none["saturation_qps"] if none else None


def result_line(rows: list[dict], question: CapacityQuestion) -> str:
    """'max QPS per GPU within p99 <= 50 ms: none X, tiered Y (capacity speedup Y/X); throughput speedup Z'."""
    percentile = f"p{question.percentile:g}".replace(".", "")
    parts = ", ".join(f"{row['cache_mode']} {row['max_qps']:,.0f}" for row in rows)
    line = f"max QPS per GPU within {percentile} <= {question.serving.slo_ms:g} ms: {parts}"
    best = max((row for row in rows if row["cache_mode"] != "none"), key=lambda row: row["max_qps"], default=None)
    if best is not None and best.get("capacity_speedup") is not None:
        line += f" (capacity speedup {best['cache_mode']}/none {best['capacity_speedup']:.2f}x)"
    if best is not None and best.get("throughput_speedup") is not None:
        line += f"; throughput speedup {best['throughput_speedup']:.2f}x"
    return line
