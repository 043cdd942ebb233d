"""Re-price a `mtbench capacity --measure` run with today's simulator: refit each mode's fixed cost from
the run's own calibration replays and simulate the measured rates again, beside what the report said.

    PYTHONPATH=$PWD python3 scripts/serving_reprice.py REPORT_DIR TRACE

REPORT_DIR is a capacity report (summary.json, records.parquet, calibration_requests.parquet) or what
scripts/gpu_serving_bench.sh leaves in $OUT (capacity_summary.json, capacity_points.csv,
calibration_requests.parquet); TRACE is the run's trace (the bench's step 1 rebuilds it byte for byte
only with the same pyarrow, so a different sha256 is reported, not refused). The refit is what
`MeasureContext.batch_overhead` computes (`overhead_from_calibration`): one plane per forward path,
with the graph limits of the report's curve or else the replay's defaults at the report's batch size;
records made before the `graphed` column (2026-12-01) get it from those limits on a CUDA run (the rule
the replay applied) and none graphed on the CPU. Prints per mode and
measured rate: the measured p99 (median run, lowest-highest), the report's simulated p99, the refit's,
and both gaps; then the max QPS within the SLO measured, reported and refit. Runs on the CPU; the
reports of BENCHMARKS.md section 15 were re-priced with it.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def gap(simulated: float | None, measured: float) -> str:
    return "-" if simulated is None else f"{abs(simulated - measured) / measured:.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("trace", type=Path)
    args = parser.parse_args()
    try:
        summary, points, calibration = read_report(args.report)
        config = summary["config"]
        workload, fingerprint = load_workload(args.trace, summary["model"], summary["dtype"], config["page_tokens"],
                                              config["max_requests"])
    except (MtbenchError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if fingerprint.get("sha256") != summary["trace"].get("sha256"):
        print(f"note: {args.trace} is not byte for byte the report's trace (sha256 differs)")
    cost = CostModel(**{k: v for k, v in config["cost_model"].items() if k != "source"})
    serving = ServingOptions(ArrivalSpec(config["arrivals"], rate=1.0, seed=config["seed"]),
                             BatcherConfig(config["batch_size"], config["max_wait_ms"], config["max_batch_tokens"]),
                             config["slo_ms"])
    question = CapacityQuestion(serving, config["percentile"], None, config["warmup"])
    print(f"{'mode':<7}{'rate/s':>7}  {'measured p99':<18}{'report':>7}{'refit':>7}{'gap':>7}{'refit gap':>10}")
    lines = []
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
            overloaded = p99 is None or p99 != p99  # the real server fell behind: no percentile to compare
            spread = ("overloaded" if overloaded else
                      f"{p99:.1f} ({point.latency_at_percentile_ms_min:.1f}-{point.latency_at_percentile_ms_max:.1f})")
            old, new = (server.at(point.rate)["latency_at_percentile_ms"] for server in (reported, refitted))
            cells = [f"{value:.1f}" if value is not None else "-" for value in (old, new)]
            gaps = ["-", "-"] if overloaded else [gap(old, p99), gap(new, p99)]
            print(f"{mode:<7}{point.rate:>7,.0f}  {spread:<18}{cells[0]:>7}{cells[1]:>7}{gaps[0]:>7}{gaps[1]:>10}")
        lines.append(f"{mode}: measured {row.get('measured_max_qps') or 0:,.0f}, report {row['max_qps']:,.0f}, "
                     f"refit {refitted.search():,.0f}")
    print(f"max QPS within p{config['percentile']:g} <= {config['slo_ms']:g} ms: " + "; ".join(lines))
    print("p99 in ms; gap: |simulated - measured| / measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
