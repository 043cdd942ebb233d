"""GDSF (Greedy-Dual-Size-Frequency, Cherkasova 1998): size- and cost-aware.

Priority of an entry = L + frequency * cost / size, where L (the "inflation" clock) is set to the
priority of each evicted entry, so entries not touched for a long time age out. Evict the lowest
priority (ties: the least recently updated). `cost` defaults to 1 per entry (libCacheSim's GDSF and
the classic object-hit-ratio form); pass `cost_of(size) -> float` to weigh entries by what a miss
costs (the simulator passes the cost model's recompute time).
"""

from __future__ import annotations

from collections.abc import Callable

from mtbench.cache.policies.base import Key, ReplacementPolicy
from mtbench.cache.policies.lazy_heap import LazyHeap


class GDSF(ReplacementPolicy):
    """`_heap`: resident keys by priority (a LazyHeap); `_freq[key]`: accesses since the key became
    resident; `_clock`: L, the priority of the last evicted entry.
    """

    name = "gdsf"

    def __init__(self, capacity: int, cost_of: Callable[[int], float] | None = None) -> None:
        super().__init__(capacity)
        self._cost_of = cost_of
        self._freq: dict[Key, int] = {}
        self._heap = LazyHeap()
        self._clock = 0.0

    def _on_hit(self, key: Key, now: float) -> None:
        self._freq[key] += 1
        self._update(key)

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._freq[key] = 1
        self._update(key)

    def _update(self, key: Key) -> None:
        size = self._sizes[key]
        cost = 1.0 if self._cost_of is None else self._cost_of(size)
        priority = self._clock + self._freq[key] * cost / max(size, 1)
        self._heap.push(key, priority)

    def _pop_victim(self, incoming: Key | None) -> Key:
        key, self._clock = self._heap.pop_min(self._pins)
        self._on_remove(key)
        return key

    def _on_remove(self, key: Key) -> None:
        self._heap.remove(key)
        del self._freq[key]
