"""Requests per CPU-second of each policy: the policy's own calls alone, and the simulator end to end.

Usage: PYTHONPATH=. python3 scripts/policy_speed.py [--data ../shared/data] [--policies lru,s3fifo,mtserve]
    [--requests N] [--repeat 3]

CPU time (`time.process_time`, best of `--repeat`), so a busy machine skews it less than wall time.
- "policy": one simulator run is recorded (every call the control plane makes on each tier's policy:
  access, admit, remove, pin, unpin, hint_upcoming, set_next_use, evict_until_fits, with their
  arguments); the calls are then replayed on fresh policy objects and timed. That is the policy's own
  cost per request, without the control plane's bookkeeping. The replay checks that every call
  returns what it returned in the recorded run (same decisions).
- "end to end": `simulate(...)` on the same workload (control plane included; the unit-size one-tier
  views without versions take the policy's `unit_hit_mask` fast path, where both columns are that).
Prints one markdown row per (setting, policy, capacity).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mtbench.cache.control as control
from mtbench.cache.policies import policy_class
from mtbench.sim.policy_table import TableCase, arc_oltp_keys, movielens_columns, parquet_columns, request_cases
from mtbench.sim.simulator import TierSettings, Workload, simulate

REPO = Path(__file__).resolve().parents[1]
RECORDED = ("access", "admit", "remove", "pin", "unpin", "hint_upcoming", "set_next_use", "evict_until_fits")
Call = tuple[int, str, tuple, Any]  # (tier index, method, arguments, result)


def _recording_class(cls: type, log: list[Call], tier: int) -> type:
    """A subclass of `cls` that logs its outermost public calls (not the ones a method makes on itself)."""
    depth = [0]

    def wrap(name: str) -> Callable:
        method = getattr(cls, name)

        def recorded(self, *args, **kwargs):
            depth[0] += 1
            try:
                result = method(self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                assert not kwargs, (name, kwargs)
                log.append((tier, name, tuple(list(a) if isinstance(a, list) else a for a in args),
                            list(result) if isinstance(result, list) else result))
            return result
        return recorded

    hints = cls.hint_upcoming is not control.ReplacementPolicy.hint_upcoming  # the control plane hints only then
    names = [n for n in RECORDED if n != "hint_upcoming" or hints]
    return type(f"Recording{cls.__name__}", (cls,), {n: wrap(n) for n in names})


def record(case: TableCase, policy: str, capacity: int) -> tuple[list[Call], list[tuple[int, dict]]]:
    """The calls one simulator run makes on its policies, and each tier's (capacity, constructor options)."""
    log: list[Call] = []
    tiers: list[tuple[int, dict]] = []
    original = control.make_policy

    def make_recording(name: str, tier_capacity: int, **options: Any):
        tiers.append((tier_capacity, options))
        return _recording_class(policy_class(name), log, len(tiers) - 1)(tier_capacity, **options)

    control.make_policy = make_recording
    try:
        plane = control.ControlPlane(control.ControlConfig(policy, capacity, case.host_capacity, case.workload.sizer,
                                                           TierSettings(), None, case.cost))
        from mtbench.sim.simulator import request_batches
        control.run_batches(plane, request_batches(case.workload, 1))
    finally:
        control.make_policy = original
    return log, tiers


def replay_seconds(policy: str, log: list[Call], tiers: list[tuple[int, dict]], check: bool) -> float:
    """CPU seconds to replay `log` on fresh policies (checking every result against the log if `check`)."""
    objects: list = []
    for capacity, options in tiers:
        if "traffic" in options:  # mtserve's host tier reads the (fresh) GPU tier's request statistics
            options = {**options, "traffic": objects[0].traffic}
        objects.append(policy_class(policy)(capacity, **options))
    calls = [(getattr(objects[tier], name), args) for tier, name, args, _ in log]
    if check:
        for (fn, args), (_, name, _, expected) in zip(calls, log):
            got = fn(*args)
            assert (list(got) if isinstance(got, list) else got) == expected, (name, args, got, expected)
        return 0.0
    start = time.process_time()
    for fn, args in calls:
        fn(*args)
    return time.process_time() - start


def end_to_end_seconds(case: TableCase, policy: str, capacity: int) -> float:
    start = time.process_time()
    simulate(case.workload, policy, capacity, case.host_capacity, TierSettings(), case.cost)
    return time.process_time() - start


def cases(data: Path, requests: int) -> list[TableCase]:
    mib, gib = 1 << 20, 1 << 30
    arc = TableCase(f"ARC OLTP first {requests:,}, unit, one tier", Workload.from_keys(arc_oltp_keys(data, requests)),
                    (1000, 10000), None)
    synth = request_cases(f"synth-small first {requests:,}",
                          parquet_columns(REPO / "traces" / "synth-small.parquet", requests),
                          "large", "bf16", (256 * mib, 4 * gib), 64 * gib, (20, 100))
    movielens = request_cases(f"MovieLens first {requests:,}", movielens_columns(data, requests), "large", "bf16",
                              (64 * mib,), 64 * gib, (8,))
    return [arc, *synth, *movielens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--policies", default="lru,s3fifo,mtserve")
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} at start")
    print("| setting | policy | capacity | policy req/s | end-to-end req/s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for case in cases(args.data, args.requests):
        n = case.workload.n_requests
        for policy in args.policies.split(","):
            for capacity in case.capacities:
                log, tiers = record(case, policy, capacity)
                replay_seconds(policy, log, tiers, check=True)
                own = min(replay_seconds(policy, log, tiers, check=False) for _ in range(args.repeat))
                e2e = "" if args.no_end_to_end else \
                    f"{n / min(end_to_end_seconds(case, policy, capacity) for _ in range(args.repeat)):,.0f}"
                print(f"| {case.title} | {policy} | {case.capacity_label(capacity)} | {n / own:,.0f} | {e2e} |",
                      flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
