"""FIFO: evict the entry that was inserted first; hits change nothing (libCacheSim's FIFO)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

import numpy as np

from mtbench.cache.policies.base import Key, ReplacementPolicy


class FIFO(ReplacementPolicy):
    """First in, first out.

    `_queue`: OrderedDict of resident keys in insertion order (oldest first).
    Victim: the oldest unpinned key.
    """

    name = "fifo"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._queue: OrderedDict[Key, None] = OrderedDict()

    def access(self, key: Key, now: float) -> bool:
        return key in self._sizes

    def _on_hit(self, key: Key, now: float) -> None:
        """FIFO ignores hits."""

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._queue[key] = None

    def _pop_victim(self, incoming: Key | None) -> Key:
        victim = next(self._unpinned(self._queue)) if self._pins else next(iter(self._queue))
        del self._queue[victim]
        return victim

    def _on_remove(self, key: Key) -> None:
        del self._queue[key]

    @classmethod
    def unit_hit_mask(cls, keys: Sequence[int], capacity: int) -> np.ndarray:
        hits = bytearray(len(keys))
        if capacity <= 0:
            return np.zeros(len(keys), dtype=bool)
        resident: set[int] = set()
        queue: deque[int] = deque()
        add, discard = resident.add, resident.discard
        push, pop_oldest = queue.append, queue.popleft
        free = capacity
        for index, key in enumerate(keys):
            if key in resident:
                hits[index] = 1
                continue
            if free:
                free -= 1
            else:
                discard(pop_oldest())
            add(key)
            push(key)
        return np.frombuffer(hits, dtype=np.bool_).copy()
