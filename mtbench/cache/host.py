"""The host tier's storage: ONE pinned allocation carved into extents by a coalescing allocator.

`HostArena`: a flat 1-D tensor of `dtype` elements (pinned when CUDA is present) with an
`ExtentAllocator` (`cache.extents`) over element indices; `view(offset, shape)` returns the extent as
a tensor. In the cache manager the allocator is the control plane's (it decides placements, the arena
only holds the bytes).
"""

from __future__ import annotations

import torch

from mtbench.cache.extents import ALIGN_BYTES, FIT_STRATEGIES, ExtentAllocator
from mtbench.errors import MtbenchError
from mtbench.units import format_bytes

__all__ = ["ExtentAllocator", "FIT_STRATEGIES", "HostArena"]


class HostArena:
    """One host allocation of `capacity_bytes`, pinned when `pin`, handed out as typed extents."""

    ALIGN_BYTES = ALIGN_BYTES

    def __init__(self, capacity_bytes: int, dtype: torch.dtype, pin: bool, fit: str = "first",
                 allocator: ExtentAllocator | None = None) -> None:
        """`allocator`: the extents' bookkeeping when someone else owns it (the control plane)."""
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
