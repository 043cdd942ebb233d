"""Host storage layouts: where one entry's bytes sit in the host arena, and how they move to/from pool pages.

Every layout stores the first `n_tokens` tokens of an entry at every layer; they differ in how many
copies a transfer takes (small copies are launch-bound, DESIGN.md section 7):

- `paged`: host pages shaped like the GPU's. One extent `[layers, n_pages, 2, P, H, D]`; a load is
  one page-sized copy per page per layer, straight into the pool page (no staging).
- `user`: one contiguous extent per entry for all layers, `[layers, 2, n, H, D]`; a load is ONE copy
  per entry into reused device staging rows, then one `kernels.copy_rows` per layer moves every
  entry of the batch into its pool pages. Every layer waits for all the copies (no layer-wise
  overlap). Stores: one `copy_rows` per layer into the store staging rows, then one copy per entry.
- `hybrid` (default): one contiguous extent per entry PER LAYER, `[2, n, H, D]` each; per layer, a
  load copies every entry's K and V rows (one copy per entry) into the staging rows, then ONE
  `copy_rows` moves the whole batch into its pages; layer l is usable as soon as its copies finish
  (layer-wise overlap with the forward). Launches per batch: entries + 1 per layer; stores the same
  way in reverse. No allocation once the staging rows have grown.
- `zerocopy`: `hybrid`'s placement, moved by a kernel (`kernels.copy_rows`) that reads or writes the
  pinned host extents directly over PCIe (unified addressing): ONE launch per layer for every entry
  of a batch, straight into / out of pool pages, no staging buffer and no copy-engine calls.

A load is issued layer-major for a whole batch (`load_layers` calls `layer_done(l)` once layer l of
every job is issued), so per-layer events cover every entry of the batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import kernels
from mtbench.cache.host import HostArena
from mtbench.cache.pool import KVShape, PagedKVPool, to_device_async
from mtbench.errors import MtbenchError


@dataclass
class HostPlacement:
    """Where one entry lives in the host arena: extent offsets (elements) and token count."""

    offsets: list[int]
    n_tokens: int


@dataclass
class TransferJob:
    """One entry moving between its host placement and its pool pages.

    Index tensors are built from `pages` on the host and copied on the stream that reads them (a copy
    issued on the compute stream would sit behind the batch being computed).
    """

    key: tuple[int, int]
    placement: HostPlacement
    pages: list[int]


class HostLayout(ABC):
    """How an entry is laid out on the host and copied to/from pool pages (see module docstring)."""

    name: str = "base"

    def __init__(self, shape: KVShape) -> None:
        self.shape = shape
        self.arena: HostArena | None = None  # set by the TransferEngine that uses this layout
        self._staging: dict[bool, torch.Tensor] = {}  # store? -> [capacity rows, H * D] device buffer

    def _staging_rows(self, n_rows: int, device: torch.device, store: bool = False) -> torch.Tensor:
        """The first `n_rows` rows of a reused device staging buffer, one for loads and one for stores
        (grown to a power of two when short). Reuse is safe: all loads run on one stream and all stores
        on another, so a batch's copies into a buffer run after the previous batch's copies out of it."""
        buffer = self._staging.get(store)
        if buffer is None or buffer.shape[0] < n_rows or buffer.device != device:
            capacity = 1 << max(int(n_rows) - 1, 0).bit_length()
            buffer = torch.empty((capacity, self.shape.heads * self.shape.head_dim), dtype=self.shape.dtype, device=device)
            self._staging[store] = buffer
        return buffer[:n_rows]

    @abstractmethod
    def extent_elements(self, n_tokens: int) -> list[int]:
        """Element count of each host extent an entry of n_tokens needs."""

    def _token_block(self, n_tokens: int) -> tuple[int, int, int, int]:
        return (2, n_tokens, self.shape.heads, self.shape.head_dim)

    def views(self, arena: HostArena, placement: HostPlacement) -> list[torch.Tensor]:
        """Typed tensors over the entry's extents (shapes as in the module docstring)."""
        return [arena.view(offset, shape) for offset, shape in zip(placement.offsets, self._view_shapes(placement.n_tokens))]

    @abstractmethod
    def _view_shapes(self, n_tokens: int) -> list[tuple[int, ...]]: ...

    def reserve(self, n_tokens: int, device: torch.device) -> None:
        """Pre-allocate the load staging rows a batched load of up to n_tokens needs."""
        self._staging_rows(2 * n_tokens * self.shape.layers, device)

    @abstractmethod
    def load_layers(self, jobs: list[TransferJob], views: list[list[torch.Tensor]], pool: PagedKVPool,
                    non_blocking: bool, layer_done: Callable[[int], None]) -> None:
        """Every layer of every job, layer-major; `layer_done(l)` after layer l of all jobs is issued."""

    @abstractmethod
    def store_many(self, jobs: list[TransferJob], views: list[list[torch.Tensor]], pool: PagedKVPool,
                   non_blocking: bool) -> None:
        """Copy every job's entry from its pool pages into its host extents (all layers)."""


class PagedLayout(HostLayout):
    name = "paged"

    def extent_elements(self, n_tokens: int) -> list[int]:
        return [self.shape.layers * self.shape.pages_for(n_tokens) * self.shape.page_tokens
                * self.shape.elements_per_token_layer]

    def _view_shapes(self, n_tokens: int) -> list[tuple[int, ...]]:
        s = self.shape
        return [(s.layers, s.pages_for(n_tokens), 2, s.page_tokens, s.heads, s.head_dim)]

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        """One copy per page per layer, straight into the pool page."""
        for layer in range(self.shape.layers):
            pool_layer = pool.layer(layer)
            for job, job_views in zip(jobs, views):
                for index, page in enumerate(job.pages):
                    pool_layer[page].copy_(job_views[0][layer][index], non_blocking=non_blocking)
            layer_done(layer)

    def store_many(self, jobs, views, pool, non_blocking):
        """One copy per page per layer, straight out of the pool page."""
        for layer in range(self.shape.layers):
            pool_layer = pool.layer(layer)
            for job, job_views in zip(jobs, views):
                for index, page in enumerate(job.pages):
                    job_views[0][layer][index].copy_(pool_layer[page], non_blocking=non_blocking)


class UserLayout(HostLayout):
    name = "user"

    def extent_elements(self, n_tokens: int) -> list[int]:
        return [self.shape.layers * n_tokens * self.shape.elements_per_token_layer]

    def _view_shapes(self, n_tokens: int) -> list[tuple[int, ...]]:
        return [(self.shape.layers, *self._token_block(n_tokens))]

    def _staging_rows_of(self, jobs: list[TransferJob], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(staging rows [layers, R] of every job's K then V rows per layer, pool rows [R], each job's first
        staging row): job j's whole extent sits at staging rows starts[j]:starts[j + 1], layer-major."""
        starts, staging_rows = [0], []
        for job in jobs:
            per_layer = 2 * job.placement.n_tokens
            layer_base = starts[-1] + per_layer * torch.arange(self.shape.layers)
            staging_rows.append(layer_base[:, None] + torch.arange(per_layer)[None, :])
            starts.append(starts[-1] + per_layer * self.shape.layers)
        pool_rows = torch.cat([_pool_rows(job, self.shape) for job in jobs])
        rows = torch.cat(staging_rows, dim=1).to(torch.int32)
        return to_device_async(rows, device), to_device_async(pool_rows, device), starts

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        """ONE copy per entry (all layers) into the staging rows, then one `copy_rows` per layer from the
        staging rows into every entry's pool rows (no layer-wise overlap: every layer needs every copy)."""
        width = self.shape.heads * self.shape.head_dim
        if jobs:
            staging_rows, pool_rows, starts = self._staging_rows_of(jobs, pool.device)
            staging = self._staging_rows(starts[-1], pool.device)
            for job_views, start, end in zip(views, starts, starts[1:]):
                staging[start:end].copy_(job_views[0].view(-1, width), non_blocking=non_blocking)
        for layer in range(self.shape.layers):
            if jobs:
                kernels.copy_rows(staging, staging_rows[layer], pool.layer(layer).view(-1, width), pool_rows)
            layer_done(layer)

    def store_many(self, jobs, views, pool, non_blocking):
        """One `copy_rows` per layer gathers every entry into the store staging rows, then ONE copy per entry."""
        width = self.shape.heads * self.shape.head_dim
        staging_rows, pool_rows, starts = self._staging_rows_of(jobs, pool.device)
        staging = self._staging_rows(starts[-1], pool.device, store=True)
        for layer in range(self.shape.layers):
            kernels.copy_rows(pool.layer(layer).view(-1, width), pool_rows, staging, staging_rows[layer])
        for job_views, start, end in zip(views, starts, starts[1:]):
            job_views[0].view(-1, width).copy_(staging[start:end], non_blocking=non_blocking)


class HybridLayout(HostLayout):
    name = "hybrid"

    def reserve(self, n_tokens, device):
        self._staging_rows(2 * n_tokens, device)

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        """Per layer: one copy per entry of its K and V rows into the staging rows, then ONE
        `copy_rows` from the staging rows into every entry's pool rows."""
        if not jobs:
            for layer in range(self.shape.layers):
                layer_done(layer)
            return
        width = self.shape.heads * self.shape.head_dim
        pool_rows = to_device_async(torch.cat([_pool_rows(job, self.shape) for job in jobs]), pool.device)
        staging = self._staging_rows(pool_rows.numel(), pool.device)
        staging_rows = torch.arange(pool_rows.numel(), dtype=torch.int32, device=pool.device)
        starts = [0]
        for job in jobs:
            starts.append(starts[-1] + 2 * job.placement.n_tokens)
        for layer in range(self.shape.layers):
            for job_views, start, end in zip(views, starts, starts[1:]):
                staging[start:end].copy_(job_views[layer].view(-1, width), non_blocking=non_blocking)
            kernels.copy_rows(staging, staging_rows, pool.layer(layer).view(-1, width), pool_rows)
            layer_done(layer)

    def extent_elements(self, n_tokens: int) -> list[int]:
        return [n_tokens * self.shape.elements_per_token_layer] * self.shape.layers

    def _view_shapes(self, n_tokens: int) -> list[tuple[int, ...]]:
        return [self._token_block(n_tokens)] * self.shape.layers

    def store_many(self, jobs, views, pool, non_blocking):
        """Per layer: ONE `copy_rows` gathers every entry's K and V rows into the store staging rows, then
        one copy per entry into its extent of that layer."""
        width = self.shape.heads * self.shape.head_dim
        pool_rows = to_device_async(torch.cat([_pool_rows(job, self.shape) for job in jobs]), pool.device)
        staging = self._staging_rows(self.shape.layers * pool_rows.numel(), pool.device, store=True)
        staging_rows = torch.arange(staging.shape[0], dtype=torch.int32, device=pool.device).view(self.shape.layers, -1)
        starts = [0]
        for job in jobs:
            starts.append(starts[-1] + 2 * job.placement.n_tokens)
        for layer in range(self.shape.layers):
            kernels.copy_rows(pool.layer(layer).view(-1, width), pool_rows, staging, staging_rows[layer])
            layer_rows = staging[layer * pool_rows.numel(): (layer + 1) * pool_rows.numel()]
            for job_views, start, end in zip(views, starts, starts[1:]):
                job_views[layer].view(-1, width).copy_(layer_rows[start:end], non_blocking=non_blocking)


def _pool_rows(job: TransferJob, shape: KVShape) -> torch.Tensor:
    """int32 rows of the job's K then V tokens in one pool layer viewed as [pages * 2 * P, H * D]."""
    k_rows = shape.k_rows(job.pages, job.placement.n_tokens)
    return torch.from_numpy(np.concatenate([k_rows, k_rows + shape.page_tokens]))


class ZeroCopyLayout(HybridLayout):
    """`hybrid`'s host placement, moved by a kernel instead of the copy engine: `kernels.copy_rows` reads
    (loads) or writes (stores) the pinned host extents directly through unified addressing, one launch
    per layer for every entry of a batch, straight into / out of pool pages (no staging buffer)."""

    name = "zerocopy"

    def reserve(self, n_tokens, device):
        """Nothing to reserve: no staging buffer."""

    def _rows(self, tensor: torch.Tensor) -> torch.Tensor:
        width = self.shape.heads * self.shape.head_dim
        return tensor[: tensor.numel() // width * width].view(-1, width)

    def _indices(self, jobs: list[TransferJob], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(host rows [layers, R], pool rows [R]) of every K and V token of `jobs`, in rows of H * D
        elements of the arena and of one pool layer; on `device` in one copy per tensor."""
        width = self.shape.heads * self.shape.head_dim
        host_rows, pool_rows = [], []
        for job in jobs:
            n = job.placement.n_tokens
            bases = torch.tensor(job.placement.offsets, dtype=torch.long)
            if bool((bases % width).any()):
                raise RuntimeError(f"host extent offsets {job.placement.offsets} are not whole rows of {width} elements")
            within = torch.arange(2 * n)
            host_rows.append(bases[:, None] // width + within[None, :])
            pool_rows.append(_pool_rows(job, self.shape).long())
        host = torch.cat(host_rows, dim=1)
        dtype = torch.int32 if int(host.max()) < 2**31 else torch.long
        return to_device_async(host.to(dtype), device), to_device_async(torch.cat(pool_rows).to(dtype), device)

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        if not jobs:
            for layer in range(self.shape.layers):
                layer_done(layer)
            return
        host_rows, pool_rows = self._indices(jobs, pool.device)
        arena_rows = self._rows(self.arena.buffer)
        for layer in range(self.shape.layers):
            kernels.copy_rows(arena_rows, host_rows[layer], self._rows(pool.layer(layer)), pool_rows)
            layer_done(layer)

    def store_many(self, jobs, views, pool, non_blocking):
        host_rows, pool_rows = self._indices(jobs, pool.device)
        arena_rows = self._rows(self.arena.buffer)
        for layer in range(self.shape.layers):
            kernels.copy_rows(self._rows(pool.layer(layer)), pool_rows, arena_rows, host_rows[layer])


LAYOUTS: dict[str, type[HostLayout]] = {cls.name: cls for cls in (PagedLayout, UserLayout, HybridLayout, ZeroCopyLayout)}
LAYOUT_NAMES: tuple[str, ...] = tuple(LAYOUTS)


def make_layout(name: str, shape: KVShape) -> HostLayout:
    """The layout called `name` (MtbenchError naming the choices when unknown)."""
    if name not in LAYOUTS:
        raise MtbenchError(f"unknown host layout {name!r} (choose from {', '.join(LAYOUT_NAMES)})")
    return LAYOUTS[name](shape)
