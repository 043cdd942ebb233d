"""The "auto" load budget: how many bytes of host hits one batch may load; the rest are recomputed.

A host hit costs PCIe time (46 KB per token for MTGR-large in bf16, about 1 ms per 1000-token user)
while recomputing its prefix costs GPU time. The budget loads what the link moves while the GPU
computes one batch: `PCIE_GBPS` x a moving average of recent batches' device compute time (copy stalls
excluded; weight `RECENT_WEIGHT` on the newest). The real replay feeds it CUDA-event timings, the
serving simulator the cost model's; both then decide through the control plane's `load_budget`.
"""

from __future__ import annotations

PCIE_GBPS = 52.0  # DESIGN.md section 7: one large pinned copy, either direction
RECENT_WEIGHT = 0.2


class AutoLoadBudget:
    """State: `recent_ms`, the moving average of observed batch compute times (None before the first)."""

    def __init__(self, gbps: float = PCIE_GBPS) -> None:
        self.gbps = gbps
        self.recent_ms: float | None = None

    def observe(self, compute_ms: float) -> None:
        previous = self.recent_ms
        self.recent_ms = compute_ms if previous is None else (1 - RECENT_WEIGHT) * previous + RECENT_WEIGHT * compute_ms

    def bytes(self) -> int | None:
        """Bytes the next batch may load; None (load every host hit) until a batch was observed."""
        return None if self.recent_ms is None else int(self.gbps * 1e6 * self.recent_ms)
