"""Open-loop serving on the real cache and model: requests arrive in real time, whether or not the
GPU is free, and wait in a queue for the dynamic batcher.

- `LoadGenerator`: a thread that releases request i at t0 + arrival[i] on the wall clock; it never
  waits for the server.
- `OpenLoopDriver`: the replay engine's `BatchFeed`. When the server is free it closes the next batch
  with `DynamicBatcher` (the same rules as the simulator) and waits, in real time, until the batch
  closes and its requests were released; a batch that is already full while the previous one runs is
  handed out early, so the engine plans it then and its host->GPU loads overlap the running batch
  (the queue is the cache's lookahead). A batch is finished when its end marker completed: on CUDA
  the driver synchronises the batch's end event and reads the host clock (the scores are then on
  the device and their small copy to the host is issued next), on the CPU it is the end time itself.
- Warm-up (`ReplayOptions.warmup` requests) fills the cache before the clock starts, exactly as the
  simulator does it (`mtbench.serve.des`): those requests are all queued at once and served in full
  batches, and the load generator starts when the last of them finished (request `warmup` arrives at
  0). A cold cache's backlog (misses are slow) thus never spills into the timed requests' latency.
- Latency of a request = its batch's finish - its scheduled arrival (so a late load generator never
  hides queueing); the records get `arrival_s`, `start_s`, `finish_s`, `service_ms` (the batch's
  device time), `clock_origin_s` (t0 on `time.perf_counter`, the host's monotonic clock, so samples
  another process took on that clock line up with the batches) and `latency_ms` becomes the open-loop
  latency; the run's row gets the serving fields of `mtbench.serve.stats` and `arrival_lag_ms_max`
  (how late the generator released a request).
"""

from __future__ import annotations

import bisect
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtbench.replay.batching import BATCH_COLUMNS, TraceBatch
from mtbench.replay.engine import ReplayOptions, RunResult
from mtbench.serve.arrivals import arrival_times
from mtbench.serve.batcher import BatcherConfig, DynamicBatcher
from mtbench.serve.des import warmup_batcher
from mtbench.serve.options import ServingOptions
from mtbench.serve.stats import Timeline, serving_stats
from mtbench.trace import Trace, open_trace

POLL_S = 0.05  # longest sleep of the load generator, so a stop request is seen quickly


class LoadGenerator:
    """Releases request i at t0 + arrivals[i] (seconds, wall clock) from its own thread.

    `released` counts the requests released so far (a prefix: arrivals are sorted); `lag_s[i]` is how
    late request i was released. `released` only grows, and only this thread writes it. While it runs
    the garbage collector is off (`start`); `stop` restores it.

    The interpreter's thread switch interval is left as it is (5 ms by default). A shorter one (0.5 ms
    until 2026-12-01) makes every release a forced GIL hand-over in the middle of the server's host
    work, each waiting for this thread to be scheduled and back: on the H200 host that added about 0.8
    ms to every small open-loop batch (BENCHMARKS.md section 12), a cost no calibration replay pays.
    A release the server's host work holds back changes nothing the server decides meanwhile: it
    yields the GIL while it waits for requests (`wait`) and at each device synchronisation.
    """

    def __init__(self, arrivals: np.ndarray) -> None:
        self.arrivals = arrivals
        self.released = 0
        self.lag_s = np.zeros(len(arrivals))
        self.t0 = 0.0
        self.started = False
        self._restore_gc: bool | None = None  # whether gc was enabled, while it is off
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mtbench-load-generator", daemon=True)

    def start(self) -> float:
        """Start releasing now; returns t0. Until `stop` the cyclic garbage collector is off, after one
        full collection and `gc.freeze()`: a collection of the oldest generation walks every object of
        the process (the model, the cache's maps, the records so far): up to 79 ms on the development
        CPU, and one timed batch on the H200 took 209 ms instead of 10 (reports/BENCHMARKS.md, section
        10). Latency-critical Python servers do the same; reference counting still frees everything
        without cycles."""
        self._restore_gc = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()
        self.t0, self.started = time.perf_counter(), True
        self._thread.start()
        return self.t0

    def stop(self) -> None:
        """Stop releasing and restore the interpreter (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._restore_gc is not None:
            gc.unfreeze()
            if self._restore_gc:
                gc.enable()
            self._restore_gc = None

    def _run(self) -> None:
        arrivals, n, head = self.arrivals.tolist(), len(self.arrivals), 0
        while head < n and not self._stop.is_set():
            now = time.perf_counter() - self.t0
            if arrivals[head] > now:
                time.sleep(min(arrivals[head] - now, POLL_S))
                continue
            end = bisect.bisect_right(arrivals, now, lo=head)
            self.lag_s[head:end] = now - self.arrivals[head:end]
            self.released = end
            head = end

    def wait(self, count: int, until: float) -> None:
        """Return once `count` requests were released and the clock reached t0 + until. The server
        thread polls, yielding the GIL at each turn, instead of sleeping: after a sleep of 20 ms or
        more its CPU core has dropped into an idle state, and the next batch's host work (planning,
        kernel launches) ran up to 7 ms slower on the H200 host (reports/BENCHMARKS.md, section 9). A
        latency-critical server busy-polls for the same reason."""
        t0, clock = self.t0, time.perf_counter
        while self.released < count or clock() - t0 < until:
            time.sleep(0)


class OpenLoopDriver:
    """Feeds the replay engine batches of requests that arrive in real time (see module docstring).

    Data: the replayed requests' columns in trace (= FIFO) order; the warm-up's batcher (its requests
    all queued at once) and the timed requests' batcher over their arrival times (the first timed
    request at 0); per request `arrival_s`/`start_s`/`finish_s`/`free_s` (seconds since t0, the start of
    the timed requests' clock: arrival, its batch's start and finish, and when the server became free
    before that batch), filled as batches are served.
    Invariant: batches are handed out in FIFO order, each once, none across the warm-up's end; `head`
    is the first request not yet handed out; `early` is a batch handed out by `ahead` and not yet by
    `after`; the load generator starts when the last warm-up batch finished.
    """

    def __init__(self, columns: dict[str, np.ndarray], arrivals: np.ndarray, batcher: BatcherConfig,
                 slo_ms: float, description: str, pipelined: bool = True, warmup: int = 0) -> None:
        self.columns = columns
        n = len(arrivals)
        self.n, self.warmup = n, min(max(warmup, 0), n)
        tokens = columns["n_static"] + columns["n_rt"] + columns["n_cand"]
        timed_arrivals = np.asarray(arrivals[self.warmup:], dtype=np.float64)
        timed_arrivals = timed_arrivals - (timed_arrivals[0] if len(timed_arrivals) else 0.0)
        self.cold = DynamicBatcher(np.zeros(self.warmup), tokens[: self.warmup], warmup_batcher(batcher))
        self.batcher = DynamicBatcher(timed_arrivals, tokens[self.warmup:], batcher)
        self.config, self.slo_ms, self.description, self.pipelined = batcher, slo_ms, description, pipelined
        self.generator = LoadGenerator(timed_arrivals)
        self.arrival_s = np.concatenate([np.full(self.warmup, np.nan), timed_arrivals])
        self.start_s, self.finish_s, self.free_s = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        self.head, self.number, self.free_at = 0, 0, -np.inf
        self.early: TraceBatch | None = None
        self._warm_began = 0.0

    def _now(self) -> float:
        return time.perf_counter() - self.generator.t0

    def _take(self, end: int) -> TraceBatch:
        members = slice(self.head, end)
        batch = TraceBatch(self.number, np.arange(self.head, end, dtype=np.int64),
                           *(self.columns[c][members] for c in BATCH_COLUMNS))
        self.head, self.number = end, self.number + 1
        return batch

    def ahead(self) -> TraceBatch | None:
        """The next batch, handed out now if it is already full (the simulator's `early` rule)."""
        if not self.pipelined or self.early is not None or self.head >= self.n:
            return None
        if self.head < self.warmup:
            batcher, first, offset = self.cold, self.head, 0
        elif self.generator.started:
            batcher, first, offset = self.batcher, self.head - self.warmup, self.warmup
        else:
            return None
        room = batcher.room(first)
        released = room if batcher is self.cold else self.generator.released
        if released >= room and batcher.full_at(first, room) <= self._now():
            self.early = self._take(offset + room)
        return self.early

    def after(self, done: TraceBatch | None, end: object) -> TraceBatch | None:
        if done is None:
            self._warm_began = time.perf_counter()
        else:
            self.free_at = self._finished_at(end)
            self.finish_s[done.request_index] = self.free_at
        if self.early is not None:
            batch, self.early = self.early, None
            began = self.free_at
        elif self.head < self.warmup:
            batch, began = self._take(self.cold.room(self.head)), self._now()
        elif self.head < self.n:
            if not self.generator.started:
                self._start_clock()
            last, closes = self.batcher.close(self.head - self.warmup, self._now())
            self.generator.wait(last, closes)
            batch, began = self._take(self.warmup + last), self._now()
        else:
            self.generator.stop()
            return None
        self.start_s[batch.request_index] = began
        self.free_s[batch.request_index] = self.free_at
        return batch

    def _start_clock(self) -> None:
        """Start the timed requests' clock now: the warm-up's times (absolute until now) move onto it,
        its requests arriving when it began; the server is idle at 0, as in `serve_queue`."""
        t0 = self.generator.start()
        warm = slice(0, self.warmup)
        for times in (self.start_s, self.finish_s, self.free_s):
            times[warm] -= t0
        self.arrival_s[warm] = self._warm_began - t0
        self.free_at = -np.inf

    def _finished_at(self, end: object) -> float:
        if isinstance(end, float):  # the CPU clock's marker is the perf_counter time itself
            return end - self.generator.t0
        end.synchronize()
        return self._now()

    def close(self) -> None:
        self.generator.stop()

    def finish(self, result: RunResult) -> None:
        """Open-loop latency columns in the records and serving fields in the row (module docstring)."""
        records = result.records.sort_values("request_index", kind="stable").reset_index(drop=True)
        index = records["request_index"].to_numpy()
        records["service_ms"] = records["latency_ms"]
        records["arrival_s"] = self.arrival_s[index]
        records["start_s"] = self.start_s[index]
        records["finish_s"] = self.finish_s[index]
        records["clock_origin_s"] = self.generator.t0
        records["latency_ms"] = (records["finish_s"] - records["arrival_s"]) * 1e3
        timed = ~records["warmup"].to_numpy(dtype=bool)
        timeline = Timeline(*(records[c].to_numpy(dtype=float)[timed] for c in ("arrival_s", "start_s", "finish_s")),
                            self.free_s[index][timed])
        result.records = records
        result.row.update(serving_stats(timeline, records["outcome"].to_numpy()[timed], self.slo_ms,
                                        self.config.max_batch))
        result.row["arrivals"] = self.description
        result.row["arrival_lag_ms_max"] = float(self.generator.lag_s.max() * 1e3) if len(index) else 0.0


def replay_columns(trace: Trace, max_requests: int | None) -> dict[str, np.ndarray]:
    """The batch columns of the replayed requests (the first max_requests), in trace order."""
    columns = trace.arrays(list(BATCH_COLUMNS))
    if max_requests is not None:
        columns = {name: values[:max_requests] for name, values in columns.items()}
    return columns


def saturated_feed(trace: Trace, options: ReplayOptions, batcher: BatcherConfig, slo_ms: float,
                   pipelined: bool = True) -> OpenLoopDriver:
    """Every request queued at time 0: full batches back to back, served exactly as the open-loop server
    serves them (each batch's end synchronised before the next is issued; without `pipelined` a batch
    is also planned only then, as a batch that was not full is). Its requests/s is the server's
    throughput."""
    columns = replay_columns(trace, options.max_requests)
    saturated = replace(batcher, max_batch=options.batch_size, max_wait_ms=0.0)
    return OpenLoopDriver(columns, np.zeros(len(columns["ts"])), saturated, slo_ms, "saturated", pipelined,
                          options.warmup)


def open_loop_feeds(serving: ServingOptions, options: ReplayOptions) -> Callable[[Trace], OpenLoopDriver]:
    """A factory of one fresh driver per replay run (every run sees the same arrival schedule)."""
    batcher = replace(serving.batcher, max_batch=options.batch_size)

    def make(trace: Trace) -> OpenLoopDriver:
        columns = replay_columns(trace, options.max_requests)
        arrivals = arrival_times(columns["ts"], serving.arrivals)
        return OpenLoopDriver(columns, arrivals, batcher, serving.slo_ms, serving.arrivals.describe(),
                              warmup=options.warmup)

    return make


def check_open_loop(trace_path: Path, serving: ServingOptions, max_requests: int | None) -> None:
    """Refuse arrival settings the trace cannot support (e.g. trace arrivals on equal ts) up front."""
    ts = open_trace(trace_path).arrays(["ts"])["ts"]
    arrival_times(ts[:max_requests] if max_requests is not None else ts, serving.arrivals)
