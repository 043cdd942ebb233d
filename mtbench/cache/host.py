"""The host tier's storage: ONE pinned allocation carved into extents by a coalescing allocator.

Data structures:
- `ExtentAllocator`: a free list of disjoint `[start, start + length)` extents kept sorted by start
  (two parallel lists), plus a map of allocated extents. Allocation is first-fit (lowest address)
  or best-fit (smallest extent that fits, lowest address on ties); freeing coalesces with both
  neighbours, so two free extents are never adjacent.
  Invariant: sum(free lengths) + sum(allocated lengths) == total.
- `HostArena`: a flat 1-D tensor of `dtype` elements (pinned when CUDA is present) with an
  `ExtentAllocator` over element indices; `view(offset, shape)` returns the extent as a tensor.
- `Fp8RowArena`: the fp8 host tier (kernels/fp8_rows_ref.py's row format): one uint8 allocation
  holding two planes, `codes [rows, H * D]` and `scales [rows, H]`, with an `ExtentAllocator` over
  ROW indices; an extent [start, start + n) owns codes[start:start + n] and scales[start:start + n].
"""

from __future__ import annotations

import bisect

import torch

from kernels.fp8_rows_ref import fp8_row_bytes
from mtbench.errors import MtbenchError
from mtbench.units import format_bytes

FIT_STRATEGIES = ("first", "best")


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


class HostArena:
    """One host allocation of `capacity_bytes`, pinned when `pin`, handed out as typed extents."""

    ALIGN_BYTES = 256

    def __init__(self, capacity_bytes: int, dtype: torch.dtype, pin: bool, fit: str = "first") -> None:
        element_size = torch.empty((), dtype=dtype).element_size()
        elements = int(capacity_bytes) // element_size
        kind = "pinned" if pin else "plain"
        try:
            self.buffer = torch.empty(elements, dtype=dtype, pin_memory=pin)
        except RuntimeError as err:
            raise MtbenchError(
                f"cannot allocate {format_bytes(capacity_bytes)} ({capacity_bytes} bytes) of {kind} host memory "
                f"for the host cache: {str(err).splitlines()[0]}"
            ) from None
        self.pinned = pin
        self.element_size = element_size
        self.allocator = ExtentAllocator(elements, fit=fit, alignment=max(1, self.ALIGN_BYTES // element_size))

    @property
    def capacity_bytes(self) -> int:
        return self.allocator.total * self.element_size

    @property
    def used_bytes(self) -> int:
        return self.allocator.used_total * self.element_size

    def allocate(self, n_elements: int) -> int | None:
        return self.allocator.allocate(n_elements)

    def free(self, offset: int) -> None:
        self.allocator.free(offset)

    def view(self, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
        count = 1
        for size in shape:
            count *= size
        return self.buffer[offset : offset + count].view(shape)

    def fragmentation(self) -> float:
        return self.allocator.fragmentation()


class Fp8RowArena:
    """`capacity_bytes` of (pinned when `pin`) host memory as quantised K/V rows, handed out as row extents.

    Rows are whole quantised rows (one token's K or V at one layer): `fp8_row_bytes(H, D)` bytes each.
    Offsets and lengths given to / returned by `allocate` and `free` count rows, not elements.
    """

    def __init__(self, capacity_bytes: int, heads: int, head_dim: int, pin: bool, fit: str = "first") -> None:
        self.width, self.heads = heads * head_dim, heads
        self.row_bytes = fp8_row_bytes(heads, head_dim)
        rows = int(capacity_bytes) // self.row_bytes
        try:
            buffer = torch.empty(rows * self.row_bytes, dtype=torch.uint8, pin_memory=pin)
        except RuntimeError as err:
            raise MtbenchError(
                f"cannot allocate {format_bytes(capacity_bytes)} ({capacity_bytes} bytes) of "
                f"{'pinned' if pin else 'plain'} host memory for the fp8 host cache: {str(err).splitlines()[0]}"
            ) from None
        self.buffer = buffer
        self.codes = buffer[: rows * self.width].view(rows, self.width)
        self.scales = buffer[rows * self.width :].view(rows, heads)
        self.pinned = pin
        self.allocator = ExtentAllocator(rows, fit=fit)

    @property
    def capacity_bytes(self) -> int:
        return self.allocator.total * self.row_bytes

    @property
    def used_bytes(self) -> int:
        return self.allocator.used_total * self.row_bytes

    def allocate(self, n_rows: int) -> int | None:
        return self.allocator.allocate(n_rows)

    def free(self, offset: int) -> None:
        self.allocator.free(offset)

    def fragmentation(self) -> float:
        return self.allocator.fragmentation()
