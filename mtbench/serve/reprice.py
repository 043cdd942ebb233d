"""A `mtbench capacity --measure` run priced again by today's simulator, beside what it measured.

`reprice` reads a capacity report (summary.json, records.parquet, calibration_requests.parquet) or what
scripts/gpu_serving_bench.sh leaves in $OUT (capacity_summary.json, capacity_points.csv,
calibration_requests.parquet), refits each mode's fixed cost from the run's own calibration replays
exactly as `MeasureContext.batch_overhead` does (`overhead_from_calibration`: one plane and spread per
forward path, with the graph limits of the report's curve or else the replay's defaults at its batch
size), and simulates every measured rate again: once with the report's own curve, once with the refit.
Records made before the `graphed` column (2026-12-01) get it from those limits on a CUDA run (the rule
the replay applied) and none graphed on the CPU. The measured open-loop runs never fed the calibration
(another Poisson draw), so a refit's gap to them is a prediction's error, not a fit's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.graphs import GraphLimits
from mtbench.serve.arrivals import ArrivalSpec
from mtbench.serve.batcher import BatcherConfig
from mtbench.serve.capacity import CapacityQuestion, ModeCost, ModeServer, load_workload, overhead_from_calibration
from mtbench.serve.options import ServingOptions
from mtbench.serve.service import BatchOverhead, CacheSetting, record_rows
from mtbench.sim.costmodel import CostModel


@dataclass
class Repriced:
    """One report priced again. `points`: a row per measured (cache_mode, rate) with load (rate / the
    refit's simulated saturation), measured_p99_ms (NaN where the real server fell behind), its runs'
    measured_min_ms and measured_max_ms, and the simulated report_p99_ms and refit_p99_ms (NaN where
    overloaded). `max_qps`: a row per mode, the measured, report and refit max QPS within the SLO.
    `trace_matches`: the trace is byte for byte the report's (the bench rebuilds it so only with the
    same pyarrow)."""

    points: pd.DataFrame
    max_qps: pd.DataFrame
    percentile: float
    slo_ms: float
    trace_matches: bool


def read_report(folder: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(summary, points, calibration records) of a capacity report or a serving bench's $OUT."""
    summary_path = next((folder / name for name in ("summary.json", "capacity_summary.json")
                         if (folder / name).exists()), None)
    calibration_path = folder / "calibration_requests.parquet"
    if summary_path is None or not calibration_path.exists():
        raise MtbenchError(f"{folder}: not a `mtbench capacity --measure` report (needs summary.json or "
                           "capacity_summary.json, and calibration_requests.parquet)")
    summary = json.loads(summary_path.read_text())
    if summary.get("kind") != "capacity" or not summary["config"].get("measure"):
        raise MtbenchError(f"{summary_path}: not a capacity report made with --measure")
    points = (pd.read_parquet(folder / "records.parquet") if (folder / "records.parquet").exists()
              else pd.read_csv(folder / "capacity_points.csv"))
    return summary, points, pd.read_parquet(calibration_path)


def with_graphed(calibration: pd.DataFrame, limits: GraphLimits, cuda: bool) -> pd.DataFrame:
    """The calibration records with `graphed`, inferred per batch by `limits` where they lack it."""
    if "graphed" in calibration:
        return calibration
    runs = ["cache_mode", "batch_size", "pipelined", "batch_index"]
    rows = record_rows(calibration).groupby([calibration[c] for c in runs]).transform("sum")
    requests = calibration.groupby(runs)["request_index"].transform("size")
    return calibration.assign(graphed=[cuda and limits.takes(int(n), int(r)) for n, r in zip(requests, rows)])


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def reprice(folder: Path, trace: Path) -> Repriced:
    """`folder`'s measured points priced by its own curve and by a refit of its calibration (module docstring)."""
    try:
        summary, points, calibration = read_report(Path(folder))
        config = summary["config"]
        workload, fingerprint = load_workload(Path(trace), summary["model"], summary["dtype"], config["page_tokens"],
                                              config["max_requests"])
        cost = CostModel(**{k: v for k, v in config["cost_model"].items() if k != "source"})
        serving = ServingOptions(ArrivalSpec(config["arrivals"], rate=1.0, seed=config["seed"]),
                                 BatcherConfig(config["batch_size"], config["max_wait_ms"], config["max_batch_tokens"]),
                                 config["slo_ms"])
    except KeyError as err:
        raise MtbenchError(f"{folder}: the report lacks {err}") from None
    question = CapacityQuestion(serving, config["percentile"], None, config["warmup"])
    priced, best = [], []
    for row in summary["rows"]:
        mode = row["cache_mode"]
        setting = CacheSetting(mode, config["policy"], config["gpu_cache"] if mode != "none" else 0,
                               config["host_cache"] if mode == "tiered" else 0)
        curve = row["batch_overhead_curve"]
        limits = GraphLimits(**curve["graphs"]) if curve.get("graphs") else GraphLimits(config["batch_size"])
        records = with_graphed(calibration[calibration["cache_mode"] == mode], limits, config["device"].startswith("cuda"))
        refit = overhead_from_calibration(records, cost, workload.sizer, limits)
        reported = ModeServer(workload, setting, ModeCost(cost, BatchOverhead.from_dict(curve)), question)
        refitted = ModeServer(workload, setting, ModeCost(cost, refit), question)
        measured = points[(points["source"] == "measured") & (points["cache_mode"] == mode)].sort_values("rate")
        for point in measured.itertuples(index=False):
            p99 = point.latency_at_percentile_ms
            behind = pd.isna(p99)  # an overloaded run has no percentile
            priced.append({"cache_mode": mode, "rate": point.rate, "load": point.rate / refitted.saturation_qps,
                           "measured_p99_ms": math.nan if behind else p99,
                           "measured_min_ms": math.nan if behind else point.latency_at_percentile_ms_min,
                           "measured_max_ms": math.nan if behind else point.latency_at_percentile_ms_max,
                           "report_p99_ms": _or_nan(reported.at(point.rate)["latency_at_percentile_ms"]),
                           "refit_p99_ms": _or_nan(refitted.at(point.rate)["latency_at_percentile_ms"])})
        best.append({"cache_mode": mode, "measured": row.get("measured_max_qps") or 0.0, "report": row["max_qps"],
                     "refit": refitted.search()})
    return Repriced(pd.DataFrame(priced), pd.DataFrame(best), config["percentile"], config["slo_ms"],
                    fingerprint.get("sha256") == summary["trace"].get("sha256"))
