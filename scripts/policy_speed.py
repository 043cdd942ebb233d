"""Requests per CPU-second of the simulator, one process (process_time, so a busy machine does not skew it).

Usage: PYTHONPATH=. python3 scripts/policy_speed.py [--data ../shared/data]
Prints: ARC OLTP (unit size, one tier, 914,145 requests) for lru, s3fifo, mtserve at 1,000 and 10,000 entries,
and synth-small (MTGR-large bf16 entries, 64 GiB host tier) for lru and mtserve at 256 MiB and 4 GiB.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mtbench.sim.policy_table import arc_oltp_keys, parquet_columns, request_cases
from mtbench.sim.simulator import TierSettings, Workload, simulate

REPO = Path(__file__).resolve().parents[1]


def _rate(workload: Workload, policy: str, capacity: int, host: int = 0, cost=None, tokens_per_byte: float = 1.0) -> float:
    start = time.process_time()
    simulate(workload, policy, capacity, host, TierSettings(), cost, tokens_per_byte)
    return workload.n_requests / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    arc = Workload.from_keys(arc_oltp_keys(args.data))
    print(f"ARC OLTP, {arc.n_requests:,} requests, unit size, one tier (requests per CPU-second)")
    for policy in ("lru", "s3fifo", "mtserve"):
        print(f"  {policy:8s}" + "".join(f"  {c:>6,}: {_rate(arc, policy, c):>11,.0f}" for c in (1000, 10000)))
    case = request_cases("synth-small", parquet_columns(REPO / "traces" / "synth-small.parquet"), "large", "bf16",
                         (256 << 20, 4 << 30), 64 << 30, ())[0]
    print(f"synth-small, {case.workload.n_requests:,} requests, MTGR-large bf16 entries, host tier 64 GiB")
    for policy in ("lru", "mtserve"):
        rates = [_rate(case.workload, policy, c, case.host_capacity, case.cost, case.tokens_per_byte)
                 for c in case.capacities]
        print(f"  {policy:8s}" + "".join(f"  {c >> 20:>5} MiB: {r:>9,.0f}" for c, r in zip(case.capacities, rates)))


if __name__ == "__main__":
    main()
