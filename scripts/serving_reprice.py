"""Re-price a `mtbench capacity --measure` run with today's simulator: refit each mode's fixed cost from
the run's own calibration replays and simulate the measured rates again, beside what the report said.

    PYTHONPATH=$PWD python3 scripts/serving_reprice.py REPORT_DIR TRACE

REPORT_DIR is a capacity report or what scripts/gpu_serving_bench.sh leaves in $OUT (reports/serving-h200/
holds the H200 runs of BENCHMARKS.md section 16); TRACE is the run's trace (the bench's step 1 rebuilds
it byte for byte only with the same pyarrow, so a different sha256 is reported, not refused). The refit
is `mtbench.serve.reprice` (what `MeasureContext.batch_overhead` computes). Prints per mode and measured
rate: its load (of the refit's simulated saturation), the measured p99 (median run, lowest-highest;
"overloaded" where the real server fell behind), the report's simulated p99, the refit's, and both
gaps; then the max QPS within the SLO measured, reported and refit. Runs on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.serve.reprice import reprice


def gap(simulated: float, measured: float) -> str:
    return "-" if pd.isna(simulated) or pd.isna(measured) else f"{abs(simulated - measured) / measured:.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("report", type=Path, help="a capacity --measure report, or a serving bench's $OUT")
    parser.add_argument("trace", type=Path, help="the trace the run replayed")
    args = parser.parse_args()
    try:
        priced = reprice(args.report, args.trace)
    except (MtbenchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not priced.trace_matches:
        print(f"note: {args.trace} is not byte for byte the report's trace (sha256 differs)")
    print(f"{'mode':<7}{'rate/s':>7}{'load':>6}  {'measured p99':<20}{'report':>7}{'refit':>7}{'gap':>7}{'refit gap':>10}")
    for point in priced.points.itertuples(index=False):
        measured = point.measured_p99_ms
        spread = ("overloaded" if pd.isna(measured) else
                  f"{measured:.1f} ({point.measured_min_ms:.1f}-{point.measured_max_ms:.1f})")
        cells = ["-" if pd.isna(value) else f"{value:.1f}" for value in (point.report_p99_ms, point.refit_p99_ms)]
        print(f"{point.cache_mode:<7}{point.rate:>7,.0f}{point.load:>6.2f}  {spread:<20}{cells[0]:>7}{cells[1]:>7}"
              f"{gap(point.report_p99_ms, measured):>7}{gap(point.refit_p99_ms, measured):>10}")
    print(f"max QPS within p{priced.percentile:g} <= {priced.slo_ms:g} ms (measured / report / refit):")
    for row in priced.max_qps.itertuples(index=False):
        print(f"  {row.cache_mode:<7}{row.measured:>9,.0f} /{row.report:>7,.0f} /{row.refit:>7,.0f}")
    print("p99 in ms; load: of the refit's simulated saturation;\ngap: |simulated - measured| / measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
