"""Streaming simulation: a trace of any length through one replica in bounded memory.

The trace is read batch by batch (`Trace.iter_frames`); only per-key state is kept: the dense id of
every (user_id, static_version) seen, its user, version and prefix length, and the replica's tiers
(`SimReplica`, the same per-request rule as the fleet's residency path). Memory therefore grows with
the number of distinct keys, never with the number of requests. Offline policies (OPT) need the
future and are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.fleet.replica import ReplicaSpec, SimReplica
from mtbench.sim.simulator import GPU_HIT, HOST_HIT, MISS, STALE
from mtbench.sim.sizes import EntrySizer
from mtbench.trace import Trace

STREAM_COLUMNS = ["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"]


@dataclass
class StreamResult:
    requests: int = 0
    gpu_hits: int = 0
    host_hits: int = 0
    misses: int = 0
    stale: int = 0
    keys: int = 0
    static_tokens: int = 0
    recomputed_tokens: int = 0
    compute_ms: float = 0.0
    bytes_h2d: int = 0
    bytes_d2h: int = 0

    @property
    def hit_ratio(self) -> float:
        return (self.gpu_hits + self.host_hits) / max(self.requests, 1)


def stream_simulate(trace: Trace, spec: ReplicaSpec, sizer: EntrySizer, batch_rows: int = 1 << 20,
                    on_batch: Callable[[int], None] | None = None) -> StreamResult:
    """Simulate `trace` through one replica of `spec`, reading `batch_rows` requests at a time."""
    key_of: dict[tuple[int, int], int] = {}
    key_user: list[int] = []
    key_version: list[int] = []
    key_static: list[int] = []
    replica = SimReplica(spec, key_user, key_version, sizer)
    result = StreamResult()
    row = 0
    for frame in trace.iter_frames(STREAM_COLUMNS, batch_rows):
        n_static = frame["n_static"].to_numpy()
        recomputed = np.empty(len(frame), dtype=np.int64)
        columns = zip(frame["user_id"].tolist(), frame["static_version"].tolist(), n_static.tolist(), frame["ts"].tolist())
        for i, (user, version, static, t) in enumerate(columns):
            key = key_of.get((user, version))
            if key is None:
                key = key_of[(user, version)] = len(key_user)
                key_user.append(user)
                key_version.append(version)
                key_static.append(static)
            elif key_static[key] != static and not spec.settings.append:
                raise MtbenchError(f"{trace.path}: row {row + i}: n_static {static} differs from an earlier request of the "
                                   f"same (user_id, static_version); a version's prefix must not change")
            _, recomputed[i] = replica.serve(key, static, t)
        cost = spec.cost
        if cost is not None:
            result.compute_ms += float(np.sum(cost.compute_ms(frame["n_rt"].to_numpy() + frame["n_cand"].to_numpy(),
                                                              recomputed)))
        result.static_tokens += int(n_static.sum())
        result.recomputed_tokens += int(recomputed.sum())
        row += len(frame)
        if on_batch:
            on_batch(len(frame))
    result.requests = row
    counts = replica.outcome_counts
    result.gpu_hits, result.host_hits, result.misses, result.stale = (
        counts[GPU_HIT], counts[HOST_HIT], counts[MISS], counts[STALE])
    result.keys = len(key_user)
    result.bytes_h2d, result.bytes_d2h = replica.bytes_h2d, replica.bytes_d2h
    return result
