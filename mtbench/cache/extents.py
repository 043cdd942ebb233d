"""Host-tier placement bookkeeping: a coalescing extent allocator and the extent geometry of each layout.

Pure bookkeeping (no tensors), so the control plane owns it and the simulator places entries exactly
as the real host arena does (fragmentation included).

- `ExtentAllocator`: a free list of disjoint `[start, start + length)` extents kept sorted by start
  (two parallel lists), plus a map of allocated extents. Allocation is first-fit (lowest address)
  or best-fit (smallest extent that fits, lowest address on ties); freeing coalesces with both
  neighbours, so two free extents are never adjacent.
  Invariant: sum(free lengths) + sum(allocated lengths) == total.
- `HostGeometry`: how many elements each extent of an entry of n tokens takes in a layout
  (`extent_lengths`), the arena's size in elements and its alignment.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from mtbench.errors import MtbenchError

FIT_STRATEGIES = ("first", "best")
HOST_LAYOUTS = ("paged", "user", "hybrid", "zerocopy")
ALIGN_BYTES = 256


def extent_lengths(layout: str, layers: int, elements_per_token_layer: int, page_tokens: int, n_tokens: int) -> list[int]:
    """Element count of each host extent an entry of n_tokens takes in `layout` (see `cache.layouts`)."""
    if layout == "paged":
        return [layers * -(-n_tokens // page_tokens) * page_tokens * elements_per_token_layer]
    if layout == "user":
        return [layers * n_tokens * elements_per_token_layer]
    return [n_tokens * elements_per_token_layer] * layers  # hybrid, zerocopy(-fp8, in rows): one extent per layer


@dataclass(frozen=True)
class HostGeometry:
    """The host arena as the allocator sees it: `total_elements` elements of `element_size` bytes,
    extents aligned to `ALIGN_BYTES`, laid out by `layout`."""

    layout: str
    layers: int
    elements_per_token_layer: int
    page_tokens: int
    element_size: int
    capacity_bytes: int
    fit: str = "first"

    @property
    def total_elements(self) -> int:
        return self.capacity_bytes // self.element_size

    @property
    def alignment(self) -> int:
        return max(1, ALIGN_BYTES // self.element_size)

    def lengths(self, n_tokens: int) -> list[int]:
        return extent_lengths(self.layout, self.layers, self.elements_per_token_layer, self.page_tokens, n_tokens)

    def allocator(self) -> "ExtentAllocator":
        return ExtentAllocator(self.total_elements, self.fit, self.alignment)


class ExtentAllocator:
    """Variable-size extents over `[0, total)`; units are whatever the caller uses (elements here)."""

    def __init__(self, total: int, fit: str = "first", alignment: int = 1) -> None:
        if fit not in FIT_STRATEGIES:
            raise MtbenchError(f"host allocator fit must be one of {', '.join(FIT_STRATEGIES)}, got {fit!r}")
        self.total = int(total)
        self.fit = fit
        self.alignment = max(1, int(alignment))
        self._starts: list[int] = [0] if self.total > 0 else []
        self._lengths: list[int] = [self.total] if self.total > 0 else []
        self._allocated: dict[int, int] = {}

    def _rounded(self, length: int) -> int:
        return -(-int(length) // self.alignment) * self.alignment

    @property
    def free_total(self) -> int:
        return sum(self._lengths)

    @property
    def used_total(self) -> int:
        return self.total - self.free_total

    @property
    def largest_free(self) -> int:
        return max(self._lengths, default=0)

    def fragmentation(self) -> float:
        """1 - largest free extent / total free (0 when free space is one extent or none)."""
        free = self.free_total
        return 0.0 if free == 0 else 1.0 - self.largest_free / free

    def allocate(self, length: int) -> int | None:
        """Start of a new extent of `length` units, or None (nothing changed) if no free extent fits."""
        need = self._rounded(length)
        if need <= 0:
            raise ValueError(f"extent length must be positive, got {length}")
        index = self._find(need)
        if index is None:
            return None
        start = self._starts[index]
        remaining = self._lengths[index] - need
        if remaining:
            self._starts[index] += need
            self._lengths[index] = remaining
        else:
            del self._starts[index]
            del self._lengths[index]
        self._allocated[start] = need
        return start

    def _find(self, need: int) -> int | None:
        if self.fit == "first":
            return next((i for i, length in enumerate(self._lengths) if length >= need), None)
        fitting = [(length, i) for i, length in enumerate(self._lengths) if length >= need]
        return min(fitting)[1] if fitting else None

    def free(self, start: int) -> None:
        """Return the extent that `allocate` gave at `start`, merging it with free neighbours."""
        length = self._allocated.pop(start, None)
        if length is None:
            raise RuntimeError(f"freeing extent at {start}, which is not allocated (double free?)")
        index = bisect.bisect_left(self._starts, start)
        merges_next = index < len(self._starts) and start + length == self._starts[index]
        merges_prev = index > 0 and self._starts[index - 1] + self._lengths[index - 1] == start
        if merges_prev and merges_next:
            self._lengths[index - 1] += length + self._lengths[index]
            del self._starts[index]
            del self._lengths[index]
        elif merges_prev:
            self._lengths[index - 1] += length
        elif merges_next:
            self._starts[index] = start
            self._lengths[index] += length
        else:
            self._starts.insert(index, start)
            self._lengths.insert(index, length)

    def free_extents(self) -> list[tuple[int, int]]:
        """(start, length) of every free extent, by address."""
        return list(zip(self._starts, self._lengths))

    def place(self, lengths: list[int]) -> list[int] | None:
        """Starts of new extents of `lengths` (all or nothing), or None when one does not fit."""
        starts: list[int] = []
        for length in lengths:
            start = self.allocate(length)
            if start is None:
                for taken in starts:
                    self.free(taken)
                return None
            starts.append(start)
        return starts
