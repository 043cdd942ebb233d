"""S3-FIFO (Yang et al., SOSP'23), following libCacheSim's S3FIFO.c (not the original S3FIFOv0.c).

Three FIFO queues: a small one (10% of the capacity), a main one (the rest, a CLOCK with a 2-bit
counter) and a ghost queue of keys only (90% of the capacity, counted in entry sizes). Defaults and
details match libCacheSim: small-size-ratio 0.1 (`int(c * 0.1)`), ghost-size-ratio 0.9, move-to-main
threshold 2, and
- a new key enters small, or main when it was a ghost; before the first eviction ever, keys that
  find small full go to main (libCacheSim's variant);
- a hit increments the key's counter (uncapped; main caps it at 3 when reinserting);
- eviction evicts from main if main is over its share or small is empty, else from small;
- small's oldest moves to main (counter reset to 0) if its counter >= threshold, else it leaves
  and becomes a ghost; main's oldest is reinserted with counter min(c, 3) - 1 if c >= 1, else leaves.
One deliberate difference: a key that is neither a ghost nor smaller than the small queue is refused
before anything is evicted (libCacheSim evicts first, then refuses), so `admit` keeps the
frees-enough-or-changes-nothing contract. With unit sizes this only matters below 20 entries.
Pinned keys are rotated past (small: moved to main; main: reinserted with their counter).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

import numpy as np

from mtbench.cache.policies.base import Key, ReplacementPolicy

SMALL_RATIO = 0.1
GHOST_RATIO = 0.9
MOVE_TO_MAIN_THRESHOLD = 2


class S3FIFO(ReplacementPolicy):
    """Small + main + ghost FIFOs.

    `_small`, `_main`: resident keys in FIFO order (oldest first); `_small_bytes`, `_main_bytes`
    their sizes; `_count[key]`: access counter of a resident key; `_ghost`: key -> size of keys
    evicted from small, oldest first, `_ghost_bytes <= _ghost_capacity`; `_has_evicted`: whether any
    eviction happened yet. Invariant: `_small_bytes + _main_bytes == used`.
    """

    name = "s3fifo"

    def __init__(self, capacity: int, small_ratio: float = SMALL_RATIO, ghost_ratio: float = GHOST_RATIO,
                 move_to_main_threshold: int = MOVE_TO_MAIN_THRESHOLD) -> None:
        super().__init__(capacity)
        self._small_capacity = int(capacity * small_ratio)
        self._main_capacity = capacity - self._small_capacity
        self._ghost_capacity = int(capacity * ghost_ratio)
        self._threshold = move_to_main_threshold
        self._small: OrderedDict[Key, None] = OrderedDict()
        self._main: OrderedDict[Key, None] = OrderedDict()
        self._ghost: OrderedDict[Key, int] = OrderedDict()
        self._small_bytes = self._main_bytes = self._ghost_bytes = 0
        self._count: dict[Key, int] = {}
        self._has_evicted = False
        self._to_main = False

    def access(self, key: Key, now: float) -> bool:
        count = self._count
        if key in count:
            count[key] += 1
            return True
        return False

    def _on_hit(self, key: Key, now: float) -> None:
        self._count[key] += 1

    def admit(self, key: Key, size: int, now: float) -> list[Key] | None:
        if key in self._sizes:
            raise ValueError(f"admit of a key that is already resident: {key!r}")
        was_ghost = key in self._ghost
        if self._refuses(size, was_ghost) or not self.can_fit(size):
            return None
        if was_ghost:  # before evicting: eviction may push this very key out of the ghost queue
            self._ghost_bytes -= self._ghost.pop(key)
        evicted = self.evict_until_fits(size, incoming=key)
        assert evicted is not None
        self._to_main = self._enters_main(key, was_ghost)
        self._insert(key, size, now)
        return evicted

    def _refuses(self, size: int, was_ghost: bool) -> bool:
        """libCacheSim refuses a key that is neither a ghost nor smaller than the small queue."""
        return not was_ghost and size >= self._small_capacity

    def readmits(self, size: int) -> bool:
        return not self._refuses(size, was_ghost=False)  # a removed key leaves no ghost

    def _enters_main(self, key: Key, was_ghost: bool) -> bool:
        """Ghosts go to main; so do keys that find small full before the first eviction ever."""
        return was_ghost or (not self._has_evicted and self._small_bytes >= self._small_capacity)

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._count[key] = 0
        if self._to_main:
            self._main[key] = None
            self._main_bytes += size
        else:
            self._small[key] = None
            self._small_bytes += size

    def _pop_victim(self, incoming: Key | None) -> Key:
        self._has_evicted = True
        while True:
            if self._main_bytes > self._main_capacity or self._small_bytes == 0:
                victim = self._evict_main()
            else:
                victim = self._evict_small()
            if victim is not None:
                return victim

    def _evict_small(self) -> Key | None:
        """Move small's oldest keys to main until one leaves (returned, now a ghost); None if small empties."""
        small, count, sizes, pins = self._small, self._count, self._sizes, self._pins
        while small:
            key, _ = small.popitem(last=False)
            size = sizes[key]
            self._small_bytes -= size
            if count[key] >= self._threshold or key in pins:
                count[key] = 0
                self._main[key] = None
                self._main_bytes += size
                continue
            del count[key]
            self._remember_ghost(key, size)
            return key
        return None

    def _evict_main(self) -> Key | None:
        """CLOCK over main: reinsert keys with counter >= 1 (decremented); the first at 0 leaves."""
        main, count, pins = self._main, self._count, self._pins
        for _ in range(4 * len(main) + 1):
            key, _ = main.popitem(last=False)
            if key in pins:
                main[key] = None
                continue
            if count[key] >= 1:
                count[key] = min(count[key], 3) - 1
                main[key] = None
                continue
            del count[key]
            self._main_bytes -= self._sizes[key]
            return key
        return self._evict_small() if self._small else None

    def _remember_ghost(self, key: Key, size: int) -> None:
        if size > self._ghost_capacity:
            return
        ghost = self._ghost
        while self._ghost_bytes + size > self._ghost_capacity:
            self._ghost_bytes -= ghost.popitem(last=False)[1]
        ghost[key] = size
        self._ghost_bytes += size

    def _on_remove(self, key: Key) -> None:
        size = self._sizes[key]
        del self._count[key]
        if key in self._small:
            del self._small[key]
            self._small_bytes -= size
        else:
            del self._main[key]
            self._main_bytes -= size

    @classmethod
    def unit_hit_mask(cls, keys: Sequence[int], capacity: int) -> np.ndarray:
        """The same algorithm specialised to size 1, no pins: deques instead of OrderedDicts."""
        if int(capacity * SMALL_RATIO) <= 1:  # every key is refused (see the class docstring), so nothing ever hits
            return np.zeros(len(keys), dtype=bool)
        return unit_hits(keys, capacity)


def unit_hits(keys: Sequence[int], capacity: int) -> np.ndarray:
    """S3-FIFO over unit-size keys, no pins, admitting every key (no refusal; S3FIFO refuses only below 20 entries)."""
    hits = bytearray(len(keys))
    small_capacity = int(capacity * SMALL_RATIO)
    main_capacity = capacity - small_capacity
    ghost_capacity = int(capacity * GHOST_RATIO)
    if capacity <= 0:
        return np.zeros(len(keys), dtype=bool)
    count: dict[int, int] = {}
    small: deque[int] = deque()
    main: deque[int] = deque()
    ghost: OrderedDict[int, None] = OrderedDict()
    pop_oldest_ghost = ghost.popitem
    threshold = MOVE_TO_MAIN_THRESHOLD
    has_evicted = False
    for index, key in enumerate(keys):
        if key in count:
            count[key] += 1
            hits[index] = 1
            continue
        was_ghost = key in ghost
        if was_ghost:
            del ghost[key]
        if len(small) + len(main) >= capacity:
            has_evicted = True
            evicted = False
            while not evicted:
                if len(main) > main_capacity or not small:
                    while True:
                        old = main.popleft()
                        old_count = count[old]
                        if old_count >= 1:
                            count[old] = (old_count if old_count < 3 else 3) - 1
                            main.append(old)
                        else:
                            del count[old]
                            evicted = True
                            break
                else:
                    while small:
                        old = small.popleft()
                        if count[old] >= threshold:
                            count[old] = 0
                            main.append(old)
                        else:
                            del count[old]
                            if ghost_capacity >= 1:
                                if len(ghost) >= ghost_capacity:
                                    pop_oldest_ghost(False)
                                ghost[old] = None
                            evicted = True
                            break
        count[key] = 0
        if was_ghost or (not has_evicted and len(small) >= small_capacity):
            main.append(key)
        else:
            small.append(key)
    return np.frombuffer(hits, dtype=np.bool_).copy()
