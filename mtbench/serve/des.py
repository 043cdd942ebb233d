"""Discrete-event simulation of one server: arrivals -> dynamic batcher -> one batch at a time.

The only events that matter for a single FIFO server with a dynamic batcher are batch closes and
batch completions, so the clock jumps from one batch to the next: the batcher
(`mtbench.serve.batcher`) closes the batch whose first request is the head of the queue given when
the server is free, the batch is served for `service_ms(start, end)`, and the server is free again at
its finish. Per-request work is vectorised ahead of the loop (the service time of any slice is an O(1)
difference of prefix sums, `BatchCost`), so the loop costs a few microseconds per batch.

Plain function API (`serve_queue`): arrival times + a service-time function of a FIFO slice ->
per-request start and finish times (a `Timeline`). The fleet layer runs one per replica.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mtbench.serve.batcher import BatcherConfig, DynamicBatcher
from mtbench.serve.stats import Timeline
from mtbench.sim.costmodel import CostModel

ServiceFn = Callable[[int, int], float]  # (start, end) of a FIFO slice -> service time in ms


def serve_queue(arrivals: np.ndarray, service_ms: ServiceFn, batcher: BatcherConfig,
                tokens: np.ndarray | None = None) -> Timeline:
    """Serve requests arriving at `arrivals` (seconds, non-decreasing) one batch at a time."""
    dynamic = DynamicBatcher(arrivals, tokens, batcher)
    n = dynamic.n
    start = np.empty(n)
    finish = np.empty(n)
    server_free = np.empty(n)
    free, head = -np.inf, 0
    close = dynamic.close
    while head < n:
        end, begin = close(head, free)
        done = begin + service_ms(head, end) / 1e3
        start[head:end] = begin
        finish[head:end] = done
        server_free[head:end] = free
        free, head = done, end
    return Timeline(np.asarray(arrivals, dtype=np.float64), start, finish, server_free)


def closed_loop_rate(n: int, service_ms: ServiceFn, max_batch: int) -> float:
    """Requests/s of closed-loop serving (next batch of `max_batch` as soon as the last is done)."""
    timeline = serve_queue(np.zeros(n), service_ms, BatcherConfig(max_batch=max_batch, max_wait_ms=0.0))
    return n / float(timeline.finish[-1]) if n else 0.0


@dataclass
class BatchCost:
    """Service time of a FIFO slice of requests, as the transfer pipeline serves one batch:

        batch_overhead_ms + C + exposed(H, C),   C = sum of compute_ms, H = sum of h2d_ms over the slice

    where `exposed` is `CostModel.exposed_ms` (copies hidden under the batch's compute, layer by layer).
    `batch_overhead_ms` is a fixed cost per batch (launches and host work not proportional to
    requests; 0 keeps the cost model's per-request view). Prefix sums make every call O(1).
    """

    compute_ms: np.ndarray
    h2d_ms: np.ndarray
    cost: CostModel
    batch_overhead_ms: float = 0.0
    _compute: list[float] = field(init=False, repr=False)
    _h2d: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._compute = np.concatenate([[0.0], np.cumsum(self.compute_ms, dtype=np.float64)]).tolist()
        self._h2d = np.concatenate([[0.0], np.cumsum(self.h2d_ms, dtype=np.float64)]).tolist()

    def __call__(self, start: int, end: int) -> float:
        compute = self._compute[end] - self._compute[start]
        return self.batch_overhead_ms + compute + self.cost.exposed_ms(self._h2d[end] - self._h2d[start], compute)
