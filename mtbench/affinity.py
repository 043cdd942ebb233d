"""Pin this process to a set of CPUs (`mtbench capacity --cpus`), as a latency-critical server is pinned.

Unpinned, the server thread's CPU time per batch (the same work) on the H200 host changed by up to 50%
from one second to the next, and three repeats of the same run at 70% load spread their p99 by 18%.
Pinned to two CPUs the host work was about a quarter faster and the repeats agreed within 7%
(reports/BENCHMARKS.md, section 16).
"""

from __future__ import annotations

import os

from mtbench.errors import MtbenchError


def parse_cpus(text: str) -> list[int]:
    """CPU numbers of a list such as "0,1" or "0-3,8" (sorted, distinct)."""
    cpus: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            first, dash, last = part.partition("-")
            low, high = int(first), int(last) if dash else int(first)
            if low < 0 or high < low:
                raise ValueError(part)
            cpus.update(range(low, high + 1))
    except ValueError:
        raise MtbenchError(f"--cpus: expected CPU numbers such as 0,1 or 0-3, got {text!r}") from None
    return sorted(cpus)


def format_cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def pin_cpus(text: str) -> list[int]:
    """Pin every thread of this process, and so every thread it starts later, to the CPUs in `text`;
    returns them. Refuses CPUs this process may not use and platforms without CPU affinity."""
    cpus = parse_cpus(text)
    if not hasattr(os, "sched_setaffinity"):
        raise MtbenchError("--cpus: this platform cannot pin a process to CPUs (Linux only)")
    available = sorted(os.sched_getaffinity(0))
    missing = [cpu for cpu in cpus if cpu not in available]
    if missing:
        raise MtbenchError(f"--cpus: CPU {format_cpus(missing)} is not available to this process "
                           f"(available: {format_cpus(available)})")
    for thread in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]:
        try:
            os.sched_setaffinity(int(thread), cpus)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
    return cpus
