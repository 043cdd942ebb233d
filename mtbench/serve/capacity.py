"""Capacity planning: the highest request rate one GPU sustains within a latency SLO, per cache mode,
and the GPUs a target rate needs.

Per cache mode (`ModeServer`): the discrete-event simulator serves the requests at a given arrival
rate (`serve_queue`); each batch it closes is decided by the control plane and priced by the cost
model plus a fixed cost per batch (`mtbench.serve.service.CacheService`). A rate *meets the SLO* when the run is not overloaded and the latency
at `percentile` (over the requests after warm-up) is at most `slo_ms`. The search:
- saturation = closed-loop throughput (full batches back to back) of the requests after warm-up: no
  open-loop rate above it is sustainable;
- the SLO rate is bisected on a log scale between 1% of saturation and saturation (excluded), assuming a rate
  meets the SLO when a higher one does (tail latency grows with load) until it brackets the answer
  within `SEARCH_PRECISION`.
GPUs for a target rate: ceil(target / max rate per GPU), assuming requests are split evenly across
GPUs by a hash of the user id, so each GPU sees the same traffic shape at 1/N of the rate and keeps
its own users' entries. That is conservative for the cache: a GPU serving 1/N of the users hits at
least as often with the same tier sizes under recency-based policies. Routers that do better are
`mtbench.fleet`'s job.
`MeasureContext` checks simulated points on the device (`run`: the real open-loop replay at a rate;
`throughput`: requests/s with every request queued at once). `MeasureContext.batch_overhead` measures
what a per-request cost model misses: the fixed cost of a batch (host work, launches, the
synchronisation of its end, a GPU not filled by a small batch), per cache mode and forward path, as
measured batch time minus its measured copy stall minus the cost model's compute for the same batch's
decisions, from replays served by the open-loop server itself: saturated ones (every request queued)
and open-loop ones at CALIBRATION_LOADS of the measured throughput.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mtbench.cache.control import READS_CACHE
from mtbench.cache.sizes import EntrySizer
from mtbench.errors import MtbenchError
from mtbench.graphs import GraphLimits
from mtbench.serve.arrivals import ArrivalSpec, arrival_times
from mtbench.serve.des import closed_loop_rate, serve_queue
from mtbench.serve.options import ServingOptions
from mtbench.serve.service import OUTCOME_NAMES, BatchOverhead, CacheService, CacheSetting, batch_costs
from mtbench.serve.stats import Timeline, serving_stats
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import Workload

SEARCH_PRECISION = 0.005  # relative width of the final bracket of the SLO rate
READS_CACHE_NAMES = sorted(outcome.label for outcome in READS_CACHE)
LOWEST_FRACTION = 0.01  # of saturation: below this the SLO is called unreachable
MEASURE_STEPS = 3  # default device runs of the measured max-QPS search (`measured_search`)
COPY_BOUND_STALL_MS = 1.0  # a serial batch stalled longer than this waited on its host loads
CURVE_FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95, 1.0, 1.1)
CALIBRATION_LOADS = (0.3, 0.6, 0.9)  # of the measured throughput: the open-loop calibration runs
CALIBRATION_SEED_OFFSET = 1  # their Poisson arrivals are another draw than the measured runs'
MIN_PLANE_BATCHES = 20  # open-loop calibration batches on a forward path that give its plane
SPREAD_RUNS = 5  # simulated runs per rate, on the same arrivals, of an overhead with a spread (`ModeServer`)


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


@dataclass(frozen=True)
class ModeCost:
    """A cache mode's cost model and fixed cost per batch (`BatchOverhead`)."""

    cost: CostModel
    overhead: BatchOverhead = BatchOverhead()


class ModeServer:
    """One cache mode over one workload: a fresh `CacheService` (control plane + prices) per DES run.

    `saturation_qps` is the closed-loop throughput; `at(rate)` memoises each rate's row; `outcomes`
    are the outcome names of the saturated run (every run decides its own: batches differ by rate).
    An overhead with a spread makes a run's tail depend on its draws (at 70% load one draw's p99 was
    5-8% from another's on the H200 runs), so each rate then runs SPREAD_RUNS streams of draws on the
    same arrivals and reports the median run, as `--measure-repeats` reports the median device run.
    """

    def __init__(self, workload: Workload, setting: CacheSetting, mode_cost: ModeCost, question: CapacityQuestion) -> None:
        self.workload, self.setting, self.question, self.mode_cost = workload, setting, question, mode_cost
        self.tokens = workload.n_static + workload.n_rt + workload.n_cand
        saturated = self._service()
        self.saturation_qps = closed_loop_rate(workload.n_requests, saturated, question.serving.batcher.max_batch,
                                               question.warmup)
        self.outcomes = saturated.outcome_names
        self._rows: dict[float, dict] = {}

    def _service(self, stream: int = 0) -> CacheService:
        """A fresh service drawing its fixed-cost deviations from `stream` (of the arrivals' seed)."""
        return CacheService(self.workload, self.setting, self.mode_cost.cost, self.mode_cost.overhead,
                            (self.question.serving.arrivals.seed, stream))

    def at(self, rate: float) -> dict:
        """Serving row at `rate` requests/s (simulated; the median run where there are several), plus
        `latency_at_percentile_ms` and `meets_slo`."""
        if rate not in self._rows:
            arrivals = arrival_times(self.workload.ts, self.question.arrivals_at(rate))
            streams = SPREAD_RUNS if self.mode_cost.overhead.has_spread else 1
            runs = sorted((self._run(rate, arrivals, stream) for stream in range(streams)), key=percentile_latency)
            self._rows[rate] = runs[len(runs) // 2]
        return self._rows[rate]

    def _run(self, rate: float, arrivals: np.ndarray, stream: int) -> dict:
        service = self._service(stream)
        timeline = serve_queue(arrivals, service, self.question.serving.batcher, self.tokens, self.question.warmup)
        return point_row(timeline, service.outcome_names, self.question, rate)

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
    row["hit_ratio"] = float(np.isin(outcomes[keep], READS_CACHE_NAMES).mean()) if len(latency) else None
    at_percentile = float(np.percentile(latency, question.percentile)) if len(latency) else math.inf
    row["latency_at_percentile_ms"] = None if row["overloaded"] else at_percentile
    row["meets_slo"] = bool(not row["overloaded"] and at_percentile <= serving.slo_ms)
    return row


def percentile_latency(row: dict) -> float:
    """A run's latency at the question's percentile, infinite where it was overloaded (the slowest):
    the key that ranks repeated runs of one rate, simulated or measured."""
    return math.inf if row["latency_at_percentile_ms"] is None else row["latency_at_percentile_ms"]


def gpus_needed(target_qps: float | None, max_qps: float) -> int | None:
    """GPUs for `target_qps` split evenly by user hash (module docstring); None without a target or a
    mode that cannot meet the SLO at all."""
    if target_qps is None or max_qps <= 0:
        return None
    return max(1, math.ceil(target_qps / max_qps))


@dataclass
class MeasureContext:
    """What the real replays of `--measure` share: one validated setup, one model, the question, and
    how many times each open-loop rate is replayed (`repeats`: the same arrivals each time, so the
    spread of the results is the measurement's own)."""

    setup: object  # mtbench.replay.runner.ReplaySetup
    question: CapacityQuestion
    progress: Callable[[str, int], Callable[[int], None]] | None = None
    repeats: int = 1

    def __post_init__(self) -> None:
        from mtbench.replay.runner import build_model, validate_setup

        self._closed: dict[tuple[str, int, bool], tuple[float, pd.DataFrame]] = {}
        self._open_loop_calibration: dict[tuple[str, float], pd.DataFrame] = {}  # (mode, load): timed records
        self._graph_limits: dict[str, GraphLimits | None] = {}  # per mode: the batches its CUDA graphs took at max_batch
        self.requests: list[pd.DataFrame] = []  # every open-loop run's timed records, with mode, rate and repeat
        cfg, self.trace, device, dtype = validate_setup(self.setup)
        self.model = build_model(cfg, device, dtype, self.setup.options.seed)

    def _saturated(self, mode: str, batch_size: int, pipelined: bool) -> tuple[float, pd.DataFrame]:
        """(measured ms per request, timed records) of `mode` with every request queued at once
        (`saturated_feed`: full batches served as the open-loop server serves them, each planned while
        the previous one runs if `pipelined`, else after it finished; after the question's warm-up); memoised."""
        from mtbench.replay.engine import replay_run
        from mtbench.replay.runner import planned_runs
        from mtbench.serve.openloop import saturated_feed

        if (mode, batch_size, pipelined) not in self._closed:
            requests, warmup = self._requests(batch_size, pipelined)
            options = replace(self.setup.options, batch_size=batch_size, max_requests=requests, warmup=warmup)
            setup = replace(self.setup, cache=mode, baseline=False, options=options)
            label, config = planned_runs(setup)[0]
            serving = self.question.serving
            feed = saturated_feed(self.trace, options, serving.batcher, serving.slo_ms, pipelined)
            what = f"{label} saturated, batch {batch_size}{'' if pipelined else ', serial'}"
            progress = self.progress(what, requests) if self.progress else None
            result = replay_run(self.model, self.trace, config, options, label, progress, feed=feed)
            timed = result.records[~result.records["warmup"].to_numpy(dtype=bool)]
            self._closed[(mode, batch_size, pipelined)] = (float(result.row["ms_per_request"]), timed)
            if pipelined:  # the server of the open-loop runs: max_batch
                self._graph_limits[mode] = result.graph_limits
        return self._closed[(mode, batch_size, pipelined)]

    def _calibrate_open_loop(self, mode: str) -> None:
        """One open-loop replay of `mode` at each of CALIBRATION_LOADS x its measured throughput, its
        arrivals drawn with another seed than the measured runs' (memoised)."""
        throughput = self.throughput(mode)
        arrivals = self.question.serving.arrivals
        for load in CALIBRATION_LOADS:
            if (mode, load) not in self._open_loop_calibration:
                spec = replace(self.question.arrivals_at(load * throughput),
                               seed=arrivals.seed + CALIBRATION_SEED_OFFSET)
                what = f"calibration @ {load:.0%} of {throughput:,.0f}/s"
                _, timed = self._open_loop(mode, spec, what)
                self._open_loop_calibration[(mode, load)] = timed

    def calibration_requests(self, only: str | None = None) -> pd.DataFrame | None:
        """Every calibration replay's timed records, or those of mode `only`, with cache_mode, feed
        ("serial" or "saturated": every request queued at once, planned after or during the previous
        batch; "open-loop": Poisson arrivals at `load` x the throughput), batch_size (max batch),
        pipelined and load (NaN but for open-loop); None before any ran."""
        frames = [records.assign(cache_mode=mode, feed="saturated" if pipelined else "serial", batch_size=size,
                                 pipelined=pipelined, load=np.nan)
                  for (mode, size, pipelined), (_, records) in self._closed.items() if only in (None, mode)]
        big = self.question.serving.batcher.max_batch
        frames += [records.assign(cache_mode=mode, feed="open-loop", batch_size=big, pipelined=True, load=load)
                   for (mode, load), records in self._open_loop_calibration.items() if only in (None, mode)]
        return pd.concat(frames, ignore_index=True) if frames else None

    def throughput(self, mode: str) -> float:
        """Measured requests/s of `mode` with every request queued, at the question's batch size."""
        return 1e3 / self._saturated(mode, self.question.serving.batcher.max_batch, True)[0]

    def batch_overhead(self, mode: str, cost: CostModel, sizer: EntrySizer) -> BatchOverhead:
        """What a batch of `mode` costs beyond the cost model's compute for its decisions, measured on
        the same requests served by the open-loop server. A batch's fixed cost is its measured time -
        its measured copy stall - `batch_costs`' compute. Three kinds of calibration replay:
        - `serial`: every request queued, batches of each power-of-two size up to max_batch served one
          after another (each size in its own replay);
        - `saturated`: every request queued, full batches of max_batch, each planned while the previous
          one runs (the throughput, and `pipelined`: the mean fixed cost of those batches less their
          path's per-request terms);
        - `open-loop`: Poisson arrivals at CALIBRATION_LOADS of that throughput (another draw than the
          measured runs'): the batch sizes, idle gaps and host state of the server under load.
        Per forward path (the CUDA graphs' batches and the eager ones) a least-squares plane over the
        open-loop batches on that path (not full: a full one may have been planned early) gives the
        intercept and the ms per recomputed and per reused request (`BatchOverhead`; a count that never
        varies gets no term), or over the serial batches where the open-loop runs had fewer than
        MIN_PLANE_BATCHES on that path: on the H200 the serial replays' small batches cost 0.2-1.1 ms
        less and their batches of 16 about 0.9 ms more than the same batches under load, which made
        the plane too steep (BENCHMARKS.md section 16; `fit_overhead`). `copy_tail`: the median of
        (batch time - `batch_costs`' copy time) over the serial batches the copies held up (stall over
        COPY_BOUND_STALL_MS), 0 without any."""
        big = self.question.serving.batcher.max_batch
        for size in sorted({1 << k for k in range(big.bit_length()) if 1 << k <= big} | {big}):
            self._saturated(mode, size, False)
        self._saturated(mode, big, True)
        self._calibrate_open_loop(mode)
        return overhead_from_calibration(self.calibration_requests(mode), cost, sizer, self._graph_limits.get(mode))

    def _requests(self, batch_size: int, pipelined: bool) -> tuple[int, int]:
        """(requests, warm-up) of a saturated measurement: the question's warm-up (so the tiers hold what
        they hold when the open-loop runs are timed), then every request the open-loop runs time when
        `pipelined` (the throughput: the same requests as the simulated saturation, whose hit ratio drifts
        along the trace), else 24 serial batches (the calibration of the fixed cost), within the trace."""
        available = self.trace.num_rows if self.setup.options.max_requests is None else self.setup.options.max_requests
        warmup = min(self.question.warmup, available // 2)
        return (available if pipelined else min(available, warmup + 24 * batch_size)), warmup

    def run(self, mode: str, rate: float) -> dict:
        """The open-loop replay of `mode` at `rate`, `repeats` times: the row of the run with the median
        latency at the question's percentile (an overloaded run counts as the slowest; of two, the
        slower), with `repeats` and the lowest and highest of that latency over the repeats
        (`latency_at_percentile_ms_min` / `_max`, None where a run was overloaded)."""
        ranked = sorted((self._run_once(mode, rate, repeat) for repeat in range(self.repeats)), key=percentile_latency)
        row = dict(ranked[len(ranked) // 2])
        row["repeats"] = len(ranked)
        for name, end in (("min", ranked[0]), ("max", ranked[-1])):
            row[f"latency_at_percentile_ms_{name}"] = end["latency_at_percentile_ms"]
        return row

    def _open_loop(self, mode: str, arrivals: ArrivalSpec, what: str) -> tuple[dict, pd.DataFrame]:
        """(row, timed records) of one real open-loop replay of `mode` with these arrivals."""
        from mtbench.replay.engine import replay_run
        from mtbench.replay.runner import planned_runs
        from mtbench.serve.openloop import open_loop_feeds

        setup = replace(self.setup, cache=mode, baseline=False)
        label, config = planned_runs(setup)[0]
        feed = open_loop_feeds(replace(self.question.serving, arrivals=arrivals), setup.options)(self.trace)
        progress = self.progress(f"{label} {what}", feed.n) if self.progress else None
        result = replay_run(self.model, self.trace, config, setup.options, label, progress, feed=feed)
        return result.row, result.records[~result.records["warmup"].to_numpy(dtype=bool)]

    def _run_once(self, mode: str, rate: float, repeat: int) -> dict:
        what = f"@ {rate:,.0f}/s" + (f" ({repeat + 1}/{self.repeats})" if self.repeats > 1 else "")
        result_row, timed = self._open_loop(mode, self.question.arrivals_at(rate), what)
        self.requests.append(timed.assign(cache_mode=mode, rate=rate, repeat=repeat))
        latency = timed["latency_ms"].to_numpy(dtype=float)
        row = dict(result_row)
        at_percentile = float(np.percentile(latency, self.question.percentile)) if len(latency) else math.inf
        row["rate"] = rate
        row["latency_at_percentile_ms"] = None if row["overloaded"] else at_percentile
        row["meets_slo"] = bool(not row["overloaded"] and at_percentile <= self.question.serving.slo_ms)
        return row


def calibration_batches(records: pd.DataFrame, cost: CostModel, sizer: EntrySizer) -> pd.DataFrame:
    """One row per batch of one calibration replay's timed records: start_s, finish_s, stall_ms, graphed,
    batch_ms, `batch_costs`' columns and fixed_ms (batch time - measured copy stall - the cost model's
    compute)."""
    timed = records.groupby("batch_index")[["start_s", "finish_s", "stall_ms", "graphed"]].first()
    timed["batch_ms"] = (timed["finish_s"] - timed["start_s"]) * 1e3
    timed = timed.join(batch_costs(records, cost, sizer))
    timed["fixed_ms"] = timed["batch_ms"] - timed["stall_ms"] - timed["compute_ms"]
    return timed


def overhead_from_calibration(calibration: pd.DataFrame, cost: CostModel, sizer: EntrySizer,
                              limits: GraphLimits | None) -> BatchOverhead:
    """`fit_overhead` over one mode's calibration records (`MeasureContext.calibration_requests`, or a
    report's calibration_requests.parquet): one replay per (feed, batch_size, load); the serial ones
    and the open-loop ones (if any; reports before 2026-12-01 have none and no `feed`: their pipelined
    replays are the saturated ones) give the planes, the saturated one at the largest batch size the
    full batches."""
    if "feed" not in calibration:
        calibration = calibration.assign(feed=np.where(calibration["pipelined"], "saturated", "serial"), load=np.nan)
    runs = {(feed, int(size), load): calibration_batches(records, cost, sizer) for (feed, size, load), records
            in calibration.groupby(["feed", "batch_size", "load"], dropna=False)}
    serial = pd.concat([batches for (feed, _, _), batches in runs.items() if feed == "serial"])
    saturated = max((key for key in runs if key[0] == "saturated"), key=lambda key: key[1])
    full, big = runs[saturated], saturated[1]
    open_loop = [batches[batches["recomputed"] + batches["reused"] < big]
                 for (feed, _, _), batches in runs.items() if feed == "open-loop"]
    return fit_overhead(serial, full, limits, pd.concat(open_loop) if open_loop else None)


def fit_overhead(serial: pd.DataFrame, full: pd.DataFrame, limits: GraphLimits | None,
                 open_loop: pd.DataFrame | None = None) -> BatchOverhead:
    """`BatchOverhead` from a calibration's batches (one row each: fixed_ms, recomputed, reused, graphed,
    stall_ms, batch_ms, h2d_ms). Each forward path's plane (two when the batches took both and the
    graphs' `limits` are known, else one over every batch) is fitted over the `open_loop` batches on
    that path when there are MIN_PLANE_BATCHES of them, else over the `serial` ones (else the
    open-loop ones, if only they took it). The `full` pipelined batches give the intercept `pipelined`
    (their fixed cost less their path's per-request terms), the serial ones the copies held up `copy_tail`,
    and each plane's own batches their scatter around it (`spread`, `eager_spread`)."""
    sources = [serial] + ([open_loop] if open_loop is not None else [])
    graphed = np.concatenate([source["graphed"].to_numpy(dtype=bool) for source in sources])
    two_paths = limits is not None and graphed.any() and not graphed.all()

    def plane(path: bool | None) -> tuple[tuple[float, float, float], np.ndarray]:
        """(plane, its batches' residuals) of the graphed (True) or eager (False) batches, or of every
        batch (None)."""
        on = [source if path is None else source[source["graphed"].to_numpy(dtype=bool) == path]
              for source in (open_loop, serial) if source is not None]
        timed = next((batches for batches in on if len(batches) >= MIN_PLANE_BATCHES), None)
        timed = timed if timed is not None else max(on, key=len)
        recomputed, reused = timed["recomputed"].to_numpy(dtype=float), timed["reused"].to_numpy(dtype=float)
        ms = timed["fixed_ms"].to_numpy(dtype=float)
        fitted = fit_plane(recomputed, reused, ms)
        return fitted, ms - (fitted[0] + fitted[1] * recomputed + fitted[2] * reused)

    graphed_plane, residuals = plane(True if two_paths else None)
    eager, eager_residuals = plane(False) if two_paths else (None, np.empty(0))
    paths = np.array([graphed_plane, eager or graphed_plane])  # row 0: graphed, row 1: eager
    slopes = paths[(~full["graphed"].to_numpy(dtype=bool)).astype(int), 1:]  # each full batch's path
    pipelined = float((full["fixed_ms"] - slopes[:, 0] * full["recomputed"] - slopes[:, 1] * full["reused"]).mean())
    held_up = serial[serial["stall_ms"] > COPY_BOUND_STALL_MS]
    tail = float((held_up["batch_ms"] - held_up["h2d_ms"]).median()) if len(held_up) else 0.0
    intercept, per_recompute, per_reuse = graphed_plane
    return BatchOverhead(intercept, pipelined, per_recompute, per_reuse, tail, eager, limits if two_paths else None,
                         BatchOverhead.spread_of(residuals), BatchOverhead.spread_of(eager_residuals))


def fit_plane(recomputed: np.ndarray, reused: np.ndarray, ms: np.ndarray) -> tuple[float, float, float]:
    """(intercept, ms per recomputed request, ms per reused request) of the least-squares plane
    ms ~ recomputed, reused; a count that is the same in every batch gets no term (0.0)."""
    columns = [np.ones(len(ms))] + [counts for counts in (recomputed, reused) if np.ptp(counts) > 0]
    coefficients = np.linalg.lstsq(np.column_stack(columns), ms, rcond=None)[0].tolist()
    slopes = iter(coefficients[1:])
    return (coefficients[0], *(next(slopes) if np.ptp(counts) > 0 else 0.0 for counts in (recomputed, reused)))


def load_workload(trace: Path, model: str, dtype: str, page_tokens: int, max_requests: int | None
                  ) -> tuple[Workload, dict]:
    """(workload of the first max_requests requests, trace fingerprint)."""
    from mtbench.model import get_config
    from mtbench.model.config import parse_dtype
    from mtbench.trace import open_trace

    cfg = get_config(model)
    opened = open_trace(trace, limits=cfg.limits())
    columns = opened.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    if max_requests is not None:
        if max_requests < 1:
            raise MtbenchError(f"--max-requests must be >= 1, got {max_requests}")
        columns = {name: values[:max_requests] for name, values in columns.items()}
    sizer = EntrySizer(cfg.kv_bytes_per_token(parse_dtype(dtype)), page_tokens)
    return Workload.from_columns(columns, sizer), opened.fingerprint()


@dataclass
class CapacityOutcome:
    """The report of a capacity run: one row per cache mode, one record per (source, mode, rate)."""

    rows: list[dict]
    points: list[dict]
    result: str
    measured_requests: pd.DataFrame | None = None  # the measured runs' timed records (`--measure`)
    calibration_requests: pd.DataFrame | None = None  # the saturated replays' timed records (`--measure`)


def plan_capacity(workload: Workload, settings: list[CacheSetting], costs: dict[str, ModeCost],
                  question: CapacityQuestion, measure: MeasureContext | None = None,
                  measure_rates: tuple[float, ...] = (), measure_fractions: tuple[float, ...] = (),
                  step: Callable[[str], None] | None = None, measure_steps: int = MEASURE_STEPS) -> CapacityOutcome:
    """Search every mode's SLO rate, draw its latency-vs-load curve, and (with `measure`) check on the device:
    each mode at `measure_rates`, at `measure_fractions` of its simulated saturation and at its SLO rate,
    then `measure_steps` runs of `measured_search`, plus its saturated throughput. Every measured rate
    has a simulated point beside it."""
    question.check()
    servers: dict[str, ModeServer] = {}
    max_qps: dict[str, float] = {}
    for setting in settings:
        servers[setting.mode] = ModeServer(workload, setting, costs[setting.mode], question)
        max_qps[setting.mode] = servers[setting.mode].search()
        if step:
            step(f"searched {setting.mode}")
    shared = tuple(rate for rate in max_qps.values() if rate > 0) + tuple(measure_rates)
    measured_at = {mode: sorted(set(measure_rates) | {f * server.saturation_qps for f in measure_fractions}
                                | ({max_qps[mode]} if max_qps[mode] > 0 else set())) for mode, server in servers.items()}
    points = []
    for mode, server in servers.items():
        special = set(shared) | (set(measured_at[mode]) if measure is not None else set())
        own = [f * server.saturation_qps for f in CURVE_FRACTIONS]
        own = [rate for rate in own if all(abs(rate - other) > 0.01 * other for other in special)]
        for rate in sorted(set(own) | special):
            points.append({"source": "simulated", "cache_mode": mode, **server.at(rate)})
        if step:
            step(f"curve {mode}")
    measured: dict[str, dict] = {}
    if measure is not None:
        for mode in servers:
            runs = [measure.run(mode, rate) for rate in measured_at[mode]]
            searched = measured_search(runs, lambda rate: measure.run(mode, rate), measure_steps)
            points += [{"source": "simulated", "cache_mode": mode, **servers[mode].at(row["rate"])} for row in searched]
            runs += searched
            points += [{"source": "measured", "cache_mode": mode, **_point_fields(row)} for row in runs]
            measured[mode] = _measured_summary(runs, max_qps[mode], measure.throughput(mode))
            if step:
                step(f"measured {mode}")
    rows = [_mode_row(servers[mode], max_qps[mode], question, measured.get(mode)) for mode in servers]
    _add_speedups(rows)
    lines = [result_line(rows, question)] + ([result_line(rows, question, "measured_")] if measured else [])
    requests = pd.concat(measure.requests, ignore_index=True) if measure is not None and measure.requests else None
    calibration = measure.calibration_requests() if measure is not None else None
    return CapacityOutcome(rows, points, "\n".join(lines), requests, calibration)


def measured_search(runs: list[dict], run_at: Callable[[float], dict], steps: int) -> list[dict]:
    """Up to `steps` more measured runs (`run_at(rate)`), each at the geometric mean of the highest rate
    of all runs so far that met the SLO and the lowest higher rate that did not (the simulated search's
    log-scale bisection, on the device): the measured max QPS is then searched, not read off the grid
    of measured rates. Stops early when no run met the SLO or none above the best one missed it.
    Returns the new runs."""
    added: list[dict] = []
    for _ in range(steps):
        done = runs + added
        low = max((row["rate"] for row in done if row["meets_slo"]), default=None)
        if low is None:
            break
        high = min((row["rate"] for row in done if not row["meets_slo"] and row["rate"] > low), default=None)
        if high is None:
            break
        added.append(run_at(math.sqrt(low * high)))
    return added


def _measured_summary(runs: list[dict], simulated_max: float, throughput: float) -> dict:
    """The measured check of one mode: its run at the simulated SLO rate, the highest measured rate
    that met the SLO, the mean hit ratio of its runs and its saturated throughput."""
    at_max = next((row for row in runs if row["rate"] == simulated_max), {})
    met = [row["rate"] for row in runs if row["meets_slo"]]
    hits = [row["hit_ratio"] for row in runs if row.get("hit_ratio") is not None]
    return {"measured_p50_ms": at_max.get("p50_ms"), "measured_p99_ms": at_max.get("p99_ms"),
            "measured_latency_at_percentile_ms": at_max.get("latency_at_percentile_ms"),
            "measured_slo_attainment": at_max.get("slo_attainment"), "measured_meets_slo": at_max.get("meets_slo"),
            "measured_hit_ratio": float(np.mean(hits)) if hits else None, "measured_max_qps": max(met, default=0.0),
            "measured_saturation_qps": throughput}


POINT_FIELDS = ("rate", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "latency_at_percentile_ms", "meets_slo",
                "slo_attainment", "goodput", "offered_rate", "served_rate", "overloaded", "queue_growth", "queue_max",
                "queue_mean", "utilization", "queueing_ms_mean", "formation_ms_mean", "service_ms_mean",
                "gpu_hit_p50_ms", "gpu_hit_p99_ms", "host_hit_p50_ms", "host_hit_p99_ms", "miss_p50_ms", "miss_p99_ms",
                "hit_ratio", "arrival_lag_ms_max", "graphed_batches", "device_mallocs", "transfer_wait_ms", "repeats",
                "latency_at_percentile_ms_min", "latency_at_percentile_ms_max")


def _point_fields(row: dict) -> dict:
    return {name: row.get(name) for name in POINT_FIELDS}


def _mode_row(server: ModeServer, max_qps: float, question: CapacityQuestion, measured: dict | None) -> dict:
    outcomes = server.outcomes[min(question.warmup, len(server.outcomes) - 1):]  # as the figures
    counts = {name: int(np.count_nonzero(outcomes == name)) for name in OUTCOME_NAMES}
    n = max(len(outcomes), 1)
    at_capacity = server.at(max_qps) if max_qps > 0 else {}
    setting = server.setting
    hits = sum(counts[outcome.label] for outcome in READS_CACHE)
    row = {
        "run": setting.mode, "cache_mode": setting.mode, "policy": setting.policy if setting.mode != "none" else "none",
        "gpu_capacity": setting.gpu_capacity if setting.mode != "none" else 0,
        "host_capacity": setting.host_capacity if setting.mode == "tiered" else 0,
        "requests": len(outcomes), "gpu_hits": counts["gpu_hit"], "host_hits": counts["host_hit"],
        "partial_hits": counts["partial_hit"], "host_recomputes": counts["host_recompute"],
        "misses": counts["miss"], "stale": counts["stale"],
        "hit_ratio": hits / n, "gpu_hit_ratio": counts["gpu_hit"] / n,
        "saturation_qps": server.saturation_qps, "max_qps": max_qps,
        "p50_ms": at_capacity.get("p50_ms"), "p99_ms": at_capacity.get("p99_ms"),
        "latency_at_percentile_ms": at_capacity.get("latency_at_percentile_ms"),
        "slo_attainment": at_capacity.get("slo_attainment"), "goodput": at_capacity.get("goodput"),
        "target_qps": question.target_qps, "gpus_needed": gpus_needed(question.target_qps, max_qps),
    }
    overhead = server.mode_cost.overhead
    full, reused_share = question.serving.batcher.max_batch, hits / n  # a full batch at the saturated run's mix
    w = server.workload
    rows = full * float(np.mean(w.n_rt + w.n_cand) + (1 - reused_share) * np.mean(w.n_static))
    row["batch_overhead_ms"] = overhead.ms(full * (1 - reused_share), full * reused_share, early=True, rows=int(rows))
    row["batch_overhead_curve"] = overhead.to_dict()
    row.update(measured or {})
    return row


def _add_speedups(rows: list[dict]) -> None:
    """capacity_speedup = max_qps / no-cache max_qps; throughput_speedup the same for saturation; the
    measured_ ones from the measured fields (when measured)."""
    none = next((row for row in rows if row["cache_mode"] == "none"), None)
    pairs = [("capacity_speedup", "max_qps"), ("throughput_speedup", "saturation_qps"),
             ("measured_capacity_speedup", "measured_max_qps"), ("measured_throughput_speedup", "measured_saturation_qps")]
    for row in rows:
        for name, field in pairs:
            if field in row:
                base = none.get(field) if none else None
                row[name] = row[field] / base if base else None


def format_rate(rate: float) -> str:
    """Requests/s as text: whole numbers with separators, three significant digits below 100."""
    return f"{rate:,.0f}" if rate >= 100 or rate == 0 else f"{rate:.3g}"


def result_line(rows: list[dict], question: CapacityQuestion, prefix: str = "") -> str:
    """'max QPS per GPU within p99 <= 50 ms: none X, tiered Y (capacity speedup Y/X); throughput speedup Z'
    (simulated; `prefix` "measured_" for the measured fields)."""
    percentile = f"p{question.percentile:g}"
    parts = ", ".join(f"{row['cache_mode']} {format_rate(row[prefix + 'max_qps'])}" for row in rows)
    what = "measured" if prefix else "simulated"
    line = f"{what}: max QPS per GPU within {percentile} <= {question.serving.slo_ms:g} ms: {parts}"
    best = max((row for row in rows if row["cache_mode"] != "none"), key=lambda row: row[prefix + "max_qps"],
               default=None)
    capacity, throughput = (best or {}).get(prefix + "capacity_speedup"), (best or {}).get(prefix + "throughput_speedup")
    if capacity is not None:
        line += f" (capacity speedup {best['cache_mode']}/none {capacity:.2f}x)"
    if throughput is not None:
        line += f"; throughput speedup {throughput:.2f}x"
    return line
