"""Host storage layouts: where one entry's bytes sit in the host arena, and how they move to/from pool pages.

Every layout stores the first `n_tokens` tokens of an entry at every layer; they differ in how many
copies a transfer takes (small copies are launch-bound, DESIGN.md section 7):

- `paged`: host pages shaped like the GPU's. One extent `[layers, n_pages, 2, P, H, D]`; a load is
  one page-sized copy per page per layer, straight into the pool page (no staging).
- `user`: one contiguous extent per entry for all layers, `[layers, 2, n, H, D]`; a load is ONE copy
  per entry into reused device staging rows, then ONE index copy moves every entry of the batch, all
  layers, into its pool pages. Every layer waits for all the copies (no layer-wise overlap). Stores:
  one index copy into the store staging rows, then one copy per entry.
- `hybrid` (default): one contiguous extent per entry PER LAYER, `[2, n, H, D]` each; per layer, a
  load copies every entry's K and V rows (one copy per entry) into the staging rows, then ONE index
  copy moves the whole batch into its pages; layer l is usable as soon as its copies finish
  (layer-wise overlap with the forward). Launches per batch: entries + 1 per layer; stores the same
  way in reverse. No allocation once the staging rows have grown.
- `zerocopy`: `hybrid`'s placement, moved by a kernel (`kernels.copy_rows`) that reads or writes the
  pinned host extents directly over PCIe (unified addressing): ONE launch per layer for every entry
  of a batch, straight into / out of pool pages, no staging buffer and no copy-engine calls.
An fp8 host tier (`--kv-dtype fp8`, an `Fp8RowArena`; rows of e4m3 codes + a scale per token and head,
kernels/fp8_rows_ref.py; lossy) halves the bytes over PCIe. Its entries take 2n arena ROWS per layer
in both fp8 layouts (the same host bytes; `paged` and `user` have no fp8 path):
- `hybrid-fp8` (`Fp8HybridLayout`, what `--layout hybrid` takes): `hybrid` with each layer's extent one
  block, the 2n rows' codes then their scales; per layer, a load copies every entry's block with the
  copy engine (one copy per entry) into device staging, then ONE fused dequantise + scatter kernel
  (`kernels.dequantize_scatter_fp8`) writes the whole batch into its pool rows; layer-wise overlap as
  in `hybrid`. Stores: ONE fused gather + quantise launch per layer into store staging, then one copy
  per entry.
- `zerocopy-fp8` (`Fp8ZeroCopyLayout`, what `--layout zerocopy` takes): `zerocopy` over the arena's two
  planes (codes, scales): the kernel dequantises while reading the pinned host rows over PCIe (and
  quantises while writing them), one launch per layer, no staging, no copy engine; it occupies SMs
  for the whole transfer, which the copy engine does not.

A load is issued layer-major for a whole batch (`load_layers` calls `layer_done(l)` once layer l of
every job is issued), so per-layer events cover every entry of the batch. The per-entry copies of one
layer are issued in one call (`torch._foreach_copy_`), and index copies use PyTorch's own kernels: the
host issues a batch's transfers in a few dozen calls, off the replay's critical path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import kernels
from kernels.fp8_rows_ref import StagedFp8Rows, code_alignment, fp8_row_bytes
from mtbench.cache.extents import ALIGN_BYTES, extent_lengths
from mtbench.cache.host import Fp8RowArena, HostArena
from mtbench.cache.pool import FP8, FP8_LAYOUT, KVShape, PagedKVPool, to_device_async
from mtbench.errors import MtbenchError


@dataclass
class HostPlacement:
    """Where one entry lives in the host arena: extent offsets (elements) and token count; `rows` caches
    its extents as row views (`HostLayout.row_views`)."""

    offsets: list[int]
    n_tokens: int
    rows: list[torch.Tensor] | None = field(default=None, repr=False, compare=False)


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
        self.width = shape.heads * shape.head_dim  # elements of one K or V row (one token, one layer)
        self.arena: HostArena | None = None  # set by the TransferEngine that uses this layout
        self._staging: dict[bool, torch.Tensor] = {}  # store? -> reused device buffer (`_reused_staging`)

    def _staging_rows(self, n_rows: int, device: torch.device, store: bool = False) -> torch.Tensor:
        """The first `n_rows` rows of [H * D] of a reused device staging buffer (`_reused_staging`)."""
        return self._reused_staging(n_rows, (self.width,), self.shape.dtype, device, store)

    def _reused_staging(self, n: int, row_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                        store: bool) -> torch.Tensor:
        """The first `n` rows of a reused device staging buffer, one for loads and one for stores (grown
        to a power of two when short). Reuse is safe: all loads run on one stream and all stores on
        another, so a batch's copies into a buffer run after the previous batch's copies out of it."""
        buffer = self._staging.get(store)
        if buffer is None or buffer.shape[0] < n or buffer.device != device:
            capacity = 1 << max(int(n) - 1, 0).bit_length()
            buffer = torch.empty((capacity, *row_shape), dtype=dtype, device=device)
            self._staging[store] = buffer
        return buffer[:n]

    @property
    def bytes_per_token(self) -> int:
        """Host bytes (= bytes over PCIe) of one token's K and V across all layers."""
        return self.shape.bytes_per_token

    def extent_elements(self, n_tokens: int) -> list[int]:
        """Element count of each host extent an entry of n_tokens needs (`cache.extents.extent_lengths`)."""
        s = self.shape
        return extent_lengths(self.name, s.layers, s.elements_per_token_layer, s.page_tokens, n_tokens)

    def _token_block(self, n_tokens: int) -> tuple[int, int, int, int]:
        return (2, n_tokens, self.shape.heads, self.shape.head_dim)

    def views(self, arena: HostArena, placement: HostPlacement) -> list[torch.Tensor]:
        """Typed tensors over the entry's extents (shapes as in the module docstring)."""
        return [arena.view(offset, shape) for offset, shape in zip(placement.offsets, self._view_shapes(placement.n_tokens))]

    def row_views(self, arena: HostArena, placement: HostPlacement) -> list[torch.Tensor]:
        """The entry's extents as [rows, H * D] tensors (cached on the placement: views are built once)."""
        if placement.rows is None:
            placement.rows = [view.view(-1, self.width) for view in self.views(arena, placement)]
        return placement.rows

    @abstractmethod
    def _view_shapes(self, n_tokens: int) -> list[tuple[int, ...]]: ...

    def reserve(self, n_tokens: int, device: torch.device) -> None:
        """Pre-allocate the load staging rows a batched load of up to n_tokens needs."""
        self._staging_rows(2 * n_tokens * self.shape.layers, device)

    @abstractmethod
    def load_layers(self, jobs: list[TransferJob], views: list[list[torch.Tensor]], pool: PagedKVPool,
                    non_blocking: bool, layer_done: Callable[[int], None]) -> None:
        """Every layer of every job, layer-major; `layer_done(l)` after layer l of all jobs is issued.
        `views[j]` are job j's `row_views`."""

    def _layer_by_layer(self, layer_done: Callable[[int], None], load_layer: Callable[[int], None] | None = None) -> None:
        """`load_layer(l)` then `layer_done(l)` for every layer (only the signals when nothing loads)."""
        for layer in range(self.shape.layers):
            if load_layer is not None:
                load_layer(layer)
            layer_done(layer)

    @abstractmethod
    def store_many(self, jobs: list[TransferJob], views: list[list[torch.Tensor]], pool: PagedKVPool,
                   non_blocking: bool) -> None:
        """Copy every job's entry from its pool pages into its host extents (all layers)."""

    def _pool_rows(self, jobs: list[TransferJob], device: torch.device) -> torch.Tensor:
        """int64 rows, on `device` in one copy, of every job's K then V tokens in one pool layer viewed as
        [pages * 2 * P, H * D], job after job."""
        return to_device_async(torch.from_numpy(np.concatenate([_pool_rows(job, self.shape) for job in jobs])), device)

    def _slices(self, staging: torch.Tensor, jobs: list[TransferJob], rows_per_token: int) -> list[torch.Tensor]:
        """Consecutive slices of `staging`, `rows_per_token * n_tokens` rows per job."""
        sizes = [rows_per_token * job.placement.n_tokens for job in jobs]
        return list(staging.split(sizes))


class PagedLayout(HostLayout):
    name = "paged"


    def _view_shapes(self, n_tokens: int) -> list[tuple[int, ...]]:
        s = self.shape
        return [(s.layers, s.pages_for(n_tokens), 2, s.page_tokens, s.heads, s.head_dim)]

    def _pages(self, view: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """A row view of the extent as [layers, pages, 2 * P * H * D] (one element row per page)."""
        return view.view(self.shape.layers, self.shape.pages_for(n_tokens), -1)

    def _page_pairs(self, jobs: list[TransferJob], views: list[list[torch.Tensor]], pool: PagedKVPool, layer: int):
        """(pool page, host page) of every page of every job at `layer`, each as one row of elements."""
        pool_layer = pool.layer(layer).flatten(1)
        for job, job_views in zip(jobs, views):
            host_pages = self._pages(job_views[0], job.placement.n_tokens)[layer]
            for index, page in enumerate(job.pages):
                yield pool_layer[page], host_pages[index]

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        """One copy per page per layer, straight into the pool page."""
        for layer in range(self.shape.layers):
            for pool_page, host_page in self._page_pairs(jobs, views, pool, layer):
                pool_page.copy_(host_page, non_blocking=non_blocking)
            layer_done(layer)

    def store_many(self, jobs, views, pool, non_blocking):
        """One copy per page per layer, straight out of the pool page."""
        for layer in range(self.shape.layers):
            for pool_page, host_page in self._page_pairs(jobs, views, pool, layer):
                host_page.copy_(pool_page, non_blocking=non_blocking)


class UserLayout(HostLayout):
    name = "user"


    def _view_shapes(self, n_tokens: int) -> list[tuple[int, ...]]:
        return [(self.shape.layers, *self._token_block(n_tokens))]

    def _all_layer_rows(self, jobs: list[TransferJob], pool: PagedKVPool) -> torch.Tensor:
        """int64 rows of `pool.kv.view(-1, H * D)` (every layer) in the order of the jobs' extents laid end
        to end: job after job, layer after layer, K then V tokens; on the pool's device in one copy."""
        layer_stride = pool.kv[0].numel() // self.width
        layer_base = (np.arange(self.shape.layers, dtype=np.int64) * layer_stride)[:, None]
        rows = np.concatenate([(layer_base + _pool_rows(job, self.shape)[None, :]).reshape(-1) for job in jobs])
        return to_device_async(torch.from_numpy(rows), pool.device)

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        """ONE copy per entry (all layers) into the staging rows, then ONE index copy from the staging rows
        into every layer's pool rows (no layer-wise overlap: every layer waits for every copy)."""
        if jobs:
            rows = self._all_layer_rows(jobs, pool)
            staging = self._staging_rows(rows.numel(), pool.device)
            torch._foreach_copy_(self._slices(staging, jobs, 2 * self.shape.layers), [v[0] for v in views],
                                 non_blocking=non_blocking)
            pool.kv.view(-1, self.width).index_copy_(0, rows, staging)
        for layer in range(self.shape.layers):
            layer_done(layer)

    def store_many(self, jobs, views, pool, non_blocking):
        """ONE index copy gathers every entry (all layers) into the store staging rows, then ONE copy per entry."""
        rows = self._all_layer_rows(jobs, pool)
        staging = self._staging_rows(rows.numel(), pool.device, store=True)
        torch.index_select(pool.kv.view(-1, self.width), 0, rows, out=staging)
        torch._foreach_copy_([v[0] for v in views], self._slices(staging, jobs, 2 * self.shape.layers),
                             non_blocking=non_blocking)


class HybridLayout(HostLayout):
    name = "hybrid"

    def reserve(self, n_tokens, device):
        self._staging_rows(2 * n_tokens, device)

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        """Per layer: one copy per entry of its K and V rows into the staging rows, then ONE index copy
        from the staging rows into every entry's pool rows."""
        if not jobs:
            self._layer_by_layer(layer_done)
            return
        pool_rows = self._pool_rows(jobs, pool.device)
        staging = self._staging_rows(pool_rows.numel(), pool.device)
        slices = self._slices(staging, jobs, 2)

        def load_layer(layer: int) -> None:
            torch._foreach_copy_(slices, [v[layer] for v in views], non_blocking=non_blocking)
            pool.layer(layer).view(-1, self.width).index_copy_(0, pool_rows, staging)

        self._layer_by_layer(layer_done, load_layer)


    def _view_shapes(self, n_tokens: int) -> list[tuple[int, ...]]:
        return [self._token_block(n_tokens)] * self.shape.layers

    def store_many(self, jobs, views, pool, non_blocking):
        """Per layer: ONE index copy gathers every entry's K and V rows into the store staging rows, then
        one copy per entry into its extent of that layer."""
        pool_rows = self._pool_rows(jobs, pool.device)
        staging = self._staging_rows(self.shape.layers * pool_rows.numel(), pool.device, store=True)
        for layer, layer_rows in enumerate(staging.split(pool_rows.numel())):
            torch.index_select(pool.layer(layer).view(-1, self.width), 0, pool_rows, out=layer_rows)
            torch._foreach_copy_([v[layer] for v in views], self._slices(layer_rows, jobs, 2), non_blocking=non_blocking)


def _pool_rows(job: TransferJob, shape: KVShape) -> np.ndarray:
    """int64 rows of the job's K then V tokens in one pool layer viewed as [pages * 2 * P, H * D]."""
    k_rows = shape.k_rows(job.pages, job.placement.n_tokens).astype(np.int64)
    return np.concatenate([k_rows, k_rows + shape.page_tokens])


class ZeroCopyLayout(HybridLayout):
    """`hybrid`'s host placement, moved by a kernel instead of the copy engine: `kernels.copy_rows` reads
    (loads) or writes (stores) the pinned host extents directly through unified addressing, one launch
    per layer for every entry of a batch, straight into / out of pool pages (no staging buffer)."""

    name = "zerocopy"

    def reserve(self, n_tokens, device):
        """Nothing to reserve: no staging buffer."""

    def _rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[: tensor.numel() // self.width * self.width].view(-1, self.width)

    def _indices(self, jobs: list[TransferJob], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(host rows [layers, R], pool rows [R]) of every K and V token of `jobs`, in rows of H * D
        elements of the arena and of one pool layer; on `device` in one copy per tensor."""
        host_rows, pool_rows = [], []
        for job in jobs:
            host_rows.append(self._first_rows(job.placement)[:, None] + np.arange(2 * job.placement.n_tokens)[None, :])
            pool_rows.append(_pool_rows(job, self.shape))
        host = np.concatenate(host_rows, axis=1)
        dtype = np.int32 if int(host.max()) < 2**31 else np.int64
        return (to_device_async(torch.from_numpy(host.astype(dtype)), device),
                to_device_async(torch.from_numpy(np.concatenate(pool_rows).astype(dtype)), device))

    def _first_rows(self, placement: HostPlacement) -> np.ndarray:
        """Arena row (of H * D elements) where each layer's extent starts."""
        bases = np.asarray(placement.offsets, dtype=np.int64)
        if (bases % self.width).any():
            raise RuntimeError(f"host extent offsets {placement.offsets} are not whole rows of {self.width} elements")
        return bases // self.width

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        if not jobs:
            self._layer_by_layer(layer_done)
            return
        host_rows, pool_rows = self._indices(jobs, pool.device)
        self._layer_by_layer(layer_done, lambda layer: self._load_layer(host_rows[layer], self._rows(pool.layer(layer)),
                                                                        pool_rows))

    def store_many(self, jobs, views, pool, non_blocking):
        host_rows, pool_rows = self._indices(jobs, pool.device)
        for layer in range(self.shape.layers):
            self._store_layer(self._rows(pool.layer(layer)), pool_rows, host_rows[layer])

    def _load_layer(self, host_rows: torch.Tensor, pool_layer: torch.Tensor, pool_rows: torch.Tensor) -> None:
        kernels.copy_rows(self._rows(self.arena.buffer), host_rows, pool_layer, pool_rows)

    def _store_layer(self, pool_layer: torch.Tensor, pool_rows: torch.Tensor, host_rows: torch.Tensor) -> None:
        kernels.copy_rows(pool_layer, pool_rows, self._rows(self.arena.buffer), host_rows)


class Fp8Rows:
    """What every fp8 host layout shares: an entry's extent per layer is 2n `Fp8RowArena` ROWS (K rows,
    then V rows), so placements hold row offsets, and a token costs the fp8 bytes on the host."""

    shape: KVShape

    @property
    def bytes_per_token(self) -> int:
        return self.shape.host_bytes_per_token(FP8)

    def extent_elements(self, n_tokens: int) -> list[int]:
        """Rows (not elements) of each layer's extent in the `Fp8RowArena`."""
        return [2 * n_tokens] * self.shape.layers


class Fp8ZeroCopyLayout(Fp8Rows, ZeroCopyLayout):
    """`zerocopy` over an fp8 host tier (`Fp8RowArena`, row format in kernels/fp8_rows_ref.py): a load
    dequantises the pinned host rows straight into the bf16 pool pages, a store quantises pool pages
    straight into host rows, one kernel launch per layer either way. An entry's extent per layer is 2n
    arena ROWS (K rows, then V rows), so placements hold row offsets. Lossy: error bound in the ref."""

    name = FP8_LAYOUT

    def row_views(self, arena: Fp8RowArena, placement: HostPlacement) -> list[torch.Tensor]:
        """Each layer's e4m3 code rows [2n, H * D] (K then V); the scales sit at the same rows of arena.scales."""
        if placement.rows is None:
            rows = 2 * placement.n_tokens
            placement.rows = [arena.codes[offset : offset + rows] for offset in placement.offsets]
        return placement.rows

    def _first_rows(self, placement: HostPlacement) -> np.ndarray:
        return np.asarray(placement.offsets, dtype=np.int64)

    def _load_layer(self, host_rows: torch.Tensor, pool_layer: torch.Tensor, pool_rows: torch.Tensor) -> None:
        kernels.dequantize_rows_fp8(self.arena.codes, self.arena.scales, host_rows, pool_layer, pool_rows)

    def _store_layer(self, pool_layer: torch.Tensor, pool_rows: torch.Tensor, host_rows: torch.Tensor) -> None:
        kernels.quantize_rows_fp8(pool_layer, pool_rows, self.arena.codes, self.arena.scales, host_rows)


@dataclass
class StagedBatch:
    """Where a batch's fp8 blocks sit in one layer's staging: entry j's block (2n_j rows: codes, then
    scales) at bytes [bases[j], bases[j] + sizes[j]), every base a multiple of `ALIGN_BYTES`; and, per
    staged row (job after job, K then V tokens), its code start (in units of `align` bytes), its scale
    start (bytes) and its row in one pool layer, on the device."""

    bases: list[int]
    sizes: list[int]
    layer_bytes: int  # staging bytes per layer (a multiple of ALIGN_BYTES)
    code_starts: torch.Tensor
    scale_starts: torch.Tensor
    pool_rows: torch.Tensor

    def rows(self, buffer: torch.Tensor, heads: int, align: int) -> StagedFp8Rows:
        """The staged rows of one layer's staging `buffer` (`layer_bytes` bytes)."""
        return StagedFp8Rows(buffer, self.code_starts, self.scale_starts, heads, align)

    def blocks(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Each entry's block in one layer's staging `buffer`."""
        return [buffer[base : base + size] for base, size in zip(self.bases, self.sizes)]


class Fp8HybridLayout(Fp8Rows, HybridLayout):
    """`hybrid` over an fp8 host tier (`Fp8RowArena` used as blocks, row format in kernels/fp8_rows_ref.py):
    an entry's extent per layer is 2n arena ROWS (K rows, then V rows) holding one block, their codes
    [2n, H * D] then their scales [2n, H], so it moves in ONE copy-engine copy. Per layer, a load copies
    every entry's block into the load staging (blocks at ALIGN_BYTES-aligned offsets), then ONE fused
    dequantise + scatter launch fills the whole batch's pool rows of that layer; a store runs ONE fused
    gather + quantise launch into that layer's part of the store staging, then one copy per entry.
    The numbers stored and loaded are the zero-copy fp8 layout's, bit for bit. Lossy: bound in the ref."""

    name = "hybrid-fp8"

    def __init__(self, shape: KVShape) -> None:
        super().__init__(shape)
        self.row_bytes = fp8_row_bytes(shape.heads, shape.head_dim)
        self.align = code_alignment(self.width)  # code rows laid end to end from an aligned base

    def row_views(self, arena: Fp8RowArena, placement: HostPlacement) -> list[torch.Tensor]:
        """Each layer's block of bytes (codes of the 2n rows, then their scales)."""
        if placement.rows is None:
            placement.rows = [arena.block(offset, 2 * placement.n_tokens) for offset in placement.offsets]
        return placement.rows

    def _staging_bytes(self, n_bytes: int, device: torch.device, store: bool = False) -> torch.Tensor:
        return self._reused_staging(n_bytes, (), torch.uint8, device, store)

    def reserve(self, n_tokens, device):
        """Room for n_tokens of blocks, each padded to ALIGN_BYTES (at most one pad per token)."""
        self._staging_bytes(n_tokens * (2 * self.row_bytes + ALIGN_BYTES), device)

    def staged_batch(self, jobs: list[TransferJob], device: torch.device) -> StagedBatch:
        """The staging plan of `jobs` (the same for every layer), its per-row indices on `device` in one copy."""
        width, heads = self.width, self.shape.heads
        bases, sizes, code_at, scale_at = [], [], [], []
        base = 0
        for job in jobs:
            rows = 2 * job.placement.n_tokens
            position = np.arange(rows, dtype=np.int64)
            bases.append(base)
            sizes.append(rows * self.row_bytes)
            code_at.append((base + position * width) // self.align)
            scale_at.append(base + rows * width + position * heads)
            base += -(-rows * self.row_bytes // ALIGN_BYTES) * ALIGN_BYTES
        pool_rows = np.concatenate([_pool_rows(job, self.shape) for job in jobs])
        indices = np.stack([np.concatenate(code_at), np.concatenate(scale_at), pool_rows])
        small = int(indices.max(initial=0)) < 2**31
        indices = to_device_async(torch.from_numpy(indices.astype(np.int32) if small else indices), device)
        return StagedBatch(bases, sizes, base, indices[0], indices[1], indices[2])

    def load_layers(self, jobs, views, pool, non_blocking, layer_done):
        """Per layer: one copy per entry of its block into the staging, then ONE dequantise + scatter
        launch from the staging into every entry's pool rows."""
        if not jobs:
            self._layer_by_layer(layer_done)
            return
        batch = self.staged_batch(jobs, pool.device)
        staging = self._staging_bytes(batch.layer_bytes, pool.device)
        staged, blocks = batch.rows(staging, self.shape.heads, self.align), batch.blocks(staging)

        def load_layer(layer: int) -> None:
            torch._foreach_copy_(blocks, [v[layer] for v in views], non_blocking=non_blocking)
            kernels.dequantize_scatter_fp8(staged, pool.layer(layer).view(-1, self.width), batch.pool_rows)

        self._layer_by_layer(layer_done, load_layer)

    def store_many(self, jobs, views, pool, non_blocking):
        """Per layer: ONE gather + quantise launch of every entry's K and V rows into that layer's part of
        the store staging, then one copy per entry of its block into its extent of that layer."""
        batch = self.staged_batch(jobs, pool.device)
        staging = self._staging_bytes(self.shape.layers * batch.layer_bytes, pool.device, store=True)
        for layer in range(self.shape.layers):
            layer_staging = staging[layer * batch.layer_bytes : (layer + 1) * batch.layer_bytes]
            staged = batch.rows(layer_staging, self.shape.heads, self.align)
            kernels.gather_quantize_fp8(pool.layer(layer).view(-1, self.width), batch.pool_rows, staged)
            torch._foreach_copy_([v[layer] for v in views], batch.blocks(layer_staging), non_blocking=non_blocking)


LAYOUTS: dict[str, type[HostLayout]] = {cls.name: cls for cls in (PagedLayout, UserLayout, HybridLayout, ZeroCopyLayout)}
LAYOUT_NAMES: tuple[str, ...] = tuple(LAYOUTS)
FP8_LAYOUTS: dict[str, type[HostLayout]] = {"hybrid": Fp8HybridLayout, "zerocopy": Fp8ZeroCopyLayout}  # --layout -> fp8


def host_layout_name(name: str, host_kv: str | None) -> str:
    """The layout that moves `name`'s entries for a host tier storing `host_kv` (MtbenchError when none)."""
    if name not in LAYOUTS:
        raise MtbenchError(f"unknown host layout {name!r} (choose from {', '.join(LAYOUT_NAMES)})")
    if host_kv is None:
        return name
    if name not in FP8_LAYOUTS:
        raise MtbenchError(f"--layout {name} has no {host_kv} host tier (--kv-dtype {host_kv} works with "
                           f"{' or '.join(FP8_LAYOUTS)})")
    return FP8_LAYOUTS[name].name


def make_layout(name: str, shape: KVShape, host_kv: str | None = None) -> HostLayout:
    """The layout called `name` for a host tier storing `host_kv` (None: the pool's dtype; MtbenchError
    naming the choices when unknown)."""
    host_layout_name(name, host_kv)
    return (LAYOUTS if host_kv is None else FP8_LAYOUTS)[name](shape)
