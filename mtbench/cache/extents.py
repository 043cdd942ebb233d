"""Host-tier placement bookkeeping: a coalescing extent allocator and the extent geometry of each layout.

Pure bookkeeping (no tensors), so the control plane owns it and the simulator places entries exactly
as the real host arena does (fragmentation included).

- `ExtentAllocator`: the free `[start, start + length)` extents sorted by start, in blocks that know
  their longest extent, plus a map of allocated extents. Allocation is first-fit (lowest address)
  or best-fit (smallest extent that fits, lowest address on ties); freeing coalesces with both
  neighbours, so two free extents are never adjacent.
  Invariant: sum(free lengths) + sum(allocated lengths) == total.
- `HostGeometry`: how many elements each extent of an entry of n tokens takes in a layout
  (`extent_lengths`), the arena's size in elements and its alignment.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import groupby

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
    """Variable-size extents over `[0, total)`; units are whatever the caller uses (elements here).

    Data structure: the free extents, sorted by start, cut into blocks of `BLOCK // 2` to `2 * BLOCK`
    extents (a single block may be smaller); per block b the parallel lists `_starts[b]` and
    `_lengths[b]`, its largest length `_maxes[b]` and its first start `_firsts[b]`. First fit walks the
    blocks by address, skipping every block whose largest extent is too short, and places a run of
    equal extents (an entry's per-layer extents) in that one walk: O(n / BLOCK + BLOCK) per fitting
    extent instead of a scan of every free extent per extent. Freeing finds its neighbours by
    bisection over `_firsts`, then within the block. `_allocated` maps each allocated start to its
    length.
    Invariants: no block is empty; the concatenated starts are increasing; free extents are disjoint and
    never adjacent (freeing coalesces with both neighbours), so they are exactly the maximal free runs,
    whatever the order of frees; `_maxes[b] == max(_lengths[b])` and `_firsts[b] == _starts[b][0]`;
    sum(free lengths) + sum(allocated lengths) == total.
    """

    BLOCK = 16

    def __init__(self, total: int, fit: str = "first", alignment: int = 1) -> None:
        if fit not in FIT_STRATEGIES:
            raise MtbenchError(f"host allocator fit must be one of {', '.join(FIT_STRATEGIES)}, got {fit!r}")
        self.total = int(total)
        self.fit = fit
        self.alignment = max(1, int(alignment))
        whole = self.total > 0
        self._starts: list[list[int]] = [[0]] if whole else []
        self._lengths: list[list[int]] = [[self.total]] if whole else []
        self._maxes: list[int] = [self.total] if whole else []
        self._firsts: list[int] = [0] if whole else []
        self._allocated: dict[int, int] = {}

    def _rounded(self, length: int) -> int:
        need = -(-int(length) // self.alignment) * self.alignment
        if need <= 0:
            raise ValueError(f"extent length must be positive, got {length}")
        return need

    @property
    def free_total(self) -> int:
        return sum(map(sum, self._lengths))

    @property
    def used_total(self) -> int:
        return self.total - self.free_total

    @property
    def largest_free(self) -> int:
        return max(self._maxes, default=0)

    def fragmentation(self) -> float:
        """1 - largest free extent / total free (0 when free space is one extent or none)."""
        free = self.free_total
        return 0.0 if free == 0 else 1.0 - self.largest_free / free

    def free_extents(self) -> list[tuple[int, int]]:
        """(start, length) of every free extent, by address."""
        return [extent for starts, lengths in zip(self._starts, self._lengths) for extent in zip(starts, lengths)]

    # ------------------------------------------------------------------ allocation
    def allocate(self, length: int) -> int | None:
        """Start of a new extent of `length` units, or None (nothing changed) if no free extent fits."""
        taken = self._take(self._rounded(length), 1)
        return taken[0] if taken else None

    def place(self, lengths: list[int]) -> list[int] | None:
        """Starts of new extents of `lengths` (all or nothing), or None when one does not fit; the same
        starts as `allocate` called for each length in turn."""
        starts: list[int] = []
        for length, group in groupby(lengths):
            count = len(list(group))
            taken = self._take(self._rounded(length), count)
            starts += taken
            if len(taken) < count:
                if starts:
                    self.free_all(starts)
                return None
        return starts

    def _take(self, need: int, count: int) -> list[int]:
        """Up to `count` extents of `need` units, each where `allocate` would put it."""
        taken = self._carve_first_fits(need, count) if self.fit == "first" else self._carve_best_fits(need, count)
        self._allocated.update(dict.fromkeys(taken, need))
        return taken

    def _carve_first_fits(self, need: int, count: int) -> list[int]:
        """First fit, `count` times, in one walk over the free extents by address: every extent behind the
        walk is too short, so the next fitting one is where `allocate` would put the next extent, and it
        gives extents from its front while the rest still fits. Blocks whose longest extent is too short
        are skipped whole."""
        taken: list[int] = []
        maxes = self._maxes
        block = 0
        while len(taken) < count:
            for block in range(block, len(maxes)):
                if maxes[block] >= need:
                    break
            else:
                break  # no block holds a fitting extent
            starts, lengths = self._starts[block], self._lengths[block]
            index = 0
            while len(taken) < count:
                for index in range(index, len(lengths)):
                    if lengths[index] >= need:
                        break
                else:
                    break  # the rest of the block is too short
                start, length = starts[index], lengths[index]
                carved = min(count - len(taken), length // need) * need
                taken += range(start, start + carved, need)
                if carved == length:
                    del starts[index], lengths[index]
                else:
                    starts[index] = start + carved
                    lengths[index] = length - carved
                    index += 1
            block = self._refreshed(block)
        return taken

    def _carve_best_fits(self, need: int, count: int) -> list[int]:
        """Best fit, `count` times: an extent carved from the front of the chosen free extent leaves it the
        chosen one while the rest still fits (every other fitting one is at least as long as it was), so
        the run is carved from it at once."""
        taken: list[int] = []
        while len(taken) < count:
            found = self._best_fit(need)
            if found is None:
                break
            block, index = found
            start, length = self._starts[block][index], self._lengths[block][index]
            carved = min(count - len(taken), length // need) * need
            taken += range(start, start + carved, need)
            self._shrink(block, index, carved)
        return taken

    def _best_fit(self, need: int) -> tuple[int, int] | None:
        """(block, index) of the smallest free extent that fits (lowest address on ties), or None."""
        best: tuple[int, int, int] | None = None
        for block, largest in enumerate(self._maxes):
            if largest >= need and (best is None or best[0] > need):
                for index, length in enumerate(self._lengths[block]):
                    if need <= length and (best is None or length < best[0]):
                        best = (length, block, index)
        return None if best is None else best[1:]

    def _shrink(self, block: int, index: int, amount: int) -> None:
        """Give the first `amount` units of a free extent (the whole of it: delete it)."""
        lengths = self._lengths[block]
        old = lengths[index]
        if old == amount:
            self._delete(block, index)
            return
        self._starts[block][index] += amount
        lengths[index] = old - amount
        if index == 0:
            self._firsts[block] += amount
        if old == self._maxes[block]:
            self._maxes[block] = max(lengths)

    # ------------------------------------------------------------------ freeing
    def free(self, start: int) -> None:
        """Return the extent that `allocate` gave at `start`, merging it with free neighbours."""
        length = self._allocated.pop(start, None)
        if length is None:
            raise RuntimeError(f"freeing extent at {start}, which is not allocated (double free?)")
        self._release(start, length)

    def free_all(self, starts: list[int]) -> None:
        """`free` of each of `starts` (all or nothing); adjacent ones are released as one run, which leaves
        the same free extents (they are the maximal free runs whatever the order)."""
        allocated = self._allocated
        spans: list[tuple[int, int]] = []
        for start in starts:
            length = allocated.pop(start, None)
            if length is None:
                allocated.update(spans)
                raise RuntimeError(f"freeing extent at {start}, which is not allocated (double free?)")
            spans.append((start, length))
        if not spans:
            return
        spans.sort()
        first, (last, last_length) = spans[0][0], spans[-1]
        if last + last_length - first == sum(length for _, length in spans):  # one run (allocated never overlap)
            self._release(first, last + last_length - first)
            return
        run_start = run_end = first
        for start, length in spans:
            if start != run_end:
                self._release(run_start, run_end - run_start)
                run_start = start
            run_end = start + length
        self._release(run_start, run_end - run_start)

    def _release(self, start: int, length: int) -> None:
        """Make `[start, start + length)` (allocated until now) free, coalescing with its neighbours."""
        firsts = self._firsts
        if not firsts:
            self._starts.append([start])
            self._lengths.append([length])
            self._maxes.append(length)
            firsts.append(start)
            return
        block = max(0, bisect.bisect_right(firsts, start) - 1)
        starts, lengths = self._starts[block], self._lengths[block]
        index = bisect.bisect_left(starts, start)  # 0 only in block 0, before every free extent
        end = start + length
        if index < len(starts):
            after = (block, index)
        else:
            after = (block + 1, 0) if block + 1 < len(firsts) else None
        merges_next = after is not None and self._starts[after[0]][after[1]] == end
        if index and starts[index - 1] + lengths[index - 1] == start:  # merges with the previous extent
            grown = lengths[index - 1] + length
            if merges_next:
                grown += self._lengths[after[0]][after[1]]
            lengths[index - 1] = grown
            if grown > self._maxes[block]:
                self._maxes[block] = grown
            if merges_next:
                self._delete(*after)
        elif merges_next:
            next_block, next_index = after
            self._starts[next_block][next_index] = start
            grown = self._lengths[next_block][next_index] = self._lengths[next_block][next_index] + length
            if next_index == 0:
                firsts[next_block] = start
            if grown > self._maxes[next_block]:
                self._maxes[next_block] = grown
        else:
            self._insert(block, index, start, length)

    def check_invariants(self) -> None:
        assert all(self._starts) and len(self._starts) == len(self._lengths) == len(self._maxes) == len(self._firsts)
        assert self._maxes == [max(lengths) for lengths in self._lengths], "block maxima are stale"
        assert self._firsts == [starts[0] for starts in self._starts], "block first starts are stale"
        free = self.free_extents()
        for (start, length), (after, _) in zip(free, free[1:]):
            assert start + length < after, "free extents adjacent (not coalesced) or overlapping"
        assert self.free_total + sum(self._allocated.values()) == self.total

    # ------------------------------------------------------------------ blocks
    def _insert(self, block: int, index: int, start: int, length: int) -> None:
        starts = self._starts[block]
        starts.insert(index, start)
        self._lengths[block].insert(index, length)
        if index == 0:
            self._firsts[block] = start
        if length > self._maxes[block]:
            self._maxes[block] = length
        if len(starts) > 2 * self.BLOCK:
            self._split(block)

    def _delete(self, block: int, index: int) -> None:
        starts, lengths = self._starts[block], self._lengths[block]
        del starts[index]
        old = lengths.pop(index)
        if not starts:  # the only block (others merge before they empty)
            del self._starts[block], self._lengths[block], self._maxes[block], self._firsts[block]
            return
        if index == 0:
            self._firsts[block] = starts[0]
        if old == self._maxes[block]:
            self._maxes[block] = max(lengths)
        if len(starts) < self.BLOCK // 2 and len(self._starts) > 1:
            self._merge(block - 1 if block else block)

    def _refreshed(self, block: int) -> int:
        """Restore the invariants of a block whose extents shrank or went; returns the block to walk next
        (a merged block again: its extents before the walk are all too short)."""
        starts = self._starts[block]
        if not starts:
            del self._starts[block], self._lengths[block], self._maxes[block], self._firsts[block]
            return block
        self._firsts[block] = starts[0]
        self._maxes[block] = max(self._lengths[block])
        if len(starts) < self.BLOCK // 2 and len(self._starts) > 1:
            merged = block - 1 if block else block
            self._merge(merged)
            return merged
        return block + 1

    def _split(self, block: int) -> None:
        """Cut a full block in two halves."""
        starts, lengths = self._starts[block], self._lengths[block]
        half = len(starts) // 2
        self._starts.insert(block + 1, starts[half:])
        self._lengths.insert(block + 1, lengths[half:])
        del starts[half:], lengths[half:]
        self._firsts.insert(block + 1, self._starts[block + 1][0])
        self._maxes[block] = max(lengths)
        self._maxes.insert(block + 1, max(self._lengths[block + 1]))

    def _merge(self, block: int) -> None:
        """Join block + 1 onto block (and split the result again when it is too long)."""
        self._starts[block] += self._starts.pop(block + 1)
        self._lengths[block] += self._lengths.pop(block + 1)
        self._maxes[block] = max(self._maxes[block], self._maxes.pop(block + 1))
        del self._firsts[block + 1]
        if len(self._starts[block]) > 2 * self.BLOCK:
            self._split(block)
