"""Drive libCacheSim (`pip install libcachesim`, the peer simulator) on our key sequences.

Our keys are written to a temporary oracleGeneral binary trace (uint32 time, uint64 obj_id,
uint32 size, int64 next_access_vtime; -1 = never again), which libCacheSim replays in C with
`process_trace`, so OPT (its `Belady`) gets the same next-use oracle as ours.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from mtbench.cache.policies.base import NEVER
from mtbench.errors import MtbenchError
from mtbench.sim.oracle import next_use_indices

ORACLE_GENERAL = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("size", "<u4"), ("next", "<i8")], align=False)
PEER_CLASS_NAMES = {"lru": "LRU", "fifo": "FIFO", "lfu": "LFU", "arc": "ARC", "s3fifo": "S3FIFO",
                    "sieve": "Sieve", "opt": "Belady", "gdsf": "GDSF"}


def _libcachesim():
    try:
        import libcachesim
    except ImportError as err:
        raise MtbenchError("libcachesim is not installed (pip install 'libcachesim==0.3.5', the test extra)") from err
    return libcachesim


def write_oracle_general(keys: np.ndarray, path: Path, sizes: np.ndarray | None = None) -> Path:
    """Write `keys` (non-negative ints) as an oracleGeneral trace with next-use times; size 1 unless given."""
    keys = np.asarray(keys)
    records = np.zeros(keys.shape[0], dtype=ORACLE_GENERAL)
    records["time"] = np.arange(keys.shape[0], dtype=np.uint64).astype(np.uint32)
    records["obj_id"] = keys.astype(np.uint64)
    records["size"] = 1 if sizes is None else np.asarray(sizes, dtype=np.uint32)
    next_use = next_use_indices(keys)
    records["next"] = np.where(next_use == NEVER, -1, next_use)
    path = Path(path)
    path.write_bytes(records.tobytes())
    return path


class PeerTrace:
    """A key sequence written once as an oracleGeneral file, replayed by libCacheSim caches (context manager)."""

    def __init__(self, keys: np.ndarray, sizes: np.ndarray | None = None) -> None:
        self.n_requests = int(np.asarray(keys).shape[0])
        self._dir = tempfile.TemporaryDirectory(prefix="mtbench-peer-")
        self.path = write_oracle_general(keys, Path(self._dir.name) / "trace.oracleGeneral.bin", sizes)

    def __enter__(self) -> "PeerTrace":
        return self

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()

    def run(self, policy: str, capacity: int) -> tuple[int, float]:
        """(hits, seconds) of libCacheSim's `policy` with `capacity` (units or bytes) over the trace."""
        lcs = _libcachesim()
        class_name = PEER_CLASS_NAMES.get(policy)
        if class_name is None:
            raise MtbenchError(f"libcachesim has no counterpart for policy {policy!r}")
        reader = lcs.TraceReader(str(self.path), lcs.TraceType.ORACLE_GENERAL_TRACE, lcs.ReaderInitParam())
        cache = getattr(lcs, class_name)(capacity)
        start = time.perf_counter()
        miss_ratio, _ = cache.process_trace(reader)
        seconds = time.perf_counter() - start
        return int(round((1.0 - miss_ratio) * self.n_requests)), seconds
