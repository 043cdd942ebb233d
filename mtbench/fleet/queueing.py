"""Per-replica latency estimate: one FIFO server per replica, requests served one at a time.

A request arriving at a_i (ms) on a replica waits for the work queued before it and then takes its
service time s_i (the cost model's time for its outcome):
    d_i = max(a_i, d_{i-1}) + s_i,   latency_i = d_i - a_i            (Lindley's recursion)
`fifo_latency` evaluates it for a whole replica at once: with S the inclusive running sum of s,
d_i = S_i + max_{k<=i}(a_k - S_k + s_k). `FifoClock` is the same server one request at a time (the
residency router's load signal). This is the seam for the serving clock of issue 13: its discrete-event
simulator (dynamic batching) replaces `fifo_latency` when it lands.
"""

from __future__ import annotations

import numpy as np


def fifo_latency(arrival_ms: np.ndarray, service_ms: np.ndarray) -> np.ndarray:
    """Latency (ms) of every request of one FIFO server; arrivals must be non-decreasing."""
    arrival = np.asarray(arrival_ms, dtype=np.float64)
    service = np.asarray(service_ms, dtype=np.float64)
    if arrival.size == 0:
        return np.empty(0, dtype=np.float64)
    running = np.cumsum(service)
    departure = running + np.maximum.accumulate(arrival - running + service)
    return departure - arrival


class FifoClock:
    """One FIFO server: `free_at` is when the work queued so far ends (ms)."""

    def __init__(self) -> None:
        self.free_at = 0.0

    def backlog_ms(self, now_ms: float) -> float:
        """Work still queued at `now_ms`."""
        return max(0.0, self.free_at - now_ms)

    def serve(self, arrival_ms: float, service_ms: float) -> float:
        """Queue a request; returns its latency."""
        self.free_at = max(self.free_at, arrival_ms) + service_ms
        return self.free_at - arrival_ms
