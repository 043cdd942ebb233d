"""The host tier's storage: ONE pinned allocation carved into extents by a coalescing allocator.

Data structures:
- `HostArena`: a flat 1-D tensor of `dtype` elements (pinned when CUDA is present) with an
  `ExtentAllocator` (`cache.extents`) over element indices; `view(offset, shape)` returns the extent as
  a tensor. In the cache manager the allocator is the control plane's (it decides placements, the arena
  only holds the bytes).
- `Fp8RowArena`: the fp8 host tier (kernels/fp8_rows_ref.py's row format): one uint8 allocation of
  `rows` rows with an `ExtentAllocator` over ROW indices. The layout that uses it picks how an extent
  [start, start + n) holds its rows: as two planes, `codes [rows, H * D]` and `scales [rows, H]` (the
  extent owns codes[start:start + n] and scales[start:start + n]; the zero-copy kernels index rows),
  or as one block, `block(start, n)` = bytes [start, start + n) * row_bytes holding the n rows' codes
  then their scales (one contiguous copy per extent: the hybrid layout). Either way an extent of n
  rows owns n * row_bytes bytes.
"""

from __future__ import annotations

import gc

import torch

from kernels.fp8_rows_ref import fp8_row_bytes
from mtbench.cache.extents import ALIGN_BYTES, FIT_STRATEGIES, ExtentAllocator
from mtbench.errors import MtbenchError
from mtbench.units import format_bytes

__all__ = ["ExtentAllocator", "FIT_STRATEGIES", "Fp8RowArena", "HostArena"]


def allocate_host(elements: int, dtype: torch.dtype, pin: bool, capacity_bytes: int, what: str) -> torch.Tensor:
    """A flat host tensor, pinned when `pin`; MtbenchError naming `what` if it cannot be had. If pinning
    fails, a finished run's arena may still be held by garbage or by the CUDA host allocator's cache
    (several replays in one process: `capacity --measure`): collect, release that cache where this
    torch has it, and try once more."""
    try:
        try:
            return torch.empty(elements, dtype=dtype, pin_memory=pin)
        except RuntimeError:
            if not pin:
                raise
        gc.collect()
        release = getattr(torch._C, "_host_emptyCache", None)
        if release is not None:
            release()
        return torch.empty(elements, dtype=dtype, pin_memory=pin)
    except RuntimeError as err:
        raise MtbenchError(
            f"cannot allocate {format_bytes(capacity_bytes)} ({capacity_bytes} bytes) of {'pinned' if pin else 'plain'} "
            f"host memory for {what}: {str(err).splitlines()[0]}"
        ) from None


class HostArena:
    """One host allocation of `capacity_bytes`, pinned when `pin`, handed out as typed extents."""

    ALIGN_BYTES = ALIGN_BYTES

    def __init__(self, capacity_bytes: int, dtype: torch.dtype, pin: bool, fit: str = "first",
                 allocator: ExtentAllocator | None = None) -> None:
        """`allocator`: the extents' bookkeeping when someone else owns it (the control plane)."""
        element_size = torch.empty((), dtype=dtype).element_size()
        elements = int(capacity_bytes) // element_size
        self.buffer = allocate_host(elements, dtype, pin, capacity_bytes, "the host cache")
        self.pinned = pin
        self.element_size = element_size
        self.allocator = allocator or ExtentAllocator(elements, fit=fit, alignment=max(1, self.ALIGN_BYTES // element_size))

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

    def __init__(self, capacity_bytes: int, heads: int, head_dim: int, pin: bool, fit: str = "first",
                 allocator: ExtentAllocator | None = None) -> None:
        """`allocator`: the row extents' bookkeeping when someone else owns it (the control plane)."""
        self.width, self.heads = heads * head_dim, heads
        self.row_bytes = fp8_row_bytes(heads, head_dim)
        rows = int(capacity_bytes) // self.row_bytes
        self.buffer = buffer = allocate_host(rows * self.row_bytes, torch.uint8, pin, capacity_bytes, "the fp8 host cache")
        self.codes = buffer[: rows * self.width].view(rows, self.width)
        self.scales = buffer[rows * self.width :].view(rows, heads)
        self.pinned = pin
        self.allocator = allocator or ExtentAllocator(rows, fit=fit)

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

    def block(self, start: int, n_rows: int) -> torch.Tensor:
        """Rows [start, start + n_rows) as one flat block of bytes: their codes [n_rows, H * D], then their
        scales [n_rows, H] (the block use of the arena, module docstring)."""
        return self.buffer[start * self.row_bytes : (start + n_rows) * self.row_bytes]
