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
- issuing a batch's loads (~100 copy calls for MTGR-large: one per entry per layer) is host work on the
  replay's critical path, so a loader thread issues them (`load_thread`, on by default with CUDA):
  `load` returns at once and the handle's `issued[l]` is set once layer l's copies and event are
  enqueued. PyTorch releases the GIL inside its ops, so the issuing overlaps the main thread's work.
  Everything that reads a handle's events waits for `issued` first (`wait_layer`, `done`), and
  `fence` waits for the loads being issued, so stream order is what it would be without the thread.
With `sync=True` (the synchronous baseline) every copy is blocking and issued on the current stream.
On the CPU there are no streams or events: copies happen when issued and handles are complete.

Failures: `fault_hook(job, direction)` (tests inject failures with it) and any RuntimeError while
preparing a job (e.g. no memory for its staging buffer) drop that job from the transfer; the caller
gets the failed keys back and recomputes those requests (counted as transfer fallbacks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from mtbench.cache.host import Fp8RowArena, HostArena
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
    layer_ready: list[torch.cuda.Event] | None  # None on the CPU / in sync mode (complete once issued)
    bytes_moved: int
    issue_seconds: float = 0.0  # host time spent issuing on the caller's thread (on the CPU: the copies)
    issued: list[threading.Event] | None = None  # per layer, set by the loader thread; None = issued already
    error: BaseException | None = None  # what stopped the loader thread, re-raised to whoever waits

    def _wait_issued(self, layer: int) -> None:
        if self.issued is not None:
            self.issued[layer].wait()
            if self.error is not None:
                raise RuntimeError("issuing host->GPU loads failed") from self.error

    def wait_layer(self, layer: int, stalls: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> None:
        """Make the current stream wait for layer `layer` (device-side); appends a (before, after)
        pair of timing events to `stalls`, whose elapsed time is how long the stream stalled."""
        self._wait_issued(layer)
        if self.layer_ready is None or self.layer_ready[layer].query():
            return
        stream = torch.cuda.current_stream()
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before.record(stream)
        stream.wait_event(self.layer_ready[layer])
        after.record(stream)
        stalls.append((before, after))

    def done(self) -> bool:
        if self.issued is not None and not self.issued[-1].is_set():
            return False
        return self.layer_ready is None or self.layer_ready[-1].query()

    def synchronize(self) -> None:
        """Block the host until every copy of the batch has completed."""
        if self.issued is not None:
            self._wait_issued(len(self.issued) - 1)  # layers are issued in order
        if self.layer_ready is not None:
            self.layer_ready[-1].synchronize()

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

    def __init__(self, pool: PagedKVPool, arena: HostArena | Fp8RowArena, layout: HostLayout, sync: bool = False,
                 fault_hook: FaultHook | None = None, load_thread: bool | None = None) -> None:
        """`load_thread`: issue loads from a loader thread (None: when copies are asynchronous, on CUDA)."""
        self.pool, self.arena, self.layout = pool, arena, layout
        layout.arena = arena
        self.sync = sync
        self.fault_hook = fault_hook
        self.asynchronous = pool.device.type == "cuda" and not sync
        self.load_stream = torch.cuda.Stream(pool.device) if self.asynchronous else None
        self.writeback_stream = torch.cuda.Stream(pool.device) if self.asynchronous else None
        threaded = self.asynchronous if load_thread is None else load_thread and not sync
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtbench-loads") if threaded else None
        self._issuing: Future | None = None

    def _stream_context(self, stream: torch.cuda.Stream | None):
        return torch.cuda.stream(stream) if stream is not None else _NullContext()

    def fence(self, event: torch.cuda.Event | None) -> None:
        """Later loads and write-backs start only after `event` (recorded on the compute stream)."""
        if event is None or not self.asynchronous:
            return
        self.finish_issuing()
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

    def load(self, jobs: Sequence[TransferJob], after: Sequence[torch.cuda.Event] = ()) -> LoadHandle:
        """Issue the host->pool copies of a batch, layer-major, recording one event per layer (from the
        loader thread when there is one: the handle's `issued` tells when), after the events `after`
        (copies still writing the host extents or reading the pages)."""
        layers = self.pool.shape.layers
        started = time.perf_counter()
        ready, failed = self._prepared(jobs, "load")
        views = [self.layout.row_views(self.arena, job.placement) for job in ready]
        events = [torch.cuda.Event() for _ in range(layers)] if self.asynchronous else None
        moved = sum(self.layout.bytes_per_token * job.placement.n_tokens for job in ready)
        handle = LoadHandle(jobs=ready, failed=failed, layer_ready=events, bytes_moved=moved)
        self.finish_issuing()  # one batch's loads at a time, in order on the load stream
        if self.asynchronous:
            for event in after:
                self.load_stream.wait_event(event)
        if self._loader is None:
            self._issue(handle, views)
        else:
            handle.issued = [threading.Event() for _ in range(layers)]
            self._issuing = self._loader.submit(self._issue, handle, views)
        handle.issue_seconds = time.perf_counter() - started
        return handle

    def finish_issuing(self) -> None:
        """Wait until the loader thread has enqueued every load it was given (not until they complete)."""
        if self._issuing is not None:
            issuing, self._issuing = self._issuing, None
            issuing.result()

    def _issue(self, handle: LoadHandle, views: list[list[torch.Tensor]]) -> None:
        def layer_done(layer: int) -> None:
            if handle.layer_ready is not None:
                handle.layer_ready[layer].record(self.load_stream)
            self._synchronize_copies()
            if handle.issued is not None:
                handle.issued[layer].set()

        try:
            with self._stream_context(self.load_stream):
                self.layout.load_layers(handle.jobs, views, self.pool, self.asynchronous, layer_done)
        except BaseException as err:
            handle.error = err
            for flag in handle.issued or []:
                flag.set()
            raise

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
        per_token = self.layout.bytes_per_token
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
