"""When requests arrive: the trace's own times (scaled), a Poisson process, or closed loop.

Modes (`ArrivalSpec.mode`):
- `closed`: no arrival times; the next batch starts when the last one is done (throughput runs).
- `trace`: request i arrives at (ts[i] - ts[0]) / speed; with `rate` instead of `speed` the times are
  scaled so that the mean rate over the trace is `rate` requests/s. Gaps keep their shape, so a bursty
  trace stays bursty at any rate.
- `poisson`: exponential gaps of mean 1/rate (seeded), requests in the trace's order (its users and
  their order are kept; only the times change).
Arrival times are seconds from the first request (the first arrives at 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError

ARRIVAL_MODES = ("closed", "trace", "poisson")


@dataclass(frozen=True)
class ArrivalSpec:
    """How requests arrive (see module docstring); `check` refuses impossible settings."""

    mode: str = "closed"
    speed: float | None = None  # trace mode: time runs `speed` times faster than in the trace
    rate: float | None = None  # requests/s: poisson's rate, or trace mode's target mean rate
    seed: int = 0

    def check(self) -> "ArrivalSpec":
        if self.mode not in ARRIVAL_MODES:
            raise MtbenchError(f"--arrivals must be one of {', '.join(ARRIVAL_MODES)}, got {self.mode!r}")
        if self.speed is not None and not (math.isfinite(self.speed) and self.speed > 0):
            raise MtbenchError(f"--speed must be a positive number, got {self.speed}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise MtbenchError(f"--rate must be a positive number of requests/s, got {self.rate}")
        if self.mode == "poisson" and self.rate is None:
            raise MtbenchError("--arrivals poisson needs --rate QPS")
        if self.mode == "poisson" and self.speed is not None:
            raise MtbenchError("--speed only applies to --arrivals trace (poisson takes --rate)")
        if self.mode == "trace" and self.speed is not None and self.rate is not None:
            raise MtbenchError("--arrivals trace takes --speed X or --rate QPS, not both")
        if self.mode == "closed" and (self.speed is not None or self.rate is not None):
            raise MtbenchError("--speed and --rate need open-loop arrivals (--arrivals trace or poisson)")
        return self

    @property
    def open_loop(self) -> bool:
        return self.mode != "closed"

    def describe(self) -> str:
        if self.mode == "poisson":
            return f"poisson {self.rate:g}/s"
        if self.mode == "trace":
            return f"trace x{self.speed:g}" if self.rate is None else f"trace at {self.rate:g}/s"
        return "closed loop"


def arrival_times(ts: np.ndarray, spec: ArrivalSpec) -> np.ndarray | None:
    """Arrival time in seconds of each request (first at 0), or None for closed loop."""
    spec.check()
    ts = np.asarray(ts, dtype=np.float64)
    n = len(ts)
    if spec.mode == "closed" or n == 0:
        return None if spec.mode == "closed" else np.zeros(0)
    if spec.mode == "poisson":
        gaps = np.random.default_rng(spec.seed).exponential(1.0 / spec.rate, n)
        gaps[0] = 0.0
        return np.cumsum(gaps)
    offsets = ts - ts[0]
    span = float(offsets[-1])
    if n > 1 and span <= 0:
        raise MtbenchError("--arrivals trace: every request of the trace has the same ts, so the trace has no "
                           "arrival pattern; use --arrivals poisson --rate QPS")
    if spec.rate is not None:
        return offsets * ((n - 1) / spec.rate / span) if n > 1 else offsets
    return offsets / (spec.speed or 1.0)


def check_slo(slo_ms: float) -> float:
    """A latency objective must be a positive number of milliseconds."""
    if not (math.isfinite(slo_ms) and slo_ms > 0):
        raise MtbenchError(f"--slo-ms must be a positive number of milliseconds, got {slo_ms}")
    return float(slo_ms)
