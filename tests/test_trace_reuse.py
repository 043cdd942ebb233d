"""reuse_distances against a plain LRU stack, and lru_hit_ratios against a simulated LRU cache."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from mtbench.trace.reuse import lru_hit_ratios, previous_access, reuse_distances


def stack_distances(keys: list[int]) -> list[int]:
    stack: list[int] = []
    out = []
    for key in keys:
        if key in stack:
            out.append(len(stack) - 1 - stack.index(key))
            stack.remove(key)
        else:
            out.append(-1)
        stack.append(key)
    return out


def lru_hits(keys: list[int], capacity: int) -> int:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for key in keys:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
        else:
            cache[key] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits


@pytest.mark.parametrize("seed", range(40))
def test_reuse_distances_match_an_lru_stack(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    keys = rng.zipf(1.3, n) if seed % 2 else rng.integers(0, int(rng.integers(1, 120)), n)
    assert reuse_distances(keys).tolist() == stack_distances(keys.tolist())


@pytest.mark.parametrize("seed", range(10))
def test_lru_hit_ratios_match_a_simulated_cache(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    keys = rng.zipf(1.2, 3000) % 400
    capacities = [1, 2, 5, 17, 64, 399]
    ratios = lru_hit_ratios(reuse_distances(keys), capacities)
    assert ratios.tolist() == [lru_hits(keys.tolist(), c) / keys.shape[0] for c in capacities]


def test_edge_cases_and_key_types() -> None:
    assert reuse_distances(np.array([], dtype=np.int64)).tolist() == []
    assert reuse_distances(np.array([5])).tolist() == [-1]
    assert reuse_distances(np.array(["a", "b", "a", "a"])).tolist() == [-1, -1, 1, 0]
    assert previous_access(np.array([3, 1, 3, 3, 1])).tolist() == [-1, -1, 0, 2, 1]
