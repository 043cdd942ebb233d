"""Offline facts about a key sequence that the simulator precomputes once per trace."""

from __future__ import annotations

import numpy as np

from mtbench.cache.policies.base import NEVER


def dense_ids(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, uniques): ids[i] in 0..len(uniques)-1 with uniques[ids] == keys (np.unique inverse)."""
    uniques, ids = np.unique(np.asarray(keys), return_inverse=True)
    return ids.astype(np.int64).reshape(-1), uniques


def next_use_indices(keys: np.ndarray) -> np.ndarray:
    """next[i] = index of the next request for keys[i] after i, or NEVER (libCacheSim's next_access_vtime)."""
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    next_use = np.full(keys.shape[0], NEVER, dtype=np.int64)
    same_as_next = sorted_keys[:-1] == sorted_keys[1:]
    next_use[order[:-1][same_as_next]] = order[1:][same_as_next]
    return next_use
