"""A min-heap of keys by priority with lazy deletion, shared by the priority-ordered policies (GDSF, OPT)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Container

from mtbench.cache.policies.base import Key


class LazyHeap:
    """Heap items are (priority, stamp, key); an item is live only while `_stamp[key] == stamp`.

    `push` of a key already present adds a new item and bumps its stamp (the old item goes stale);
    `remove` forgets the key (its items go stale). Ties pop the older update first. Stale items are
    skipped when popped, and the heap is rebuilt from the live keys when it grows past four times them.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Key]] = []
        self._stamp: dict[Key, int] = {}
        self._priority: dict[Key, float] = {}
        self._counter = itertools.count()

    def push(self, key: Key, priority: float) -> None:
        stamp = next(self._counter)
        self._priority[key] = priority
        self._stamp[key] = stamp
        heapq.heappush(self._heap, (priority, stamp, key))
        if len(self._heap) > 4 * len(self._stamp) + 64:
            self._heap = [(self._priority[k], s, k) for k, s in self._stamp.items()]
            heapq.heapify(self._heap)

    def remove(self, key: Key) -> None:
        del self._stamp[key]
        del self._priority[key]

    def pop_min(self, skip: Container[Key]) -> tuple[Key, float]:
        """The live key of lowest priority not in `skip`, and its priority; it stays in the heap's
        bookkeeping until `remove(key)` (the policy's removal path calls it)."""
        heap, stamps = self._heap, self._stamp
        skipped: list[tuple[float, int, Key]] = []
        while True:
            entry = heapq.heappop(heap)
            key = entry[2]
            if stamps.get(key) != entry[1]:
                continue
            if key in skip:
                skipped.append(entry)
                continue
            break
        for item in skipped:
            heapq.heappush(heap, item)
        return key, entry[0]
