"""The real two-tier KV cache: the control plane (`cache.control`) plus a data plane of pool pages, host
extents and transfers. Every tier decision is the control plane's; this module only carries them out.

Per batch, the replay engine calls, in order:
1. `plan(requests, load_budget_bytes)` (for the *queued* batch when the pipeline looks ahead): the
   control plane decides the batch (outcomes, admissions, promotions, demotions, evictions) and calls
   this data plane back for each decision: new pool pages for entries the batch loads or computes,
   scratch pages (outside the tier's capacity, `PagedKVPool`) for entries the GPU tier cannot keep
   while two batches are pinned, host extents for demoted entries. At the end of `plan`, demotions
   (GPU evictions the host lacks) are copied to the host on the write-back stream, then the batch's
   host hits are loaded on the load stream (one event per layer), after those copies and after any
   write-back of the loaded entries still running (a host copy counts as on the host at once).
2. `refresh(plan)` just before the batch computes: failed loads fall back to recomputing the entry
   into its pages, timed-out ones to recomputing without storing (`transfer_fallbacks`); collects the
   loads (this or earlier batches) the batch's hits wait for, and makes the compute stream wait for
   demotions still reading pages the batch writes.
3. `pool_inputs(plan, row_offsets)`: the batch's page table, prefix lengths and the pool rows each
   computed static token is stored into; `wait_layer(plan, l)` inside the forward makes the compute
   stream wait for layer l of the loads.
4. `release(plan)` once the forward is issued: the control plane's host copies (write-through, or the
   scratch entries the GPU refused) go out on the write-back stream after the forward; counts, unpins,
   drops stale versions; fences the side streams.

Page and extent reuse is ordered by events, never by timing: pages freed while a copy still reads
them make later writers (compute and load streams) wait for that copy; extents are freed only by
decisions taken after every load reading them was waited for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mtbench.cache.control import (
    READS_CACHE, BatchDecisions, CacheStats, ControlConfig, ControlPlane, Key, MissKind, Outcome, ReloadCosts,
    Request, StoreDecision, TierSettings, require_fits,
)
from mtbench.cache.host import Fp8RowArena, HostArena
from mtbench.cache.layouts import HostPlacement, TransferJob, make_layout
from mtbench.cache.pool import KVShape, PagedKVPool
from mtbench.cache.transfer import FaultHook, LoadHandle, TransferEngine, WritebackHandle
from mtbench.errors import MtbenchError

CACHE_MODES = ("none", "gpu", "tiered")
HIT_OUTCOMES = tuple(outcome.label for outcome in READS_CACHE)  # the forward reads a prefix from the pool


@dataclass(frozen=True)
class CacheConfig:
    """Everything that decides how the cache behaves (one replay run).

    write_back / inclusive / append: the hierarchy (`cache.control.TierSettings`); write-back is the
    default of both the replay and `compare-policies`.
    """

    mode: str = "tiered"
    policy: str = "lru"
    gpu_capacity: int = 0
    host_capacity: int = 0
    layout: str = "hybrid"
    sync: bool = False
    host_fit: str = "first"
    transfer_timeout_s: float | None = None
    load_thread: bool | None = None  # issue loads from a loader thread (None: on CUDA unless sync); see transfer.py
    write_back: bool = True
    inclusive: bool = True
    append: bool = False
    host_kv: str | None = None  # the host tier's KV dtype: None = the pool's, "fp8" (lossy; cache.layouts)

    def __post_init__(self) -> None:
        if self.mode not in CACHE_MODES:
            raise MtbenchError(f"unknown cache mode {self.mode!r} (choose from {', '.join(CACHE_MODES)})")

    def control(self, shape: KVShape, costs: ReloadCosts | None = None) -> ControlConfig:
        """The control plane's configuration of this cache (the simulator builds the same one)."""
        host = self.host_capacity if self.mode == "tiered" else 0
        geometry = shape.host_geometry(self.layout, self.host_kv, host, self.host_fit) if host else None
        settings = TierSettings(write_back=self.write_back, inclusive=self.inclusive, append=self.append)
        return ControlConfig(self.policy, self.gpu_capacity, host, shape.sizer_for(self.host_kv), settings, geometry,
                             costs)


@dataclass
class GpuEntry:
    """Pool pages of an entry (one table for all layers) and the copies still using them."""

    n_tokens: int
    pages: list[int]
    load: LoadHandle | None = None
    writeback: WritebackHandle | None = None  # pending copy to the host reading these pages


@dataclass
class HostEntry:
    placement: HostPlacement
    writeback: WritebackHandle | None = None  # pending copy into these extents

    def pending(self) -> torch.cuda.Event | None:
        handle = self.writeback
        return handle.event if handle is not None and not handle.done() else None


@dataclass
class PoolReads:
    """One batch's pool I/O (host numpy int32): page table [B, W], cached prefix lengths [B], and for
    every computed row the K row of the pool it is stored into (-1: not stored)."""

    kv: torch.Tensor
    page_table: np.ndarray
    lengths: np.ndarray
    store_k_rows: np.ndarray


@dataclass
class BatchPlan:
    """The control plane's decisions for one batch plus what the data plane did for them."""

    decisions: BatchDecisions
    transient: dict[Key, GpuEntry] = field(default_factory=dict)  # scratch pages, this batch only
    load: LoadHandle | None = None
    waits: list[LoadHandle] = field(default_factory=list)  # loads (this or earlier batches) hits depend on
    page_waits: list = field(default_factory=list)  # copies reading pages this batch writes (CUDA events)
    stalls: list = field(default_factory=list)  # (before, after) CUDA events around each device-side wait
    load_seconds: float = 0.0  # host time issuing this batch's loads (the copies themselves on the CPU)
    load_budget: int | None = None  # the budget the batch was planned with (None: load every host hit)
    _loads: list[TransferJob] = field(default_factory=list)
    _load_after: list = field(default_factory=list)

    @property
    def requests(self) -> list[Request]:
        return self.decisions.requests

    @property
    def outcomes(self) -> list[str]:
        return self.decisions.labels

    @property
    def cached(self) -> list[int]:
        """Static tokens each request reads from the pool."""
        return self.decisions.cached

    def rows(self, *outcomes: str) -> list[int]:
        return [i for i, outcome in enumerate(self.outcomes) if outcome in outcomes]

    def stall_ms(self) -> float:
        """Device time the compute stream waited for this batch's loads (call once the batch finished)."""
        return sum(before.elapsed_time(after) for before, after in self.stalls)


class CacheManager:
    """Control plane + data plane (see the module docstring for the call protocol).

    Data-plane state: `gpu` (key -> GpuEntry, exactly the control plane's GPU keys), `host` (key ->
    HostEntry, exactly its host keys), the pool, the host arena (whose extent bookkeeping is the
    control plane's allocator), the transfer engine, and the scratch entries of released batches
    whose copies still run.
    """

    def __init__(self, config: CacheConfig, shape: KVShape, device: torch.device | str, max_entry_tokens: int,
                 fault_hook: FaultHook | None = None, scratch_entries: int = 0, costs: ReloadCosts | None = None) -> None:
        self.config = config
        self._shape = shape
        self.device = torch.device(device)
        self.gpu: dict[Key, GpuEntry] = {}
        self.host: dict[Key, HostEntry] = {}
        self.plane: ControlPlane | None = None
        self._pool: PagedKVPool | None = None
        self._arena: HostArena | Fp8RowArena | None = None
        self._engine: TransferEngine | None = None
        self._stats_when_off = CacheStats()
        self._building: BatchPlan | None = None
        self._demotions: list[TransferJob] = []
        self._releasing: list[tuple[TransferJob, GpuEntry]] = []
        self._current_release: BatchPlan | None = None
        self._scratch_in_use: list[GpuEntry] = []
        self._stand_in_kv: torch.Tensor | None = None
        if config.mode == "none":
            self.table_width = 0  # nothing is ever read (blank_reads)
            return
        control = config.control(shape, costs)
        sizer = control.sizer
        require_fits("GPU cache (--gpu-cache)", control.gpu_capacity, sizer.size_of(max_entry_tokens), max_entry_tokens)
        if control.host_capacity:
            require_fits("host cache (--host-cache)", control.host_capacity, sizer.host_size_of(max_entry_tokens),
                         max_entry_tokens)
        self.plane = ControlPlane(control, self)
        self.table_width = shape.pages_for(max_entry_tokens)
        # Scratch for two batches (the one computing and the one planned) of the longest entries.
        scratch = 2 * scratch_entries * self.table_width if control.host_capacity else 0
        self._pool = PagedKVPool(shape, config.gpu_capacity, self.device, scratch_pages=scratch)
        self._layout = make_layout(config.layout, shape, config.host_kv)
        if control.host_capacity:
            pin = self.device.type == "cuda"
            self._arena = (HostArena(control.host_capacity, shape.dtype, pin, config.host_fit, self.plane.extents)
                           if config.host_kv is None else
                           Fp8RowArena(control.host_capacity, shape.heads, shape.head_dim, pin, config.host_fit,
                                       self.plane.extents))
        self._engine = TransferEngine(self._pool, self._arena, self._layout, sync=config.sync,
                                      fault_hook=fault_hook, load_thread=config.load_thread)

    # ------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        """Whether there is a cache at all (mode none: every request recomputes)."""
        return self.plane is not None

    @property
    def tiered(self) -> bool:
        return self._arena is not None

    @property
    def stats(self) -> CacheStats:
        return self.plane.stats if self.plane is not None else self._stats_when_off

    @property
    def needs_next_use(self) -> bool:
        """Whether requests must carry their next use (the offline OPT policy)."""
        return self.plane is not None and self.plane.gpu.uses_next_use

    @property
    def gpu_used_bytes(self) -> int:
        return self.plane.gpu_used_bytes if self.plane is not None else 0

    @property
    def host_used_bytes(self) -> int:
        return self.plane.host_used_bytes if self.plane is not None else 0

    @property
    def scratch_bytes(self) -> int:
        return self._pool.scratch_pages * self._shape.page_bytes if self._pool is not None else 0

    @property
    def free_scratch_pages(self) -> int:
        return self._pool.num_free_scratch_pages if self._pool is not None else 0

    def host_fragmentation(self) -> float:
        return self.plane.host_fragmentation() if self.plane is not None else 0.0

    # ------------------------------------------------------------------ 1. plan
    def plan(self, requests: Sequence[Request], load_budget_bytes: int | None = None) -> BatchPlan:
        """Decide a batch (control plane), then issue its demotions and loads."""
        if self.plane is None:
            n = len(requests)
            return BatchPlan(BatchDecisions(0, list(requests), [Outcome.MISS] * n, [0] * n, [None] * n))
        self._free_idle_scratch()
        plan = self._building = BatchPlan(BatchDecisions(0, [], [], [], []))
        try:
            plan.decisions = self.plane.plan(requests, load_budget_bytes)
        finally:
            self._building = None
        plan.load_budget = load_budget_bytes
        demoted = self._issue_stores(self._demotions, [])
        self._demotions = []
        if demoted is not None:  # the freed pages' later writers: this batch's forward, every later load
            plan.page_waits.append(demoted)
            self._engine.fence(demoted)
        if plan._loads:
            plan.load = self._engine.load(plan._loads, after=plan._load_after)
            plan.load_seconds = plan.load.issue_seconds
            for job in plan.load.jobs:
                entry = self.gpu.get(job.key) if job.key not in plan.transient else plan.transient[job.key]
                entry.load = plan.load
        return plan

    # --- the DataPlane protocol (called by the control plane, in decision order)
    def gpu_admit(self, key: Key, n_tokens: int) -> None:
        pages = self._pool.allocate(n_tokens)
        if pages is None:  # the policy and the pool count the same pages, so this is a bug
            raise RuntimeError(f"GPU pool out of pages after the policy made room for {key}")
        self.gpu[key] = GpuEntry(n_tokens, pages)

    def gpu_grow(self, key: Key, n_tokens: int) -> None:
        entry = self.gpu[key]
        extra = self._shape.pages_for(n_tokens) - len(entry.pages)
        if extra > 0:
            pages = self._pool.allocate(extra * self._shape.page_tokens)
            if pages is None:
                raise RuntimeError(f"GPU pool out of pages after the policy made room for {key} to grow")
            entry.pages = entry.pages + pages
        entry.n_tokens = n_tokens

    def gpu_evict(self, key: Key) -> None:
        entry = self.gpu.pop(key)
        if entry.writeback is not None and not entry.writeback.done() and entry.writeback.event is not None:
            # A host copy still reads these pages: later writers of the pages wait for it.
            torch.cuda.current_stream().wait_event(entry.writeback.event)
            self._engine.fence(entry.writeback.event)
        self._pool.free(entry.pages)

    def scratch(self, key: Key, n_tokens: int) -> None:
        pages = self._pool.allocate_scratch(n_tokens)
        if pages is None:  # released batches' copies still use scratch pages: wait for them
            for entry in self._scratch_in_use:
                if entry.writeback is not None and entry.writeback.event is not None:
                    entry.writeback.event.synchronize()
                if entry.load is not None:
                    entry.load.synchronize()
            self._free_idle_scratch()
            pages = self._pool.allocate_scratch(n_tokens)
        if pages is None:
            raise RuntimeError(f"scratch pages exhausted for {key} (sized for two batches)")
        self._building.transient[key] = GpuEntry(n_tokens, pages)

    def load(self, key: Key, n_tokens: int, scratch: bool) -> None:
        plan = self._building
        entry = plan.transient[key] if scratch else self.gpu[key]
        host_entry = self.host[key]
        plan._loads.append(TransferJob(key, host_entry.placement, entry.pages[: self._shape.pages_for(n_tokens)]))
        pending = host_entry.pending()
        if pending is not None:
            plan._load_after.append(pending)

    def host_store(self, key: Key, n_tokens: int, offsets: list[int], scratch: bool) -> None:
        source = (self._building or self._current_release).transient[key] if scratch else self.gpu[key]
        placement = HostPlacement(offsets, n_tokens)
        self.host[key] = HostEntry(placement)
        job = TransferJob(key, placement, source.pages[: self._shape.pages_for(n_tokens)])
        if self._building is not None:
            self._demotions.append(job)
        else:
            self._releasing.append((job, source))

    def host_evict(self, key: Key) -> None:
        del self.host[key]

    # ------------------------------------------------------------------ copies to the host
    def _issue_stores(self, jobs: list[TransferJob], sources: list[GpuEntry]) -> torch.cuda.Event | None:
        """Copy entries' pages to their host extents (write-back stream, after the compute stream's work so
        far); returns the copies' event (None on the CPU or when nothing was issued)."""
        if not jobs:
            return None
        handles = self._engine.store_many(jobs, after=_record_event(self.device))
        event = None
        for index, (job, handle) in enumerate(zip(jobs, handles)):
            if handle is None:
                self.stats.writeback_failures += 1
                self.plane.forget_host(job.key)
                continue
            event = handle.event or event
            host_entry = self.host.get(job.key)
            if host_entry is not None and host_entry.placement is job.placement:
                host_entry.writeback = handle if not handle.done() else None
            if index < len(sources):
                sources[index].writeback = handle if not handle.done() else None
            elif job.key in self.gpu:
                self.gpu[job.key].writeback = handle if not handle.done() else None
        return event

    # ------------------------------------------------------------------ 2. refresh
    def refresh(self, plan: BatchPlan) -> None:
        """Load fallbacks, the loads the batch's hits wait on, and waits for copies reading its pages."""
        if self.plane is None:
            return
        decisions = plan.decisions
        failed = {job.key: job.placement.n_tokens for job in plan.load.failed} if plan.load is not None else {}
        timed_out = self._timed_out(plan)
        first_rows: set[Key] = set()
        for i, request in enumerate(decisions.requests):
            key = request.key
            first = key not in first_rows
            first_rows.add(key)
            if decisions.outcomes[i] in READS_CACHE and key in decisions.loaded and (key in failed or key in timed_out):
                decisions.outcomes[i] = Outcome.MISS
                decisions.cached[i] = 0
                decisions.kinds[i] = MissKind.CAPACITY
                self.stats.transfer_fallbacks += 1
                if first and key in failed:
                    self._recompute_into_pages(plan, i, failed[key])
        for event in plan.page_waits:
            torch.cuda.current_stream().wait_event(event)
        plan.page_waits = []
        waits = {id(e.load): e.load for k in {r.key for r in decisions.requests}
                 if (e := plan.transient.get(k) or self.gpu.get(k)) and e.load}
        plan.waits = [h for h in waits.values() if not h.done()]

    def _recompute_into_pages(self, plan: BatchPlan, row: int, loaded_tokens: int) -> None:
        """A load that was never issued: the forward computes the entry into the pages the load should
        have filled (the control plane's state stays true): the loaded tokens, and those the batch
        appends to them (append variant; a later batch planned already may have grown the entry more)."""
        decisions = plan.decisions
        request = decisions.requests[row]
        scratch = request.key in plan.transient
        grown = decisions.stores.get(row)
        n_tokens = grown.n_tokens if grown is not None else loaded_tokens
        if n_tokens > request.n_static:
            raise RuntimeError(f"load of {request.key} failed and the request computes only {request.n_static} "
                               f"of its {n_tokens} tokens")
        decisions.stores[row] = StoreDecision(request.key, 0, n_tokens, scratch)

    def _timed_out(self, plan: BatchPlan) -> set[Key]:
        timeout = self.config.transfer_timeout_s
        if timeout is None or plan.load is None or plan.load.wait_host(timeout):
            return set()
        # The copies still land later; the entries stay (with their pending load) for later batches.
        # Entries the batch appends to wait for their load instead: the appended tokens share the
        # loaded entry's last page, which a late load would overwrite.
        grown = {store.key for store in plan.decisions.stores.values() if store.first > 0}
        return {job.key for job in plan.load.jobs} - grown

    # ------------------------------------------------------------------ 3. pool inputs
    def pool_inputs(self, plan: BatchPlan, row_offsets: np.ndarray) -> PoolReads:
        """The batch's pool I/O; `row_offsets[i]` is where request i's computed rows start (its new
        static tokens first)."""
        decisions = plan.decisions
        n = len(decisions.requests)
        table = np.zeros((n, self.table_width), dtype=np.int32)
        lengths = np.zeros(n, dtype=np.int32)
        store_k = np.full(int(row_offsets[-1]), -1, dtype=np.int32)
        for i, request in enumerate(decisions.requests):
            if decisions.outcomes[i] in READS_CACHE:
                entry = plan.transient.get(request.key) or self.gpu[request.key]
                table[i, : len(entry.pages)] = entry.pages
                lengths[i] = decisions.cached[i]
        for i, store in decisions.stores.items():
            entry = plan.transient.get(store.key) if store.scratch else self.gpu.get(store.key)
            if entry is None or decisions.cached[i] != store.first:
                continue
            start = int(row_offsets[i])
            store_k[start: start + store.n_tokens - store.first] = self._shape.k_rows(entry.pages, store.n_tokens)[store.first:]
        return PoolReads(self._pool.kv, table, lengths, store_k)

    def wait_layer(self, plan: BatchPlan, layer: int) -> None:
        """Make the compute stream wait (device-side) for layer `layer` of the loads the batch reads."""
        for handle in plan.waits:
            handle.wait_layer(layer, plan.stalls)

    # ------------------------------------------------------------------ 4. release
    def release(self, plan: BatchPlan) -> None:
        """The batch's forward is issued: the control plane's host copies, counts, unpins, stale drops."""
        if self.plane is None:
            self._count_off(plan)
            return
        self._current_release = plan
        try:
            self.plane.release(plan.decisions)
        finally:
            self._current_release = None
        if self._releasing:
            jobs, sources = zip(*self._releasing)
            self._releasing = []
            self._issue_stores(list(jobs), list(sources))
        self._scratch_in_use.extend(plan.transient.values())
        self._free_idle_scratch()
        for entry in self.gpu.values():
            if entry.load is not None and entry.load.done():
                entry.load = None
        self._engine.fence(_record_event(self.device))

    def _count_off(self, plan: BatchPlan) -> None:
        stats = self._stats_when_off
        for request in plan.requests:
            stats.requests += 1
            stats.misses += 1
            stats.static_tokens += request.n_static

    def _free_idle_scratch(self) -> None:
        """Free the scratch pages of released batches once no copy reads or writes them any more (their
        compute-stream users are ordered before later loads by the stream fence of `release`)."""
        busy = []
        for entry in self._scratch_in_use:
            if (entry.writeback is not None and not entry.writeback.done()) or (entry.load is not None and not entry.load.done()):
                busy.append(entry)
            else:
                self._pool.free(entry.pages)
        self._scratch_in_use = busy

    # ------------------------------------------------------------------ prewarm
    def prewarm_transfers(self, token_counts: Sequence[int]) -> None:
        """One host store and load per token count into free pages and extents (compiles the copy
        kernels they launch); leaves pages, extents and every tier as they were."""
        if self._arena is None:
            return
        for n_tokens in token_counts:
            pages = self._pool.allocate(n_tokens)
            if pages is None:
                continue
            offsets = self.plane.extents.place(self._layout.extent_elements(n_tokens))
            if offsets is not None:
                job = TransferJob((-1, -1), HostPlacement(offsets, n_tokens), pages)
                handle = self._engine.store(job)
                if handle is not None and handle.event is not None:
                    handle.event.synchronize()
                self._engine.load([job]).synchronize()
                for offset in offsets:
                    self.plane.extents.free(offset)
            self._pool.free(pages)

    def reserve_staging(self, batch_tokens: int) -> None:
        """Grow the load staging buffer to a batch of `batch_tokens` static tokens (at most the pool)."""
        if self._pool is not None:
            self._layout.reserve(min(batch_tokens, self._pool.num_pages * self._shape.page_tokens), self.device)

    def blank_reads(self, batch_size: int) -> PoolReads:
        """Pool inputs that read page 0 (whatever it holds) and store nothing: warm-up forwards. Mode none:
        empty page tables over a one-page stand-in pool (the graphed recompute forward's inputs)."""
        table = np.zeros((batch_size, self.table_width), dtype=np.int32)
        return PoolReads(self._pool_kv(), table, np.zeros(batch_size, dtype=np.int32), np.zeros(0, dtype=np.int32))

    def _pool_kv(self) -> torch.Tensor:
        if self._pool is not None:
            return self._pool.kv
        if self._stand_in_kv is None:
            self._stand_in_kv = PagedKVPool(self._shape, self._shape.page_bytes, self.device).kv
        return self._stand_in_kv

    # ------------------------------------------------------------------ checks
    def check_invariants(self) -> None:
        """Data plane and control plane agree (tests call it after every batch)."""
        if self.plane is None:
            return
        self.plane.check_invariants()
        assert set(self.gpu) == self.plane.gpu_keys(), "GPU entries differ from the control plane's GPU keys"
        assert set(self.host) == self.plane.host_keys(), "host entries differ from the control plane's host keys"
        pages = [p for e in self.gpu.values() for p in e.pages]
        assert len(pages) == len(set(pages)), "a pool page belongs to two entries"
        assert len(pages) + self._pool.num_free_pages == self._pool.num_pages
        for key, entry in self.gpu.items():
            assert entry.n_tokens == self.plane.gpu_tokens[key]


def _record_event(device: torch.device) -> torch.cuda.Event | None:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream())
    return event
