"""Serving statistics of one run, measured or simulated: tail latency, SLO attainment, goodput,
queue length over time and overload.

Input per request (FIFO order): arrival, start of its batch's service, and finish (scores on the
host), in seconds on one clock, plus its outcome name. Latency = finish - arrival. Of the wait
before service, `queueing` is the part while the server was busy with earlier batches and
`formation` the rest (the batch filling up while the server was idle).

Overload: a finite run of an overloaded server still has a p99, but a meaningless one (it grows
with the run's length). The run is called overloaded when its queue grows: the mean number of
waiting requests over the last quarter of the arrival window exceeds that of the second quarter by
more than max(2 x max_batch, 1% of the requests): a stable queue, however long, does not drift. Its
percentiles are then
reported as missing and `overloaded` is true.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p99_ms": 0.99, "p999_ms": 0.999}
OUTCOME_PERCENTILES = {"p50_ms": 0.50, "p99_ms": 0.99}
QUEUE_SAMPLES = 200


@dataclass(frozen=True)
class Timeline:
    """Per-request times (seconds) of one served run, requests in FIFO order."""

    arrival: np.ndarray
    start: np.ndarray
    finish: np.ndarray
    server_free: np.ndarray  # when the server became free before this request's batch began

    @property
    def latency_ms(self) -> np.ndarray:
        return (self.finish - self.arrival) * 1e3

    @property
    def queueing_ms(self) -> np.ndarray:
        busy_until = np.minimum(np.maximum(self.server_free, self.arrival), self.start)
        return (busy_until - self.arrival) * 1e3

    @property
    def formation_ms(self) -> np.ndarray:
        return (self.start - self.arrival) * 1e3 - self.queueing_ms

    @property
    def service_ms(self) -> np.ndarray:
        return (self.finish - self.start) * 1e3


def queue_length(timeline: Timeline, times: np.ndarray) -> np.ndarray:
    """Requests waiting (arrived, their batch not started) at each of `times`."""
    arrived = np.searchsorted(timeline.arrival, times, side="right")
    started = np.searchsorted(timeline.start, times, side="right")
    return arrived - started


def queue_curve(timeline: Timeline, samples: int = QUEUE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """(times, waiting requests) sampled evenly over the arrival window."""
    if not len(timeline.arrival):
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    times = np.linspace(timeline.arrival[0], timeline.arrival[-1], samples)
    return times, queue_length(timeline, times)


def is_overloaded(timeline: Timeline, max_batch: int) -> tuple[bool, float]:
    """(overloaded, growth in waiting requests from the second to the last quarter) (module docstring)."""
    _, queue = queue_curve(timeline)
    if len(queue) < 8:
        return False, 0.0
    quarter = len(queue) // 4
    second, last = float(queue[quarter:2 * quarter].mean()), float(queue[-quarter:].mean())
    growth = last - second
    threshold = max(2.0 * max_batch, 0.01 * len(timeline.arrival))
    return bool(growth > threshold), growth


def _quantile(values: np.ndarray, q: float) -> float | None:
    return float(np.quantile(values, q)) if len(values) else None


def serving_stats(timeline: Timeline, outcomes: np.ndarray, slo_ms: float, max_batch: int) -> dict:
    """The serving fields of a summary row (FORMAT.md): percentiles, SLO, goodput, queue, overload."""
    latency = timeline.latency_ms
    n = len(latency)
    overloaded, growth = is_overloaded(timeline, max_batch)
    row: dict = {name: (None if overloaded else _quantile(latency, q)) for name, q in PERCENTILES.items()}
    within = int(np.count_nonzero(latency <= slo_ms))
    elapsed = float(timeline.finish.max() - timeline.arrival.min()) if n else 0.0
    serving = float(timeline.finish.max() - timeline.start.min()) if n else 0.0  # first batch start to last finish
    span = float(timeline.arrival[-1] - timeline.arrival[0]) if n > 1 else 0.0
    _, queue = queue_curve(timeline)
    busy = _busy_seconds(timeline)
    row.update({
        "slo_ms": slo_ms, "slo_attainment": within / n if n else None,
        "goodput": within / elapsed if elapsed > 0 else None,
        "offered_rate": (n - 1) / span if span > 0 else None,
        "served_rate": n / serving if serving > 0 else None,
        "overloaded": overloaded, "queue_growth": growth,
        "queue_max": int(queue.max()) if len(queue) else 0, "queue_mean": float(queue.mean()) if len(queue) else 0.0,
        "utilization": busy / serving if serving > 0 else None,
        "queueing_ms_mean": float(timeline.queueing_ms.mean()) if n else None,
        "formation_ms_mean": float(timeline.formation_ms.mean()) if n else None,
        "service_ms_mean": float(timeline.service_ms.mean()) if n else None,
    })
    outcomes = np.asarray(outcomes)
    for outcome in ("gpu_hit", "host_hit", "miss"):
        chosen = latency[outcomes == outcome]
        for name, q in OUTCOME_PERCENTILES.items():
            row[f"{outcome}_{name}"] = None if overloaded else _quantile(chosen, q)
    return row


def _busy_seconds(timeline: Timeline) -> float:
    """Time the server spent serving batches (each batch counted once)."""
    if not len(timeline.start):
        return 0.0
    first = np.concatenate([[True], timeline.start[1:] != timeline.start[:-1]])
    return float(np.sum(timeline.finish[first] - timeline.start[first]))
