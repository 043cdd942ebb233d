"""Turn a streamed trace into batches: at most `batch_size` requests, and (optionally) all arriving
within `window` seconds of the batch's first request.

A `RequestBatch`-to-be is a `TraceBatch`: parallel numpy arrays of one batch's requests, plus the
global index of each request in the trace (which also seeds the request's R and C features).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.trace import Trace

BATCH_COLUMNS = ("ts", "user_id", "static_version", "n_static", "n_rt", "n_cand")


@dataclass(frozen=True)
class TraceBatch:
    """One batch of requests; every array has one entry per request, in trace order."""

    index: int  # batch number, from 0
    request_index: np.ndarray  # int64 global row index in the trace
    ts: np.ndarray
    user_id: np.ndarray
    static_version: np.ndarray
    n_static: np.ndarray
    n_rt: np.ndarray
    n_cand: np.ndarray

    def __len__(self) -> int:
        return len(self.request_index)

    @property
    def first_index(self) -> int:
        return int(self.request_index[0])


def check_batching(batch_size: int, window: float | None, max_requests: int | None) -> None:
    """The batching options a replay accepts: a batch holds a request, a window is not negative, and
    at least one request is replayed."""
    if batch_size < 1:
        raise MtbenchError(f"--batch-size must be >= 1, got {batch_size}")
    if window is not None and not window >= 0:
        raise MtbenchError(f"--window must be >= 0 seconds, got {window}")
    if max_requests is not None and max_requests < 1:
        raise MtbenchError(f"--max-requests must be >= 1, got {max_requests}")


def iter_batches(trace: Trace, batch_size: int, window: float | None = None,
                 max_requests: int | None = None) -> Iterator[TraceBatch]:
    """Stream the trace and cut it into batches (see module docstring); stops after max_requests."""
    check_batching(batch_size, window, max_requests)
    next_row, batch_number = 0, 0
    limit = trace.num_rows if max_requests is None else min(trace.num_rows, max_requests)
    carry: dict[str, np.ndarray] | None = None
    for frame in trace.iter_frames(columns=list(BATCH_COLUMNS)):
        if next_row >= limit:
            break
        frame = frame.iloc[: limit - next_row]
        columns = {c: frame[c].to_numpy() for c in BATCH_COLUMNS}
        columns["request_index"] = np.arange(next_row, next_row + len(frame), dtype=np.int64)
        next_row += len(frame)
        if carry is not None:
            columns = {c: np.concatenate([carry[c], columns[c]]) for c in columns}
        cuts = _cut_points(columns["ts"], batch_size, window)
        for start, end in zip(cuts[:-2], cuts[1:-1]):
            yield _batch(batch_number, columns, start, end)
            batch_number += 1
        carry = {c: v[cuts[-2]:] for c, v in columns.items()}
    if carry is not None and len(carry["ts"]):
        yield _batch(batch_number, carry, 0, len(carry["ts"]))


def _cut_points(ts: np.ndarray, batch_size: int, window: float | None) -> list[int]:
    """Batch boundaries [0, b1, ..., n]; the last batch may still grow with the next frame."""
    cuts, start, n = [0], 0, len(ts)
    while start < n:
        end = min(start + batch_size, n)
        if window is not None:
            end = min(end, int(np.searchsorted(ts, ts[start] + window, side="right")))
            end = max(end, start + 1)
        cuts.append(end)
        start = end
    if len(cuts) == 1:
        cuts.append(0)
    return cuts


def _batch(number: int, columns: dict[str, np.ndarray], start: int, end: int) -> TraceBatch:
    return TraceBatch(number, columns["request_index"][start:end].astype(np.int64),
                      *(columns[c][start:end] for c in BATCH_COLUMNS))
