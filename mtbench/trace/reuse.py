"""Reuse (stack) distances and LRU hit ratios of a key sequence, as pure numpy functions.

The reuse distance of access i is the number of DISTINCT other keys accessed since the previous
access to the same key (-1 for a first access). Under LRU with unit-size entries, access i hits a
cache of capacity C entries iff 0 <= distance[i] < C (Mattson's stack property), so one pass gives the
whole LRU miss-ratio curve.

Method: with prev[i] the previous access of key[i] and next[j] the next access of key[j],
    distance[i] = (i - prev[i] - 1) - #{j : prev[i] < j and next[j] < i}
(every position strictly between prev[i] and i belongs to another key; those whose key comes back
before i are repeats, not distinct keys). The count is an offline 2D dominance query answered with
a Fenwick-style decomposition of "points with next[j] < i" into power-of-two blocks: each block is
sorted by j once per level, and every query binary-searches its O(log n) blocks. All work is numpy
(log n levels of sort + searchsorted), O(n log^2 n) comparisons, about 2 s for 1M accesses.
"""

from __future__ import annotations

import numpy as np


def previous_access(keys: np.ndarray) -> np.ndarray:
    """prev[i] = index of the previous access to keys[i], or -1; keys: any 1-D array of hashables."""
    keys = np.asarray(keys)
    n = keys.shape[0]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same_as_before = np.zeros(n, dtype=bool)
    same_as_before[1:] = sorted_keys[1:] == sorted_keys[:-1]
    prev = np.full(n, -1, dtype=np.int64)
    prev[order[same_as_before]] = order[np.flatnonzero(same_as_before) - 1]
    return prev


def _count_points_after(prefix_len: np.ndarray, threshold: np.ndarray, xs_by_y: np.ndarray) -> np.ndarray:
    """For each query q: #{t < prefix_len[q] : xs_by_y[t] > threshold[q]} (xs_by_y are point x's in y order)."""
    n_points = xs_by_y.shape[0]
    counts = np.zeros(prefix_len.shape[0], dtype=np.int64)
    stride = np.int64(max(int(xs_by_y.max(initial=0)), int(threshold.max(initial=0))) + 2)
    level = 0
    while (1 << level) <= n_points:
        size = 1 << level
        n_blocks = n_points // size
        blocks = np.sort(xs_by_y[: n_blocks * size].reshape(n_blocks, size), axis=1)
        flat = (blocks + 1 + np.arange(n_blocks, dtype=np.int64)[:, None] * stride).ravel()
        uses_level = (prefix_len >> level) & 1 == 1
        block = (prefix_len[uses_level] >> level) - 1
        above = np.searchsorted(flat, block * stride + threshold[uses_level] + 1, side="right")
        counts[uses_level] += (block + 1) * size - above
        level += 1
    return counts


def reuse_distances(keys: np.ndarray) -> np.ndarray:
    """Stack distance of every access (distinct other keys since the previous access), -1 if first."""
    keys = np.asarray(keys)
    n = keys.shape[0]
    prev = previous_access(keys)
    reused = np.flatnonzero(prev >= 0)
    distances = np.full(n, -1, dtype=np.int64)
    if reused.size == 0:
        return distances
    # Points (x=j, y=next[j]) exist for j = prev[i]; sorted by y they are prev[reused] (reused is increasing).
    xs_by_y = prev[reused]
    # Points with y < i are those whose next access is before i: a prefix of the y-sorted list.
    prefix_len = np.searchsorted(reused, reused, side="left")
    repeats = _count_points_after(prefix_len, prev[reused], xs_by_y)
    distances[reused] = (reused - prev[reused] - 1) - repeats
    return distances


def lru_hit_ratios(distances: np.ndarray, capacities: np.ndarray | list[int]) -> np.ndarray:
    """Hit ratio of a unit-size LRU cache of each capacity, from `reuse_distances` output."""
    distances = np.asarray(distances)
    reused = np.sort(distances[distances >= 0])
    hits = np.searchsorted(reused, np.asarray(capacities, dtype=np.int64), side="left")
    return hits / max(distances.shape[0], 1)
