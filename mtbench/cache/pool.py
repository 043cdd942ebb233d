"""The GPU tier's storage: one paged K/V pool tensor and its free-page list.

Data structures:
- `KVShape`: what one token's K/V looks like (layers, heads, head_dim, dtype) and the page size P.
- `PagedKVPool.kv`: ONE tensor `[layers, pages, 2, P, heads, head_dim]` (index 0 of dim 2 = K, 1 = V).
  Layer l's slice `kv[l]` is `[pages, 2, P, H, D]`, which is what `kernels.PagedPrefix` and
  `kernels.scatter_to_pages` take. A page holds P tokens of ONE entry at EVERY layer, so an entry
  has one page list (its page table) shared by all layers.

Pages [0, num_pages) are the cache's (its byte capacity); pages [num_pages, num_pages + scratch_pages)
are scratch: room for entries a batch in flight reads or computes but the cache does not keep (the
replay's working memory, outside the capacity the policies manage).

Invariants: every page is either free (in `_free` or `_scratch_free`, by range) or owned by exactly
one allocation; `allocate` / `allocate_scratch` are all-or-nothing; freeing a page that is not
allocated raises (a double free is a bug, never silently ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kernels.fp8_rows_ref import fp8_row_bytes
from mtbench.cache.extents import HostGeometry
from mtbench.cache.sizes import EntrySizer
from mtbench.device import PINNED_STAGING
from mtbench.errors import MtbenchError
from mtbench.units import format_bytes


FP8 = "fp8"
FP8_LAYOUT = "zerocopy-fp8"  # the extent geometry of an fp8 host tier (2n rows per layer; both fp8 layouts)


def parse_host_kv(name: str, dtype: str) -> str | None:
    """`--kv-dtype` -> the host tier's KV dtype: None (the model's `dtype`: exact) or "fp8" (lossy)."""
    if name == FP8:
        return FP8
    if name in ("auto", dtype):
        return None
    raise MtbenchError(f"--kv-dtype {name!r}: choose {dtype} (the model's dtype, exact; also auto) or {FP8} (lossy)")


@dataclass(frozen=True)
class KVShape:
    """Per-token K/V geometry of a model, plus the page size used by the GPU pool."""

    layers: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    page_tokens: int = 32

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def elements_per_token_layer(self) -> int:
        """K and V of one token at one layer."""
        return 2 * self.heads * self.head_dim

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token over all layers (= MTGRConfig.kv_bytes_per_token)."""
        return self.layers * self.elements_per_token_layer * self.element_size

    @property
    def page_bytes(self) -> int:
        """Bytes of one pool page across all layers (P tokens)."""
        return self.bytes_per_token * self.page_tokens

    def pages_for(self, n_tokens: int) -> int:
        return -(-int(n_tokens) // self.page_tokens)

    def k_rows(self, pages: list[int], n_tokens: int) -> np.ndarray:
        """int32 rows of an entry's first n_tokens K tokens in one pool layer viewed as rows of H * D
        (`kv[l].view(-1, H * D)`: page p holds K rows p*2P .. p*2P+P-1, then its V rows); V rows are
        these + P."""
        position = np.arange(n_tokens, dtype=np.int32)
        pages = np.asarray(pages, dtype=np.int32)[position // self.page_tokens]
        return pages * (2 * self.page_tokens) + position % self.page_tokens

    @property
    def sizer(self) -> EntrySizer:
        """The entry-size function of this geometry (the one both planes charge entries by)."""
        return EntrySizer(self.bytes_per_token, self.page_tokens)

    def host_bytes_per_token(self, host_kv: str | None) -> int:
        """Bytes of one token's K and V over all layers in a host tier storing `host_kv`: None = the
        pool's dtype, "fp8" = the fp8 row format (kernels/fp8_rows_ref.py: 2 rows per token and layer)."""
        if host_kv is None:
            return self.bytes_per_token
        if host_kv != FP8:
            raise MtbenchError(f"unknown host KV dtype {host_kv!r} (the host tier stores the model's dtype or {FP8})")
        return 2 * self.layers * fp8_row_bytes(self.heads, self.head_dim)

    def sizer_for(self, host_kv: str | None) -> EntrySizer:
        """`sizer` with the host tier storing `host_kv` (its entries and copies sized in that dtype)."""
        host = self.host_bytes_per_token(host_kv)
        return EntrySizer(self.bytes_per_token, self.page_tokens, host_bytes_per_token=0 if host_kv is None else host)

    def host_geometry(self, layout: str, host_kv: str | None, capacity_bytes: int, fit: str = "first") -> HostGeometry:
        """The host arena's extent geometry (the real arena's and the simulator's): `layout`'s extents
        in elements of the pool dtype, or for fp8 the `Fp8RowArena`'s one extent of 2n ROWS per layer."""
        if host_kv is None:
            return HostGeometry(layout, self.layers, self.elements_per_token_layer, self.page_tokens,
                                self.element_size, capacity_bytes, fit)
        self.host_bytes_per_token(host_kv)
        return HostGeometry(FP8_LAYOUT, self.layers, 2, self.page_tokens, fp8_row_bytes(self.heads, self.head_dim),
                            capacity_bytes, fit)

    def entry_bytes(self, n_tokens: int) -> int:
        """Bytes an entry of n_tokens is charged in either tier (`EntrySizer.size_of`)."""
        return self.sizer.size_of(n_tokens)


class PagedKVPool:
    """A byte-capacity pool of pages in device memory (HBM on CUDA, plain memory on the CPU)."""

    def __init__(self, shape: KVShape, capacity_bytes: int, device: torch.device | str, scratch_pages: int = 0) -> None:
        self.shape = shape
        self.num_pages = int(capacity_bytes) // shape.page_bytes
        self.scratch_pages = int(scratch_pages)
        if self.num_pages < 1:
            raise MtbenchError(
                f"GPU cache capacity {format_bytes(capacity_bytes)} is smaller than one page "
                f"({format_bytes(shape.page_bytes)} = {shape.page_tokens} tokens x {shape.bytes_per_token} B)"
            )
        total = self.num_pages + self.scratch_pages
        size = (shape.layers, total, 2, shape.page_tokens, shape.heads, shape.head_dim)
        try:
            self.kv = torch.zeros(size, dtype=shape.dtype, device=device)
        except RuntimeError as err:  # CUDA out of memory
            raise MtbenchError(
                f"cannot allocate the GPU cache pool of {format_bytes(total * shape.page_bytes)} "
                f"on {device}: {str(err).splitlines()[0]}"
            ) from None
        # A stack: pop() hands out the lowest page first, which keeps a fresh pool's tables ordered.
        self._free: list[int] = list(range(self.num_pages - 1, -1, -1))
        self._scratch_free: list[int] = list(range(total - 1, self.num_pages - 1, -1))
        self._allocated = bytearray(total)  # 1 = allocated (a Python bytearray: cheap per-page updates)

    @property
    def device(self) -> torch.device:
        return self.kv.device

    @property
    def capacity_bytes(self) -> int:
        return self.num_pages * self.shape.page_bytes

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    @property
    def used_bytes(self) -> int:
        return (self.num_pages - len(self._free)) * self.shape.page_bytes

    def layer(self, layer: int) -> torch.Tensor:
        """`[pages, 2, P, H, D]` view of one layer."""
        return self.kv[layer]

    def allocate(self, n_tokens: int) -> list[int] | None:
        """Pages for an entry of n_tokens, or None (nothing taken) when too few pages are free."""
        return self._take(self._free, n_tokens)

    def allocate_scratch(self, n_tokens: int) -> list[int] | None:
        """Scratch pages for n_tokens, or None (nothing taken) when too few are free."""
        return self._take(self._scratch_free, n_tokens)

    def _take(self, free: list[int], n_tokens: int) -> list[int] | None:
        count = self.shape.pages_for(n_tokens)
        if count > len(free):
            return None
        pages = [free.pop() for _ in range(count)]
        for page in pages:
            self._allocated[page] = 1
        return pages

    @property
    def num_free_scratch_pages(self) -> int:
        return len(self._scratch_free)

    def free(self, pages: list[int]) -> None:
        """Give pages back; every one must currently be allocated, and listed once."""
        allocated = self._allocated
        if len(set(pages)) != len(pages) or not all(0 <= page < len(allocated) and allocated[page] for page in pages):
            raise RuntimeError(f"freeing pages that are not allocated (double free?): {pages}")
        for page in pages:
            allocated[page] = 0
        for page in reversed(pages):
            (self._free if page < self.num_pages else self._scratch_free).append(page)

    def host_slots(self, pages: list[int], n_tokens: int) -> torch.Tensor:
        """Flat slot (page * P + position) of each of an entry's n_tokens, int64 on the host."""
        page_tokens = self.shape.page_tokens
        page_index = torch.as_tensor(pages, dtype=torch.long)
        positions = torch.arange(n_tokens)
        return page_index[positions // page_tokens] * page_tokens + positions % page_tokens

    def slots(self, pages: list[int], n_tokens: int) -> torch.Tensor:
        """`host_slots` on the pool's device (copied without stalling the host)."""
        return to_device_async(self.host_slots(pages, n_tokens), self.device)

    def page_table(self, entries_pages: list[list[int]], width: int | None = None) -> torch.Tensor:
        """int32 `[B, width]` table for a batch (unused slots hold 0), on the pool's device.

        `width` defaults to the longest entry; the replay passes one fixed width for every batch so
        the attention kernel always sees the same table stride (no recompilation for a new stride).
        """
        longest = max((len(p) for p in entries_pages), default=0)
        width = max(longest, 1) if width is None else width
        if longest > width:
            raise ValueError(f"page table width {width} is smaller than an entry of {longest} pages")
        table = torch.zeros((len(entries_pages), width), dtype=torch.int32)
        for row, pages in enumerate(entries_pages):
            if pages:
                table[row, : len(pages)] = torch.as_tensor(pages, dtype=torch.int32)
        return to_device_async(table, self.device)


def to_device_async(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` on `device`; on CUDA through pinned memory with a non-blocking copy.

    A copy from pageable memory makes the host wait until the GPU drained the stream, which would
    serialise the replay loop's host work with the device; the pinned buffers are reused ones
    (`mtbench.device.PinnedStaging`), never freshly pinned per call.
    """
    if device.type != "cuda":
        return host
    return PINNED_STAGING.upload(host, device)
