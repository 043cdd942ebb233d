"""The two-tier KV cache: GPU paged pool + host arena, each with a replacement policy.

Per batch, the replay engine calls, in order:
1. `plan(requests, first_index)` (for the *queued* batch when the pipeline looks ahead): pins every
   key of the batch in both policies, classifies each request (gpu_hit / host_hit / miss / stale),
   promotes host hits (GPU pages allocated, evicting unpinned entries; loads issued on the load
   stream with one event per layer) and returns a `BatchPlan`.
2. `refresh(plan)` just before the batch computes: a planned miss whose key the previous batch
   admitted meanwhile becomes a GPU hit; failed or timed-out loads fall back to recomputing.
3. `prefix(plan, rows, layer)` inside the batch's ONE cached forward (hits and misses together):
   waits (device-side) on layer `layer` of the loads the batch needs, then returns a
   `kernels.PagedPrefix` straight over the pool (hits: their pages; misses: length 0).
4. `admit(plan, rows, k, v, offsets)` after that forward, with the misses' freshly computed static
   K/V: they go into fresh pool pages (one scatter per layer), then, in tiered mode, are written
   through to the host on the write-back stream.
5. `release(plan)`: unpins, drops stale entries that were in flight, fences the side streams.

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

import kernels
from mtbench.cache.host import HostArena
from mtbench.cache.layouts import HostPlacement, TransferJob, make_layout
from mtbench.cache.policies import make_policy
from mtbench.cache.pool import KVShape, PagedKVPool, to_device_async
from mtbench.cache.transfer import FaultHook, LoadHandle, TransferEngine, WritebackHandle
from mtbench.errors import MtbenchError
from mtbench.units import format_bytes

CACHE_MODES = ("none", "gpu", "tiered")
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
    waits: list[LoadHandle] = field(default_factory=list)  # loads (this or earlier batches) hits depend on
    stalls: list = field(default_factory=list)  # (before, after) CUDA events around each device-side wait
    load_seconds: float = 0.0  # host time issuing this batch's loads (the copies themselves on the CPU)

    def rows(self, *outcomes: str) -> list[int]:
        return [i for i, outcome in enumerate(self.outcomes) if outcome in outcomes]


class CacheManager:
    """GPU + host tiers with their policies; see the module docstring for the call protocol."""

    def __init__(self, config: CacheConfig, shape: KVShape, device: torch.device | str,
                 max_entry_tokens: int, fault_hook: FaultHook | None = None) -> None:
        self.config = config
        self.shape = shape
        self.device = torch.device(device)
        self.stats = CacheStats()
        self.gpu: dict[Key, GpuEntry] = {}
        self.host: dict[Key, HostEntry] = {}
        self._versions: dict[int, set[int]] = {}
        self._doomed: set[Key] = set()
        self._pending_writebacks: list[Key] = []
        self.pool: PagedKVPool | None = None
        self.engine: TransferEngine | None = None
        self.gpu_policy = self.host_policy = None
        self.arena: HostArena | None = None
        if config.mode == "none":
            return
        largest = shape.entry_bytes(max_entry_tokens)
        _require_fits("GPU cache (--gpu-cache)", config.gpu_capacity, largest, max_entry_tokens)
        self.gpu_policy = make_policy(config.policy, config.gpu_capacity)
        self.pool = PagedKVPool(shape, config.gpu_capacity, self.device)
        self.table_width = shape.pages_for(max_entry_tokens)
        self.layout = make_layout(config.layout, shape)
        if config.mode == "tiered":
            _require_fits("host cache (--host-cache)", config.host_capacity, largest, max_entry_tokens)
            self.host_policy = make_policy(config.policy, config.host_capacity)
            self.arena = HostArena(config.host_capacity, shape.dtype, pin=self.device.type == "cuda",
                                   fit=config.host_fit)
        self.engine = TransferEngine(self.pool, self.arena, self.layout, sync=config.sync, fault_hook=fault_hook)

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
             next_uses: Sequence[int] | None = None) -> BatchPlan:
        """Classify and pin a batch, promoting its host hits (loads issued now)."""
        plan = BatchPlan(list(requests), first_index, ["miss"] * len(requests))
        if self.pool is None:
            return plan
        self._poll_writebacks()
        keys = [r.key for r in requests]
        for policy in self._policies():
            for key in keys:
                policy.pin(key)
            policy.hint_upcoming(keys, first_index)
        seen: dict[Key, str] = {}
        promotions: list[tuple[Key, GpuEntry, HostEntry]] = []
        for i, request in enumerate(requests):
            key, now = request.key, first_index + i
            if next_uses is not None:
                for policy in self._policies():
                    if policy.uses_next_use:
                        policy.set_next_use(key, int(next_uses[i]))
            if key in seen:
                plan.outcomes[i] = "miss" if seen[key] in ("miss", "stale") else seen[key]
                self._touch(key, now)
                continue
            stale = self._drop_other_versions(request)
            outcome = self._classify(key, now, promotions)
            if outcome == "miss" and stale:
                outcome = "stale"
            plan.outcomes[i] = seen[key] = outcome
        if promotions:
            plan.load = self._load(promotions)
            plan.load_seconds = plan.load.issue_seconds
        return plan

    def _policies(self) -> list:
        return [p for p in (self.gpu_policy, self.host_policy) if p is not None]

    def _touch(self, key: Key, now: int) -> None:
        for policy in self._policies():
            policy.access(key, now)

    def _classify(self, key: Key, now: int, promotions: list) -> str:
        if key in self.gpu:
            self.gpu_policy.access(key, now)
            if self.host_policy is not None:
                self.host_policy.access(key, now)
            return "gpu_hit"
        host_entry = self.host.get(key)
        if host_entry is None or not host_entry.ready:
            return "miss"
        self.host_policy.access(key, now)
        gpu_entry = self._allocate_gpu(key, host_entry.placement.n_tokens, now)
        if gpu_entry is None:
            return "miss"
        promotions.append((key, gpu_entry, host_entry))
        return "host_hit"

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

    def _load(self, promotions: list[tuple[Key, GpuEntry, HostEntry]]) -> LoadHandle:
        jobs = [TransferJob(key, host_entry.placement, gpu_entry.pages,
                            self.pool.host_slots(gpu_entry.pages, gpu_entry.n_tokens))
                for key, gpu_entry, host_entry in promotions]
        handle = self.engine.load(jobs)
        for job in handle.jobs:
            self.gpu[job.key].load = handle
        for job in handle.failed:
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
            key = request.key
            if plan.outcomes[i] == "host_hit" and (key in failed or key in timed_out):
                plan.outcomes[i] = "miss"
                self.stats.transfer_fallbacks += 1
            elif plan.outcomes[i] in ("miss", "stale") and key in self.gpu and key not in failed:
                plan.outcomes[i] = "gpu_hit"
        waits = {id(e.load): e.load for k in {r.key for r in plan.requests} if (e := self.gpu.get(k)) and e.load}
        plan.waits = [h for h in waits.values() if not h.done()]

    def _timed_out(self, plan: BatchPlan) -> set[Key]:
        timeout = self.config.transfer_timeout_s
        if timeout is None or plan.load is None or plan.load.wait_host(timeout):
            return set()
        # The copies still land later; the entries stay (with their pending load) for later batches.
        return {job.key for job in plan.load.jobs}

    # ------------------------------------------------------------------ 3. prefix
    def prefix(self, plan: BatchPlan, rows: Sequence[int], layer: int) -> kernels.PagedPrefix:
        """Layer `layer`'s cached K/V of the plan's requests `rows` (the forward's requests, in order),
        as pool pages: a hit's row lists its pages and has length n_static; any other row has length 0
        (the forward computes its static tokens). The table has one fixed width (`table_width`) and
        is built once per plan; table and lengths are int32 on the pool's device."""
        for handle in plan.waits:
            handle.wait_layer(layer, plan.stalls)
        table, lengths = self._batch_table(plan, rows)
        pool_layer = self.pool.layer(layer)
        return kernels.PagedPrefix(pool_layer[:, 0], pool_layer[:, 1], table, lengths)

    def _batch_table(self, plan: BatchPlan, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        cache = plan.__dict__.setdefault("_tables", {})
        key = tuple(rows)
        if key not in cache:
            pages, lengths = [], []
            for i in rows:
                hit = plan.outcomes[i] in ("gpu_hit", "host_hit")
                entry = self.gpu[plan.requests[i].key] if hit else None
                pages.append(entry.pages if entry is not None else [])
                lengths.append(entry.n_tokens if entry is not None else 0)
            table = self.pool.page_table(pages, width=self.table_width)
            cache[key] = (table, to_device_async(torch.tensor(lengths, dtype=torch.int32), self.device))
        return cache[key]

    # ------------------------------------------------------------------ 4. admit
    def admit(self, plan: BatchPlan, rows: Sequence[int], static_k: Sequence[torch.Tensor],
              static_v: Sequence[torch.Tensor], offsets: torch.Tensor | Sequence[int]) -> None:
        """Store the freshly computed prefixes of `rows`: row rows[j]'s K/V are rows
        offsets[j]:offsets[j+1] of static_k[l] / static_v[l] (pass host offsets to avoid a device sync).
        One scatter per layer moves every admitted entry into its fresh pool pages."""
        if self.pool is None:
            return
        bounds = offsets.tolist() if isinstance(offsets, torch.Tensor) else list(offsets)
        admitted: list[tuple[Key, GpuEntry]] = []
        token_ranges: list[tuple[int, int]] = []
        slots: list[torch.Tensor] = []
        for position, i in enumerate(rows):
            request = plan.requests[i]
            key = request.key
            if key in self.gpu or key in self._doomed:
                continue
            entry = self._allocate_gpu(key, request.n_static, plan.first_index + i)
            if entry is None:
                continue
            token_ranges.append((bounds[position], bounds[position + 1]))
            slots.append(self.pool.host_slots(entry.pages, entry.n_tokens))
            admitted.append((key, entry))
        if not admitted:
            return
        self._scatter_admitted(static_k, static_v, token_ranges, torch.cat(slots))
        if self.host_policy is None or not admitted:
            return
        written = _record_event(self.device)
        for key, entry in admitted:
            self._write_through(key, entry, written, plan.first_index)

    def _scatter_admitted(self, static_k: Sequence[torch.Tensor], static_v: Sequence[torch.Tensor],
                          token_ranges: list[tuple[int, int]], host_slots: torch.Tensor) -> None:
        contiguous = all(a[1] == b[0] for a, b in zip(token_ranges, token_ranges[1:]))
        first, last = token_ranges[0][0], token_ranges[-1][1]
        token_index = None
        if not contiguous:
            token_index = to_device_async(torch.cat([torch.arange(a, b) for a, b in token_ranges]), self.device)
        slots = to_device_async(host_slots, self.device)
        for layer in range(self.shape.layers):
            k, v = static_k[layer], static_v[layer]
            if token_index is None:
                k, v = k[first:last], v[first:last]
            else:
                k, v = k.index_select(0, token_index), v.index_select(0, token_index)
            kernels.scatter_to_pages(torch.stack([k, v]), self.pool.layer(layer), slots)

    def _write_through(self, key: Key, entry: GpuEntry, after: torch.cuda.Event | None, now: int) -> None:
        if key in self.host:
            return
        evicted = self.host_policy.admit(key, self.shape.entry_bytes(entry.n_tokens), now)
        if evicted is None:
            self.stats.host_admission_failures += 1
            return
        for victim in evicted:
            self._free_host(victim)
            self.stats.host_evictions += 1
        placement = self._allocate_host(entry.n_tokens)
        if placement is None:  # fragmentation: the policy had room, the arena has no extent
            self.host_policy.remove(key)
            self.stats.host_admission_failures += 1
            return
        job = TransferJob(key, placement, entry.pages, self.pool.host_slots(entry.pages, entry.n_tokens))
        handle = self.engine.store(job, after=after)
        if handle is None:
            for offset in placement.offsets:
                self.arena.free(offset)
            self.host_policy.remove(key)
            self.stats.writeback_failures += 1
            return
        self.stats.bytes_d2h += handle.bytes_moved
        host_entry = HostEntry(placement, writeback=handle)
        self.host[key] = host_entry
        self._note_version(key)
        entry.writeback = handle
        self._pending_writebacks.append(key)
        if handle.done():
            self._finish_writeback(key)

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

    def _poll_writebacks(self) -> None:
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
        """The batch is issued: count its outcomes, unpin its keys, drop stale entries, fence copies."""
        self._count(plan)
        if self.pool is None:
            return
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
