"""Sample the host's CPU accounting beside a benchmark, from its own process, so the benchmark's threads
pay nothing for it: every INTERVAL seconds one CSV row with the time on the monotonic clock (the one
`time.perf_counter` reads, so the rows line up with an open-loop run's `clock_origin_s` + `start_s`),
the cumulative CPU seconds of /proc/stat's `cpu` line (user, nice, system, idle, iowait, irq,
softirq, steal; its ticks over this machine's USER_HZ, so the CSV reads the same on any machine) and the
runnable tasks (`procs_running`). `steal` is the time the hypervisor ran
something else on this machine's virtual CPUs: a server that slows down while steal climbs lost its
cores to the host's other tenants.

    python3 scripts/host_sampler.py OUT.csv [--interval 0.05]     (until SIGTERM or Ctrl-C)

Runs on Linux only (needs /proc/stat); rows are flushed every second, so a killed sampler loses at most that.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def read_stat(hertz: int) -> tuple[list[float], int]:
    """(cumulative CPU seconds of the `cpu` line in FIELDS order, procs_running)."""
    text = Path("/proc/stat").read_text()
    seconds, running = [], 0
    for line in text.splitlines():
        if line.startswith("cpu "):
            seconds = [int(value) / hertz for value in line.split()[1:1 + len(FIELDS)]]
        elif line.startswith("procs_running"):
            running = int(line.split()[1])
    return seconds, running


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    args = parser.parse_args()
    if not Path("/proc/stat").exists():
        print("host_sampler: /proc/stat not found (Linux only)", file=sys.stderr)
        return 2
    hertz = os.sysconf("SC_CLK_TCK")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        with args.out.open("w") as out:
            out.write(",".join(("clock_s", *FIELDS, "procs_running")) + "\n")
            flushed = time.perf_counter()
            while not stop:
                now = time.perf_counter()
                seconds, running = read_stat(hertz)
                out.write(",".join((f"{now:.6f}", *(f"{value:.2f}" for value in seconds), str(running))) + "\n")
                if now - flushed > 1.0:
                    out.flush()
                    flushed = now
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    except OSError as err:
        print(f"host_sampler: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
