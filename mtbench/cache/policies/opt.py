"""OPT (Belady's MIN): evict the entry whose next use is farthest in the future; the offline bound.

The simulator precomputes, for every request, the index of the next request for the same key (as
libCacheSim's oracleGeneral `next_access_vtime`; NEVER when there is none) and calls `set_next_use`
before `access`/`admit`. Ties (several entries never used again) do not change the hit count with
unit sizes; they are broken by the older update first. With byte sizes this is "farthest next use
first", the classic heuristic bound (libCacheSim's Belady, not its sampled BeladySize).
"""

from __future__ import annotations

import heapq
import itertools

from mtbench.cache.policies.base import NEVER, Key, ReplacementPolicy


class OPT(ReplacementPolicy):
    """Belady's farthest-next-use eviction with a lazy max-heap.

    `_next_use[key]`: next-use time of each resident key; `_heap`: entries (-next_use, stamp, key),
    valid only while `_stamp[key] == stamp` (every update pushes a new entry and bumps the stamp);
    `_pending`: the next use announced by `set_next_use` for the request being served.
    """

    name = "opt"
    uses_next_use = True

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._next_use: dict[Key, int] = {}
        self._stamp: dict[Key, int] = {}
        self._heap: list[tuple[int, int, Key]] = []
        self._counter = itertools.count()
        self._pending: dict[Key, int] = {}

    def set_next_use(self, key: Key, next_use: int) -> None:
        self._pending[key] = next_use

    def _on_hit(self, key: Key, now: float) -> None:
        self._schedule(key)

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._schedule(key)

    def _schedule(self, key: Key) -> None:
        next_use = self._pending.pop(key, NEVER)
        stamp = next(self._counter)
        self._next_use[key] = next_use
        self._stamp[key] = stamp
        heapq.heappush(self._heap, (-next_use, stamp, key))
        if len(self._heap) > 4 * len(self._stamp) + 64:
            self._heap = [(-self._next_use[k], s, k) for k, s in self._stamp.items()]
            heapq.heapify(self._heap)

    def _pop_victim(self, incoming: Key | None) -> Key:
        heap, stamps, pins = self._heap, self._stamp, self._pins
        skipped: list[tuple[int, int, Key]] = []
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
        self._on_remove(key)
        return key

    def _on_remove(self, key: Key) -> None:
        del self._stamp[key]
        del self._next_use[key]
