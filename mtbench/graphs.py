"""Which batches the replay's CUDA-graph forward takes (`GraphLimits`).

One rule, used by the engine's `mtbench.model.pooled.ForwardGraphs` (graphed or eager forward) and by
the serving simulator's batch prices (`mtbench.serve.service.BatchOverhead`: a graphed batch and an
eager one have different fixed costs). Torch-free, so the simulator does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GraphLimits:
    """A batch is graphed when it has at most `max_requests` requests and its computed rows, padded up
    to a multiple of `row_bucket`, are at most `max_rows`."""

    max_requests: int
    row_bucket: int = 2048
    max_rows: int = 32768

    def padded_rows(self, rows: int) -> int:
        return max(1, -(-rows // self.row_bucket)) * self.row_bucket

    def takes(self, requests: int, rows: int) -> bool:
        return requests <= self.max_requests and self.padded_rows(rows) <= self.max_rows

    def to_dict(self) -> dict:
        return asdict(self)
