"""GDSF (Greedy-Dual-Size-Frequency, Cherkasova 1998): size- and cost-aware.

Priority of an entry = L + frequency * cost / size, where L (the "inflation" clock) is set to the
priority of each evicted entry, so entries not touched for a long time age out. Evict the lowest
priority (ties: the least recently updated). `cost` defaults to 1 per entry (libCacheSim's GDSF and
the classic object-hit-ratio form); pass `cost_of(size) -> float` to weigh entries by what a miss
costs (the simulator passes the cost model's recompute time).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from mtbench.cache.policies.base import Key, ReplacementPolicy


class GDSF(ReplacementPolicy):
    """Lazy min-heap of (priority, stamp, key); an entry is valid while `_stamp[key] == stamp`.

    `_freq[key]`: accesses since the key became resident; `_priority[key]`: its current priority;
    `_clock`: L, the priority of the last evicted entry.
    """

    name = "gdsf"

    def __init__(self, capacity: int, cost_of: Callable[[int], float] | None = None) -> None:
        super().__init__(capacity)
        self._cost_of = cost_of
        self._freq: dict[Key, int] = {}
        self._priority: dict[Key, float] = {}
        self._stamp: dict[Key, int] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._counter = itertools.count()
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
        stamp = next(self._counter)
        self._priority[key] = priority
        self._stamp[key] = stamp
        heapq.heappush(self._heap, (priority, stamp, key))
        if len(self._heap) > 4 * len(self._stamp) + 64:
            self._heap = [(self._priority[k], s, k) for k, s in self._stamp.items()]
            heapq.heapify(self._heap)

    def _pop_victim(self, incoming: Key | None) -> Key:
        heap, stamps, pins = self._heap, self._stamp, self._pins
        skipped: list[tuple[float, int, Key]] = []
        while True:
            entry = heapq.heappop(heap)
            key = entry[2]
            if stamps.get(key) != entry[1]:
                continue
            if key in pins:
                skipped.append(entry)
                continue
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        self._clock = entry[0]
        self._on_remove(key)
        return key

    def _on_remove(self, key: Key) -> None:
        del self._stamp[key]
        del self._priority[key]
        del self._freq[key]
