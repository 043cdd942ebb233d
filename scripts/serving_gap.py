"""Print where a capacity run's simulated batch times differ from the measured ones (`mtbench.serve.gap`).

    PYTHONPATH=$PWD python3 scripts/serving_gap.py REPORT_DIR [--csv OUT.csv]

REPORT_DIR is a `mtbench capacity --measure` report (scripts/gpu_serving_bench.sh keeps its
measured_requests.parquet and summary.json as $OUT/measured_requests.parquet and
$OUT/capacity_summary.json: copy them into one folder as measured_requests.parquet and summary.json).
Per cache mode, early (planned while the previous batch ran) or serial, and batch-size class: batches,
mean measured and simulated ms, the fixed cost, the model's compute, the copies the model leaves
exposed against the stall the replay measured, and the relative gap; then per run, the batches that took
over 3 ms more than their price against the rest, with the host's wall and CPU time issuing their
forwards, the kernel's part of that CPU time, the minor page faults and the preemptions of the server
thread (reports made before 2026-12-01 lack some of these: `-`); with `--host-samples` (the CSV of
scripts/host_sampler.py, run beside the benchmark) also the CPUs the machine kept busy and the CPUs
the hypervisor stole around those batches. Runs on the CPU.

    PYTHONPATH=$PWD python3 scripts/serving_gap.py REPORT_DIR --host-samples host_samples.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtbench.errors import MtbenchError
from mtbench.serve.gap import SLOW_MS, batch_gaps, gap_summary, host_summary, with_host_samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--csv", type=Path, help="also write every batch's row here")
    parser.add_argument("--host-samples", type=Path, help="scripts/host_sampler.py's CSV of the same run")
    args = parser.parse_args()
    try:
        gaps = batch_gaps(args.report)
        if args.host_samples is not None:
            gaps = with_host_samples(gaps, args.host_samples)
    except (MtbenchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.csv is not None:
        gaps.to_csv(args.csv, index=False)
    table = gap_summary(gaps)
    print(f"{'mode':<7} {'kind':<6} {'size':>5} {'n':>5} {'meas':>6} {'sim':>6} {'fixed':>6} {'comp':>6} "
          f"{'expo':>5} {'stall':>5} {'gap':>6}")
    for row in table.itertuples(index=False):
        print(f"{row.cache_mode:<7} {'early' if row.early else 'serial':<6} {row.size_class:>5} {row.batches:>5} "
              f"{row.measured_ms:>6.2f} {row.simulated_ms:>6.2f} {row.fixed_ms:>6.2f} {row.compute_ms:>6.2f} "
              f"{row.exposed_ms:>5.2f} {row.stall_ms:>5.2f} {row.gap:>+6.0%}")
    print("ms per batch (means); n: batches; gap: (simulated - measured) / measured")
    print()
    short = lambda value: "    -" if value != value else f"{value:>5.1f}"
    machine = "busy_cpus" in gaps
    print(f"{'mode':<6} {'rate/s':>6} {'kind':<4} {'n':>5} {'meas':>5} {'sim':>5} {'host':>5} {'cpu':>5} "
          f"{'kern':>5} {'fault':>5} {'preem':>5}" + (f" {'busy':>5} {'steal':>5}" if machine else ""))
    for row in host_summary(gaps).itertuples(index=False):
        print(f"{row.cache_mode:<6} {row.rate:>6,.0f} {'slow' if row.slow else 'rest':<4} {row.batches:>5} "
              f"{short(row.measured_ms)} {short(row.simulated_ms)} {short(row.host_ms)} {short(row.host_cpu_ms)} "
              f"{short(row.host_kernel_ms)} {short(row.host_faults)} {short(row.host_preemptions)}"
              + (f" {short(row.busy_cpus)} {row.steal_cpus:>5.2f}" if machine else ""))
    print(f"slow: measured over {SLOW_MS:g} ms above simulated. host / cpu / kern: the forwards'")
    print("host issue: wall, the server thread's CPU time and its kernel part (ms).")
    print("fault / preem: minor page faults and preemptions of the server thread per batch.")
    if machine:
        print("busy / steal: CPUs the machine kept busy, CPUs the hypervisor stole (around it).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
