"""The two-tier KV cache: GPU paged pool + host arena, each with a replacement policy.

Per batch, the replay engine calls, in order:
1. `plan(requests, first_index, next_uses, load_budget_bytes)` (for the *queued* batch when the
   pipeline looks ahead): pins every key of the batch in both policies and classifies each request:
   - gpu_hit: the entry is in the pool;
   - host_hit: the entry is on the host and is loaded into fresh pool pages (loads issued now on the
     load stream, one event per layer);
   - host_recompute: the entry is on the host, but loading it would exceed the batch's load budget
     (bytes the link moves while the GPU computes a batch), so the forward recomputes the prefix and
     stores it into fresh pool pages instead; the copy stays on the host;
   - miss / stale (stale: an older static version of the user was cached): the forward computes the
     prefix and stores it into fresh pool pages.
   Pool pages of every entry the batch computes are allocated here, so the forward writes K/V straight
   into them (`MTGR.forward_pooled`); `BatchPlan.stores` lists them.
   Scratch pages: while two batches are pinned, a small GPU tier may have no unpinned entry left to
   evict. A host hit that cannot be promoted is then loaded into scratch pages (outside the tier's
   capacity, `PagedKVPool`), and a miss the tier cannot keep is computed into scratch pages and
   written through to the host from there; `BatchPlan.transient` lists them and they are freed once
   the batch and its copies are done. Without them such a miss would never reach the host and would
   miss again on every later request of its user.
2. `refresh(plan)` just before the batch computes: failed or timed-out loads fall back to recomputing;
   collects the loads (this or earlier batches) the batch's hits must wait for.
3. `pool_inputs(plan)`: the batch's page table and prefix lengths (hits read their pages, the rest
   length 0) and the pages each computed entry is stored into; `wait_layer(plan, l)` inside the
   forward makes the compute stream wait for layer l of those loads.
4. `release(plan)` once the forward is issued: writes the batch's new entries through to the host (on
   the write-back stream, after the forward), counts outcomes, unpins, drops stale entries that were
   in flight and fences the side streams.

Hierarchy: inclusive write-through. Every entry admitted to the GPU is copied to the host (off the
critical path); GPU eviction ("demotion") then costs no copy. An entry counts as on the host only
once its write-back event completed (`HostEntry.ready`). A host hit is promoted to the GPU and
keeps its host copy. Stale entries (same user, other static_version) are never served: lookups
match the exact key, and old versions are dropped from both tiers as soon as no batch uses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mtbench.cache.host import HostArena
from mtbench.cache.layouts import HostPlacement, TransferJob, make_layout
from mtbench.cache.policies import make_policy
from mtbench.cache.pool import KVShape, PagedKVPool
from mtbench.cache.transfer import FaultHook, LoadHandle, TransferEngine, WritebackHandle
from mtbench.errors import MtbenchError
from mtbench.units import format_bytes

CACHE_MODES = ("none", "gpu", "tiered")
HIT_OUTCOMES = ("gpu_hit", "host_hit")  # the forward reads the prefix from the pool
Key = tuple[int, int]


@dataclass(frozen=True)
class CacheConfig:
    """Everything that decides how the cache behaves (one replay run)."""

    mode: str = "tiered"
    policy: str = "lru"
    gpu_capacity: int = 0
    host_capacity: int = 0
    layout: str = "hybrid"
    sync: bool = False
    host_fit: str = "first"
    transfer_timeout_s: float | None = None
    load_thread: bool | None = None  # issue loads from a loader thread (None: on CUDA unless sync); see transfer.py

    def __post_init__(self) -> None:
        if self.mode not in CACHE_MODES:
            raise MtbenchError(f"unknown cache mode {self.mode!r} (choose from {', '.join(CACHE_MODES)})")


@dataclass(frozen=True)
class RequestKey:
    """What the cache needs of one request: its entry key and static length."""

    user_id: int
    static_version: int
    n_static: int

    @property
    def key(self) -> Key:
        return (self.user_id, self.static_version)


@dataclass
class GpuEntry:
    """An entry in the pool: its pages (one table for all layers) and the load that fills them, if pending."""

    n_tokens: int
    pages: list[int]
    load: LoadHandle | None = None
    writeback: WritebackHandle | None = None  # pending copy to the host reading these pages


@dataclass
class HostEntry:
    placement: HostPlacement
    writeback: WritebackHandle | None = None  # None once the copy completed

    @property
    def ready(self) -> bool:
        return self.writeback is None


@dataclass
class CacheStats:
    """Counters over the requests committed so far (see shared_schemas for the meaning)."""

    requests: int = 0
    gpu_hits: int = 0
    host_hits: int = 0
    host_recomputes: int = 0
    misses: int = 0
    stale: int = 0
    static_tokens: int = 0
    hit_tokens: int = 0
    bytes_h2d: int = 0
    bytes_d2h: int = 0
    gpu_evictions: int = 0
    host_evictions: int = 0
    transfer_fallbacks: int = 0
    writeback_failures: int = 0
    gpu_admission_failures: int = 0
    host_admission_failures: int = 0


@dataclass
class BatchPlan:
    """The cache's decisions for one batch; `outcomes[i]` is request i's outcome."""

    requests: list[RequestKey]
    first_index: int
    outcomes: list[str]
    load: LoadHandle | None = None
    stores: dict[int, "GpuEntry"] = field(default_factory=dict)  # request row -> entry its forward computes
    transient: dict[Key, "GpuEntry"] = field(default_factory=dict)  # entries in scratch pages, this batch only
    waits: list[LoadHandle] = field(default_factory=list)  # loads (this or earlier batches) hits depend on
    stalls: list = field(default_factory=list)  # (before, after) CUDA events around each device-side wait
    load_seconds: float = 0.0  # host time issuing this batch's loads (the copies themselves on the CPU)

    def rows(self, *outcomes: str) -> list[int]:
        return [i for i, outcome in enumerate(self.outcomes) if outcome in outcomes]


class CacheManager:
    """GPU + host tiers with their policies; see the module docstring for the call protocol."""

    def __init__(self, config: CacheConfig, shape: KVShape, device: torch.device | str,
                 max_entry_tokens: int, fault_hook: FaultHook | None = None, scratch_entries: int = 0) -> None:
        self.config = config
        self.shape = shape
        self.device = torch.device(device)
        self.stats = CacheStats()
        self.gpu: dict[Key, GpuEntry] = {}
        self.host: dict[Key, HostEntry] = {}
        self._versions: dict[int, set[int]] = {}
        self._doomed: set[Key] = set()
        self._pending_writebacks: list[Key] = []
        self._scratch_in_use: list[GpuEntry] = []  # released scratch entries whose copies are still running
        self.pool: PagedKVPool | None = None
        self.engine: TransferEngine | None = None
        self.gpu_policy = self.host_policy = None
        self.arena: HostArena | None = None
        if config.mode == "none":
            return
        largest = shape.entry_bytes(max_entry_tokens)
        _require_fits("GPU cache (--gpu-cache)", config.gpu_capacity, largest, max_entry_tokens)
        self.gpu_policy = make_policy(config.policy, config.gpu_capacity)
        self.table_width = shape.pages_for(max_entry_tokens)
        scratch = scratch_entries * self.table_width if config.mode == "tiered" else 0
        self.pool = PagedKVPool(shape, config.gpu_capacity, self.device, scratch_pages=scratch)
        self.layout = make_layout(config.layout, shape)
        if config.mode == "tiered":
            _require_fits("host cache (--host-cache)", config.host_capacity, largest, max_entry_tokens)
            self.host_policy = make_policy(config.policy, config.host_capacity)
            self.arena = HostArena(config.host_capacity, shape.dtype, pin=self.device.type == "cuda",
                                   fit=config.host_fit)
        self.engine = TransferEngine(self.pool, self.arena, self.layout, sync=config.sync, fault_hook=fault_hook,
                                     load_thread=config.load_thread)

    # ------------------------------------------------------------------ occupancy
    @property
    def gpu_used_bytes(self) -> int:
        return self.gpu_policy.used if self.gpu_policy is not None else 0

    @property
    def host_used_bytes(self) -> int:
        return self.host_policy.used if self.host_policy is not None else 0

    def host_fragmentation(self) -> float:
        return self.arena.fragmentation() if self.arena is not None else 0.0

    # ------------------------------------------------------------------ 1. plan
    def plan(self, requests: Sequence[RequestKey], first_index: int,
             next_uses: Sequence[int] | None = None, load_budget_bytes: int | None = None) -> BatchPlan:
        """Classify and pin a batch, promote the host hits it loads and allocate what it computes."""
        plan = BatchPlan(list(requests), first_index, ["miss"] * len(requests))
        if self.pool is None:
            return plan
        self._poll_writebacks()
        keys = [r.key for r in requests]
        for policy in self._policies():
            for key in keys:
                policy.pin(key)
            policy.hint_upcoming(keys, first_index)
        if next_uses is not None:
            for policy in self._policies():
                if policy.uses_next_use:
                    for key, next_use in zip(keys, next_uses):
                        policy.set_next_use(key, int(next_use))
        loads = self._loads_within_budget(requests, load_budget_bytes)
        seen: dict[Key, str] = {}
        promotions: list[tuple[Key, GpuEntry, HostEntry]] = []
        for i, request in enumerate(requests):
            key, now = request.key, first_index + i
            if key in seen:
                plan.outcomes[i] = seen[key] if seen[key] in HIT_OUTCOMES else "miss"
                self._touch(key, now)
                continue
            stale = self._drop_other_versions(request)
            outcome, store = self._classify(plan, key, now, promotions, loads is None or key in loads)
            if outcome == "miss" and stale:
                outcome = "stale"
            if store and key not in self._doomed:
                entry = self._allocate_gpu(key, request.n_static, now)
                if entry is None and self.host_policy is not None:
                    entry = self._allocate_scratch(plan, key, request.n_static)  # computed, kept on the host only
                if entry is not None:
                    plan.stores[i] = entry
            plan.outcomes[i] = seen[key] = outcome
        if promotions:
            plan.load = self._load(plan, promotions)
            plan.load_seconds = plan.load.issue_seconds
        return plan

    def _loads_within_budget(self, requests: Sequence[RequestKey], budget: int | None) -> set[Key] | None:
        """Host entries of the batch worth loading: all of them without a budget; otherwise the ones
        asked for most often in the batch (a recompute recomputes every request of the key) while
        their bytes fit the budget. None = no limit."""
        if budget is None or self.host_policy is None:
            return None
        counts: dict[Key, int] = {}
        for request in requests:
            if request.key not in self.gpu and request.key in self.host:
                counts[request.key] = counts.get(request.key, 0) + 1
        chosen: set[Key] = set()
        for key in sorted(counts, key=lambda k: -counts[k]):
            size = self.shape.entry_bytes(self.host[key].placement.n_tokens)
            if size <= budget:
                chosen.add(key)
                budget -= size
        return chosen

    def _policies(self) -> list:
        return [p for p in (self.gpu_policy, self.host_policy) if p is not None]

    def _touch(self, key: Key, now: int) -> None:
        for policy in self._policies():
            policy.access(key, now)

    def _classify(self, plan: BatchPlan, key: Key, now: int, promotions: list, load: bool) -> tuple[str, bool]:
        """(outcome, whether the forward should compute the entry into fresh pool pages)."""
        if key in self.gpu:
            self.gpu_policy.access(key, now)
            if self.host_policy is not None:
                self.host_policy.access(key, now)
            return "gpu_hit", False
        host_entry = self.host.get(key)
        if host_entry is None or not host_entry.ready:
            return "miss", True
        self.host_policy.access(key, now)
        if not load:
            return "host_recompute", True
        gpu_entry = self._allocate_gpu(key, host_entry.placement.n_tokens, now)
        if gpu_entry is None:  # no room among the unpinned entries: served from scratch pages this once
            gpu_entry = self._allocate_scratch(plan, key, host_entry.placement.n_tokens)
        if gpu_entry is None:
            return "host_recompute", False
        promotions.append((key, gpu_entry, host_entry))
        return "host_hit", False

    def _drop_other_versions(self, request: RequestKey) -> bool:
        """Remove other static versions of the user (deferred while in flight); True if any existed."""
        versions = self._versions.setdefault(request.user_id, set())
        others = [v for v in versions if v != request.static_version]
        for version in others:
            key = (request.user_id, version)
            if any(policy.is_pinned(key) for policy in self._policies()):
                self._doomed.add(key)
            else:
                self._remove(key)
        return bool(others)

    def _remove(self, key: Key) -> None:
        if key in self.gpu:
            self.gpu_policy.remove(key)
            self._free_gpu(key)
        if key in self.host:
            self.host_policy.remove(key)
            self._free_host(key)

    def _note_version(self, key: Key) -> None:
        self._versions.setdefault(key[0], set()).add(key[1])

    def _forget_version(self, key: Key) -> None:
        if key not in self.gpu and key not in self.host:
            versions = self._versions.get(key[0])
            if versions is not None:
                versions.discard(key[1])
                if not versions:
                    del self._versions[key[0]]

    def _allocate_gpu(self, key: Key, n_tokens: int, now: int) -> GpuEntry | None:
        """Admit `key` to the GPU policy and pool, evicting unpinned entries; None when it cannot fit."""
        evicted = self.gpu_policy.admit(key, self.shape.entry_bytes(n_tokens), now)
        if evicted is None:
            self.stats.gpu_admission_failures += 1
            return None
        for victim in evicted:
            self._free_gpu(victim)
            self.stats.gpu_evictions += 1
        pages = self.pool.allocate(n_tokens)
        if pages is None:  # the policy and the pool count the same pages, so this is a bug
            raise RuntimeError(f"GPU pool out of pages after the policy made room for {key}")
        entry = GpuEntry(n_tokens, pages)
        self.gpu[key] = entry
        self._note_version(key)
        return entry

    def _allocate_scratch(self, plan: BatchPlan, key: Key, n_tokens: int) -> GpuEntry | None:
        """Scratch pages for an entry only this batch uses (see `PagedKVPool`); None when none are free."""
        pages = self.pool.allocate_scratch(n_tokens)
        if pages is None:
            return None
        entry = plan.transient[key] = GpuEntry(n_tokens, pages)
        return entry

    def _free_gpu(self, key: Key) -> None:
        entry = self.gpu.pop(key)
        if entry.writeback is not None and not entry.writeback.done() and entry.writeback.event is not None:
            # The host copy still reads these pages: later writers of the pages wait for it.
            torch.cuda.current_stream().wait_event(entry.writeback.event)
            self.engine.fence(entry.writeback.event)
        self.pool.free(entry.pages)
        self._forget_version(key)

    def _free_host(self, key: Key) -> None:
        entry = self.host.pop(key)
        for offset in entry.placement.offsets:
            self.arena.free(offset)
        self._forget_version(key)

    def _load(self, plan: BatchPlan, promotions: list[tuple[Key, GpuEntry, HostEntry]]) -> LoadHandle:
        jobs = [TransferJob(key, host_entry.placement, gpu_entry.pages) for key, gpu_entry, host_entry in promotions]
        entries = {key: gpu_entry for key, gpu_entry, _ in promotions}
        handle = self.engine.load(jobs)
        for job in handle.jobs:
            entries[job.key].load = handle
        for job in handle.failed:
            if job.key in plan.transient:
                self.pool.free(plan.transient.pop(job.key).pages)
            else:
                self.gpu_policy.remove(job.key)
                self._free_gpu(job.key)
        self.stats.bytes_h2d += handle.bytes_moved
        return handle

    # ------------------------------------------------------------------ 2. refresh
    def refresh(self, plan: BatchPlan) -> None:
        """Late GPU hits, load fallbacks and the set of loads the batch's hits must wait on."""
        if self.pool is None:
            return
        failed = {job.key for job in plan.load.failed} if plan.load is not None else set()
        timed_out = self._timed_out(plan)
        for i, request in enumerate(plan.requests):
            if plan.outcomes[i] == "host_hit" and (request.key in failed or request.key in timed_out):
                plan.outcomes[i] = "miss"
                self.stats.transfer_fallbacks += 1
        waits = {id(e.load): e.load for k in {r.key for r in plan.requests}
                 if (e := self.gpu.get(k) or plan.transient.get(k)) and e.load}
        plan.waits = [h for h in waits.values() if not h.done()]

    def _timed_out(self, plan: BatchPlan) -> set[Key]:
        timeout = self.config.transfer_timeout_s
        if timeout is None or plan.load is None or plan.load.wait_host(timeout):
            return set()
        # The copies still land later; the entries stay (with their pending load) for later batches.
        return {job.key for job in plan.load.jobs}

    # ------------------------------------------------------------------ 3. pool inputs
    def pool_inputs(self, plan: BatchPlan) -> tuple[np.ndarray, np.ndarray, list[list[int] | None]]:
        """(page_table int32 [B, table_width], lengths int32 [B], pages each request's computed prefix is
        stored into or None): a hit reads its n_static tokens from its pages; every other request reads
        nothing, and the first request of each entry the batch computes stores it."""
        table = np.zeros((len(plan.requests), self.table_width), dtype=np.int32)
        lengths = np.zeros(len(plan.requests), dtype=np.int32)
        stores: list[list[int] | None] = [None] * len(plan.requests)
        for i, request in enumerate(plan.requests):
            if plan.outcomes[i] in HIT_OUTCOMES:
                entry = self.gpu.get(request.key) or plan.transient[request.key]
                table[i, : len(entry.pages)] = entry.pages
                lengths[i] = entry.n_tokens
        for i, entry in plan.stores.items():
            if plan.outcomes[i] not in HIT_OUTCOMES:
                stores[i] = entry.pages
        return table, lengths, stores

    def wait_layer(self, plan: BatchPlan, layer: int) -> None:
        """Make the compute stream wait (device-side) for layer `layer` of the loads the batch reads."""
        for handle in plan.waits:
            handle.wait_layer(layer, plan.stalls)

    def _write_through(self, entries: list[tuple[Key, GpuEntry, int]], after: torch.cuda.Event | None) -> None:
        """Copy new entries (key, pool entry, request index) to the host, all in one transfer."""
        jobs: list[tuple[TransferJob, GpuEntry]] = []
        for key, entry, now in entries:
            placement = self._admit_host(key, entry.n_tokens, now)
            if placement is not None:
                jobs.append((TransferJob(key, placement, entry.pages), entry))
        if not jobs:
            return
        handles = self.engine.store_many([job for job, _ in jobs], after=after)
        for (job, entry), handle in zip(jobs, handles):
            if handle is None:
                for offset in job.placement.offsets:
                    self.arena.free(offset)
                self.host_policy.remove(job.key)
                self.stats.writeback_failures += 1
                continue
            self.stats.bytes_d2h += handle.bytes_moved
            self.host[job.key] = HostEntry(job.placement, writeback=handle)
            self._note_version(job.key)
            entry.writeback = handle
            self._pending_writebacks.append(job.key)
            if handle.done():
                self._finish_writeback(job.key)

    def _admit_host(self, key: Key, n_tokens: int, now: int) -> HostPlacement | None:
        """Room in the host policy and an extent in the arena for a new entry; None when not stored."""
        if key in self.host:
            return None
        evicted = self.host_policy.admit(key, self.shape.entry_bytes(n_tokens), now)
        if evicted is None:
            self.stats.host_admission_failures += 1
            return None
        for victim in evicted:
            self._free_host(victim)
            self.stats.host_evictions += 1
        placement = self._allocate_host(n_tokens)
        if placement is None:  # fragmentation: the policy had room, the arena has no extent
            self.host_policy.remove(key)
            self.stats.host_admission_failures += 1
        return placement

    def _allocate_host(self, n_tokens: int) -> HostPlacement | None:
        offsets: list[int] = []
        for size in self.layout.extent_elements(n_tokens):
            offset = self.arena.allocate(size)
            if offset is None:
                for taken in offsets:
                    self.arena.free(taken)
                return None
            offsets.append(offset)
        return HostPlacement(offsets, n_tokens)

    def _finish_writeback(self, key: Key) -> None:
        entry = self.host.get(key)
        if entry is not None:
            entry.writeback = None
        gpu_entry = self.gpu.get(key)
        if gpu_entry is not None:
            gpu_entry.writeback = None

    def _free_idle_scratch(self) -> None:
        """Free the scratch pages of released batches once no copy reads or writes them any more (their
        compute-stream users are ordered before later loads by the stream fence of `release`)."""
        busy = []
        for entry in self._scratch_in_use:
            if (entry.writeback is not None and not entry.writeback.done()) or (entry.load is not None and not entry.load.done()):
                busy.append(entry)
            else:
                self.pool.free(entry.pages)
        self._scratch_in_use = busy

    def _poll_writebacks(self) -> None:
        self._free_idle_scratch()
        still_pending = []
        for key in self._pending_writebacks:
            entry = self.host.get(key)
            if entry is None or entry.writeback is None:
                continue
            if entry.writeback.done():
                self._finish_writeback(key)
            else:
                still_pending.append(key)
        self._pending_writebacks = still_pending

    # ------------------------------------------------------------------ 5. release
    def release(self, plan: BatchPlan) -> None:
        """The batch's forward is issued: write its new entries through to the host, count its outcomes,
        unpin its keys, drop stale entries, fence copies."""
        self._count(plan)
        if self.pool is None:
            return
        if self.host_policy is not None and plan.stores:
            new = [(plan.requests[i].key, entry, plan.first_index + i) for i, entry in plan.stores.items()]
            self._write_through(new, _record_event(self.device))
        self._scratch_in_use.extend(plan.transient.values())
        self._free_idle_scratch()
        for policy in self._policies():
            for request in plan.requests:
                policy.unpin(request.key)
        for key in list(self._doomed):
            if not any(policy.is_pinned(key) for policy in self._policies()):
                self._doomed.discard(key)
                self._remove(key)
        for entry in self.gpu.values():
            if entry.load is not None and entry.load.done():
                entry.load = None
        self.engine.fence(_record_event(self.device))

    def _count(self, plan: BatchPlan) -> None:
        stats = self.stats
        for request, outcome in zip(plan.requests, plan.outcomes):
            stats.requests += 1
            stats.static_tokens += request.n_static
            if outcome == "gpu_hit":
                stats.gpu_hits += 1
                stats.hit_tokens += request.n_static
            elif outcome == "host_hit":
                stats.host_hits += 1
                stats.hit_tokens += request.n_static
            elif outcome == "host_recompute":
                stats.host_recomputes += 1
            elif outcome == "stale":
                stats.stale += 1
            else:
                stats.misses += 1

    def check_invariants(self) -> None:
        """Tiers and policies agree (tests call it after every batch)."""
        if self.pool is None:
            return
        assert set(self.gpu) == set(self.gpu_policy), "GPU entries differ from the GPU policy's keys"
        pages = [p for e in self.gpu.values() for p in e.pages]
        assert len(pages) == len(set(pages)), "a pool page belongs to two entries"
        assert len(pages) + self.pool.num_free_pages == self.pool.num_pages
        if self.host_policy is not None:
            assert set(self.host) == set(self.host_policy), "host entries differ from the host policy's keys"


def _require_fits(what: str, capacity: int, largest: int, tokens: int) -> None:
    if capacity < largest:
        raise MtbenchError(
            f"{what} of {format_bytes(capacity)} cannot hold one entry: the largest request needs "
            f"{format_bytes(largest)} ({tokens} static tokens)"
        )


def _record_event(device: torch.device) -> torch.cuda.Event | None:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream())
    return event


def next_use_indices(user_ids: np.ndarray, versions: np.ndarray) -> np.ndarray:
    """For each request, the index of the next request with the same key (or NEVER); for OPT."""
    from mtbench.cache.policies.base import NEVER

    keys = np.stack([user_ids.astype(np.int64), versions.astype(np.int64)], axis=1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    result = np.full(len(inverse), NEVER, dtype=np.int64)
    last_seen: dict[int, int] = {}
    for index in range(len(inverse) - 1, -1, -1):
        key = int(inverse[index])
        result[index] = last_seen.get(key, NEVER)
        last_seen[key] = index
    return result
