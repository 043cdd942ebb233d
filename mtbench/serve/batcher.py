"""The dynamic batcher of a real inference server, as pure logic over arrival times.

A batch is a FIFO slice [start, end) of the requests. It can hold at most `max_batch` requests and at
most `max_tokens` tokens (the request's whole sequence, U+S+R+C: what a padded batch allocates; a
single request over the budget still forms a batch of one). Once the server is free and the queue
is not empty, the batch closes at the first of:
- it is full: the `max_batch`-th request arrived, its tokens reached the budget exactly, or the
  request that does not fit arrived;
- `max_wait_ms` after its first request arrived (a request that already waited longer closes the
  batch at once: the server takes what is queued).
The batch then starts at its close time, never before the server is free. Used unchanged by the
discrete-event simulator (`mtbench.serve.des`) and the real open-loop replay
(`mtbench.serve.openloop`), so both form exactly the same batches for the same arrivals and the
same "server free at" times.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError


@dataclass(frozen=True)
class BatcherConfig:
    """The batcher's three closing rules (see module docstring)."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_tokens: int | None = None

    def check(self) -> "BatcherConfig":
        if self.max_batch < 1:
            raise MtbenchError(f"--batch-size must be >= 1, got {self.max_batch}")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise MtbenchError(f"--max-wait-ms must be a finite number >= 0, got {self.max_wait_ms}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise MtbenchError(f"--max-batch-tokens must be >= 1, got {self.max_tokens}")
        return self


class DynamicBatcher:
    """Batches over fixed arrival times.

    Data: `arrivals` (seconds, non-decreasing, a Python list for fast scalar access) and
    `cum_tokens` (prefix sums of tokens per request, length n + 1). Invariant of every `close`:
    start < end <= start + max_batch, the batch's tokens fit the budget unless it is one request,
    every member arrived at or before the close time, and the close time is >= free_at.
    """

    def __init__(self, arrivals: np.ndarray, tokens: np.ndarray | None, config: BatcherConfig) -> None:
        arrivals = np.asarray(arrivals, dtype=np.float64)
        if len(arrivals) > 1 and np.any(np.diff(arrivals) < 0):
            raise MtbenchError("arrival times must be non-decreasing")
        self.config = config.check()
        self.n = len(arrivals)
        self.arrivals: list[float] = arrivals.tolist()
        counts = np.zeros(self.n, dtype=np.int64) if tokens is None else np.asarray(tokens, dtype=np.int64)
        self.cum_tokens: list[int] = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self.wait_s = config.max_wait_ms / 1e3

    def room(self, start: int) -> int:
        """End of the largest batch starting at `start` that the size and token rules allow."""
        end = min(self.n, start + self.config.max_batch)
        budget = self.config.max_tokens
        if budget is not None:
            fits = bisect.bisect_right(self.cum_tokens, self.cum_tokens[start] + budget, lo=start) - 1
            end = min(end, max(fits, start + 1))
        return end

    def full_at(self, start: int, end: int) -> float:
        """When the batch [start, end) (its largest allowed extent) is known to be full; inf if never."""
        budget = self.config.max_tokens
        if end - start == self.config.max_batch:
            return self.arrivals[end - 1]
        if budget is not None and self.cum_tokens[end] - self.cum_tokens[start] >= budget:
            return self.arrivals[end - 1]
        if end < self.n:  # stopped by the token budget: full when the request that does not fit arrives
            return self.arrivals[end]
        return math.inf

    def close(self, start: int, free_at: float) -> tuple[int, float]:
        """(end, close time) of the batch whose first request is `start`, the server free at `free_at`."""
        first = self.arrivals[start]
        room = self.room(start)
        ready = max(free_at, first)
        closes = max(ready, min(first + self.wait_s, self.full_at(start, room)))
        end = min(room, bisect.bisect_right(self.arrivals, closes, lo=start))
        return end, closes
