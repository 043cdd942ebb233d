"""The whole LRU miss-ratio curve in one pass, from stack (reuse) distances (Mattson et al. 1970).

With unit-size entries, an LRU cache of C entries hits access i iff its reuse distance (distinct other
keys since the previous access to the same key) is < C; `mtbench.trace.reuse.reuse_distances`
computes all distances at once, so every capacity's hit count is one searchsorted.
"""

from __future__ import annotations

import numpy as np

from mtbench.trace.reuse import reuse_distances


def lru_hit_counts(keys: np.ndarray, capacities: np.ndarray | list[int]) -> np.ndarray:
    """Hits of a unit-size LRU cache at each capacity (entries), for the key sequence `keys`."""
    distances = reuse_distances(np.asarray(keys))
    reused = np.sort(distances[distances >= 0])
    return np.searchsorted(reused, np.asarray(capacities, dtype=np.int64), side="left").astype(np.int64)
