"""Discrete-event simulation of one server: arrivals -> dynamic batcher -> one batch at a time.

The only events that matter for a single FIFO server with a dynamic batcher are batch closes and
batch completions, so the clock jumps from one batch to the next: the batcher
(`mtbench.serve.batcher`) closes the batch whose first request is the head of the queue given when
the server is free, the batch is served for `service_ms(start, end, early)`, and the server is free
again at its finish. `early` says the batch was full before the previous batch started, so the real
server planned it while the previous one ran (its lookahead; `mtbench.serve.openloop` hands such a
batch out at once); the service function (`mtbench.serve.service.CacheService`) decides and prices
it accordingly.

Warm-up: the first `warmup` requests fill the cache before the clock starts. They are all queued at
once and served in full batches (closed loop, never merged with later requests); the arrival process
starts when the last of them finishes, with request `warmup` arriving at time 0. The real open-loop
server (`mtbench.serve.openloop`) does the same, so a cold cache's backlog never leaks into the timed
requests' latency, and both measure the same steady state.

Plain function API (`serve_queue`): arrival times + a service-time function of a FIFO slice ->
per-request start and finish times (a `Timeline`; warm-up requests before time 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from mtbench.serve.batcher import BatcherConfig, DynamicBatcher
from mtbench.serve.stats import Timeline

ServiceFn = Callable[[int, int, bool], float]  # (start, end, early) of a FIFO slice -> service time in ms


def serve_queue(arrivals: np.ndarray, service_ms: ServiceFn, batcher: BatcherConfig,
                tokens: np.ndarray | None = None, warmup: int = 0) -> Timeline:
    """Serve requests arriving at `arrivals` (seconds, non-decreasing) one batch at a time, the first
    `warmup` of them before the clock starts (module docstring): request i >= warmup arrives at
    arrivals[i] - arrivals[warmup]."""
    arrivals = np.asarray(arrivals, dtype=np.float64)
    warmup = min(max(warmup, 0), len(arrivals))
    if warmup == 0:
        return _serve(arrivals, service_ms, batcher, tokens)
    cold = _serve(np.zeros(warmup), service_ms, warmup_batcher(batcher), None if tokens is None else tokens[:warmup])
    shift = float(cold.finish[-1])
    timed_arrivals = arrivals[warmup:] - (arrivals[warmup] if warmup < len(arrivals) else 0.0)

    def timed_service(start: int, end: int, early: bool) -> float:
        return service_ms(start + warmup, end + warmup, early)

    timed = _serve(timed_arrivals, timed_service, batcher, None if tokens is None else tokens[warmup:])
    return Timeline(*(np.concatenate([getattr(cold, name) - shift, getattr(timed, name)])
                      for name in ("arrival", "start", "finish", "server_free")))


def warmup_batcher(batcher: BatcherConfig) -> BatcherConfig:
    """The batcher of the warm-up requests (all queued at once): full batches, no waiting."""
    return replace(batcher, max_wait_ms=0.0)


def _serve(arrivals: np.ndarray, service_ms: ServiceFn, batcher: BatcherConfig, tokens: np.ndarray | None) -> Timeline:
    dynamic = DynamicBatcher(arrivals, tokens, batcher)
    n = dynamic.n
    start = np.empty(n)
    finish = np.empty(n)
    server_free = np.empty(n)
    free, head, previous_start = -np.inf, 0, -math.inf
    close, full_at, room = dynamic.close, dynamic.full_at, dynamic.room
    while head < n:
        early = full_at(head, room(head)) <= previous_start
        end, begin = close(head, free)
        done = begin + service_ms(head, end, early) / 1e3
        start[head:end] = begin
        finish[head:end] = done
        server_free[head:end] = free
        free, head, previous_start = done, end, begin
    return Timeline(np.asarray(arrivals, dtype=np.float64), start, finish, server_free)


def closed_loop_rate(n: int, service_ms: ServiceFn, max_batch: int, warmup: int = 0) -> float:
    """Requests/s of closed-loop serving (next batch of `max_batch` as soon as the last is done) of the
    requests after `warmup` (served first, untimed)."""
    warmup = min(max(warmup, 0), n)
    timeline = serve_queue(np.zeros(n), service_ms, BatcherConfig(max_batch=max_batch, max_wait_ms=0.0), warmup=warmup)
    return (n - warmup) / float(timeline.finish[-1]) if n > warmup and timeline.finish[-1] > 0 else 0.0
