"""Host<->GPU transfers: a load stream with one event per layer, and a write-back stream.

On CUDA (asynchronous mode):
- loads run on `load_stream`; after layer l's copies of every job in the batch, event `layer_ready[l]`
  is recorded. The forward calls `LoadHandle.wait_layer(l)` just before layer l's attention, which
  makes the compute stream (not the host) wait on that event, so layer l+1 moves while l computes.
- write-backs (pool pages -> host extents) run on `writeback_stream`, after the compute stream's
  work so far (they read pages the forward just filled); `WritebackHandle.done()` polls the event:
  an entry counts as on the host only once it returns True.
- `fence(event)` makes both side streams wait on a compute-stream event before their next copies,
  so a page or extent is never overwritten while earlier compute may still read it.
With `sync=True` (the synchronous baseline) every copy is blocking and issued on the current stream.
On the CPU there are no streams or events: copies happen when issued and handles are complete.

Failures: `fault_hook(job, direction)` (tests inject failures with it) and any RuntimeError while
preparing a job (e.g. no memory for its staging buffer) drop that job from the transfer; the caller
gets the failed keys back and recomputes those requests (counted as transfer fallbacks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mtbench.cache.host import HostArena
from mtbench.cache.layouts import HostLayout, TransferJob
from mtbench.cache.pool import PagedKVPool


class TransferFailed(RuntimeError):
    """A copy could not be issued; the entry is recomputed instead."""


FaultHook = Callable[[TransferJob, str], None]


@dataclass
class LoadHandle:
    """The loads of one batch: per-layer readiness and the jobs whose copies were issued."""

    jobs: list[TransferJob]
    failed: list[TransferJob]
    layer_ready: list[torch.cuda.Event] | None  # None on the CPU / in sync mode (already complete)
    bytes_moved: int
    issue_seconds: float = 0.0  # host time spent issuing (on the CPU: the copies themselves)

    def wait_layer(self, layer: int, stalls: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> None:
        """Make the current stream wait for layer `layer` (device-side); appends a (before, after)
        pair of timing events to `stalls`, whose elapsed time is how long the stream stalled."""
        if self.layer_ready is None or self.layer_ready[layer].query():
            return
        stream = torch.cuda.current_stream()
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before.record(stream)
        stream.wait_event(self.layer_ready[layer])
        after.record(stream)
        stalls.append((before, after))

    def done(self) -> bool:
        return self.layer_ready is None or self.layer_ready[-1].query()

    def wait_host(self, timeout_s: float) -> bool:
        """Block the host until every copy completed or `timeout_s` passed; True when complete."""
        deadline = time.perf_counter() + timeout_s
        while not self.done():
            if time.perf_counter() > deadline:
                return False
            time.sleep(50e-6)
        return True


@dataclass
class WritebackHandle:
    job: TransferJob
    event: torch.cuda.Event | None
    bytes_moved: int

    def done(self) -> bool:
        return self.event is None or self.event.query()


class TransferEngine:
    """Issues the copies of one layout between one pool and one host arena."""

    def __init__(self, pool: PagedKVPool, arena: HostArena, layout: HostLayout, sync: bool = False,
                 fault_hook: FaultHook | None = None) -> None:
        self.pool, self.arena, self.layout = pool, arena, layout
        layout.arena = arena
        self.sync = sync
        self.fault_hook = fault_hook
        self.asynchronous = pool.device.type == "cuda" and not sync
        self.load_stream = torch.cuda.Stream(pool.device) if self.asynchronous else None
        self.writeback_stream = torch.cuda.Stream(pool.device) if self.asynchronous else None

    def _stream_context(self, stream: torch.cuda.Stream | None):
        return torch.cuda.stream(stream) if stream is not None else _NullContext()

    def fence(self, event: torch.cuda.Event | None) -> None:
        """Later loads and write-backs start only after `event` (recorded on the compute stream)."""
        if event is None or not self.asynchronous:
            return
        self.load_stream.wait_event(event)
        self.writeback_stream.wait_event(event)

    def _synchronize_copies(self) -> None:
        if self.sync and self.pool.device.type == "cuda":
            torch.cuda.current_stream().synchronize()

    def _prepared(self, jobs: Sequence[TransferJob], direction: str) -> tuple[list[TransferJob], list[TransferJob]]:
        """Jobs that may be issued, and those that failed (the fault hook refused them)."""
        ready, failed = [], []
        for job in jobs:
            try:
                if self.fault_hook is not None:
                    self.fault_hook(job, direction)
                ready.append(job)
            except (TransferFailed, RuntimeError):
                failed.append(job)
        return ready, failed

    def load(self, jobs: Sequence[TransferJob]) -> LoadHandle:
        """Issue the host->pool copies of a batch, layer-major, recording one event per layer."""
        layers = self.pool.shape.layers
        non_blocking = self.asynchronous
        started = time.perf_counter()
        with self._stream_context(self.load_stream):
            ready, failed = self._prepared(jobs, "load")
            views = [self.layout.row_views(self.arena, job.placement) for job in ready]
            events = [torch.cuda.Event() for _ in range(layers)] if self.asynchronous else None

            def layer_done(layer: int) -> None:
                if events is not None:
                    events[layer].record(self.load_stream)
                self._synchronize_copies()

            self.layout.load_layers(ready, views, self.pool, non_blocking, layer_done)
        moved = sum(self.pool.shape.bytes_per_token * job.placement.n_tokens for job in ready)
        return LoadHandle(jobs=ready, failed=failed, layer_ready=events, bytes_moved=moved,
                          issue_seconds=time.perf_counter() - started)

    def store_many(self, jobs: Sequence[TransferJob], after: torch.cuda.Event | None = None) -> list[WritebackHandle | None]:
        """Issue the pool->host copies of several entries (after `after`), as one batched transfer where
        the layout allows it; one handle per job, None for a job that could not be issued."""
        with self._stream_context(self.writeback_stream):
            ready, _ = self._prepared(jobs, "store")
            if not ready:
                return [None] * len(jobs)
            if after is not None and self.asynchronous:
                self.writeback_stream.wait_event(after)
            views = [self.layout.row_views(self.arena, job.placement) for job in ready]
            self.layout.store_many(ready, views, self.pool, self.asynchronous)
            event = None
            if self.asynchronous:
                event = torch.cuda.Event()
                event.record(self.writeback_stream)
            self._synchronize_copies()
        per_token = self.pool.shape.bytes_per_token
        handles = {id(job): WritebackHandle(job=job, event=event, bytes_moved=per_token * job.placement.n_tokens)
                   for job in ready}
        return [handles.get(id(job)) for job in jobs]

    def store(self, job: TransferJob, after: torch.cuda.Event | None = None) -> WritebackHandle | None:
        """`store_many` of one job."""
        return self.store_many([job], after)[0]


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
