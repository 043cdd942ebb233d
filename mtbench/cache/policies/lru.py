"""LRU: evict the least recently used entry (libCacheSim's LRU)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from mtbench.cache.policies.base import Key, ReplacementPolicy


class LRU(ReplacementPolicy):
    """Least recently used first.

    `_order`: OrderedDict of resident keys, least recently used first; a hit moves a key to the end.
    Victim: the first unpinned key of `_order`.
    """

    name = "lru"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._order: OrderedDict[Key, None] = OrderedDict()

    def access(self, key: Key, now: float) -> bool:
        if key in self._sizes:
            self._order.move_to_end(key)
            return True
        return False

    def _on_hit(self, key: Key, now: float) -> None:
        self._order.move_to_end(key)

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._order[key] = None

    def _pop_victim(self, incoming: Key | None) -> Key:
        victim = next(self._unpinned(self._order)) if self._pins else next(iter(self._order))
        del self._order[victim]
        return victim

    def _on_remove(self, key: Key) -> None:
        del self._order[key]

    @classmethod
    def unit_hit_mask(cls, keys: Sequence[int], capacity: int) -> np.ndarray:
        hits = bytearray(len(keys))
        if capacity <= 0:
            return np.zeros(len(keys), dtype=bool)
        order: OrderedDict[int, None] = OrderedDict()
        move_to_end, pop_oldest = order.move_to_end, order.popitem
        free = capacity
        for index, key in enumerate(keys):
            if key in order:
                move_to_end(key)
                hits[index] = 1
            else:
                if free:
                    free -= 1
                else:
                    pop_oldest(False)
                order[key] = None
        return np.frombuffer(hits, dtype=np.bool_).copy()
