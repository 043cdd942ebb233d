"""ARC (Megiddo & Modha, FAST'03), following libCacheSim's ARC.c (the version in libcachesim 0.3.5).

Details the paper leaves open, settled as libCacheSim settles them:
- sizes are counted in bytes/units everywhere (T1, T2, B1, B2); the target `p` is a float and its
  step on a ghost hit is `max(|B2| / |B1|, 1)` (B1 hit, p grows, capped at c) or
  `max(|B1| / |B2|, 1)` (B2 hit, p shrinks, floored at 0), as in the paper's real-valued form;
- a ghost hit removes the ghost and makes room with REPLACE only (the key then enters T2);
- a complete miss makes room with case IV: if |T1| + |B1| + incoming > c, drop B1's LRU ghost and
  REPLACE when B1 is non-empty, else evict T1's LRU without a ghost; otherwise drop B2's LRU ghost
  when |T1|+|B1|+|T2|+|B2| >= 2c (and B2 is non-empty), then REPLACE;
- REPLACE moves T1's LRU to B1 when (|T1| > 0 and (|T1| > p or (|T1| == p and the incoming key was
  in B2))) or T2 is empty, else T2's LRU to B2.
Pinned entries are skipped inside T1/T2 (with pins, REPLACE falls back to the other list).
"""

from __future__ import annotations

from collections import OrderedDict

from mtbench.cache.policies.base import Key, ReplacementPolicy


class ARC(ReplacementPolicy):
    """Adaptive replacement cache.

    `_t1`, `_t2`: resident keys seen once / at least twice, OrderedDicts with the LRU key first;
    `_b1`, `_b2`: ghost keys -> size (evicted from T1 / T2), LRU first; `_t1_bytes` ... `_b2_bytes`
    their total sizes; `_p`: target size of T1 (float). During one admission `_ghost_hit` /
    `_incoming_in_b2` say whether the key being admitted was a ghost (of B2) and `_admitting_size`
    is its size.
    """

    name = "arc"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._t1: OrderedDict[Key, None] = OrderedDict()
        self._t2: OrderedDict[Key, None] = OrderedDict()
        self._b1: OrderedDict[Key, int] = OrderedDict()
        self._b2: OrderedDict[Key, int] = OrderedDict()
        self._t1_bytes = self._t2_bytes = self._b1_bytes = self._b2_bytes = 0
        self._p = 0.0
        self._ghost_hit = False
        self._incoming_in_b2 = False
        self._admitting_size = 0

    def _on_hit(self, key: Key, now: float) -> None:
        if key in self._t1:
            del self._t1[key]
            size = self._sizes[key]
            self._t1_bytes -= size
            self._t2_bytes += size
            self._t2[key] = None
        else:
            self._t2.move_to_end(key)

    def admit(self, key: Key, size: int, now: float) -> list[Key] | None:
        if key in self._sizes:
            raise ValueError(f"admit of a key that is already resident: {key!r}")
        if not self.can_fit(size):
            return None
        self._ghost_hit = self._incoming_in_b2 = False
        if key in self._b1:
            self._p = min(self._p + max(self._b2_bytes / self._b1_bytes, 1.0), float(self.capacity))
            self._b1_bytes -= self._b1.pop(key)
            self._ghost_hit = True
        elif key in self._b2:
            self._p = max(self._p - max(self._b1_bytes / self._b2_bytes, 1.0), 0.0)
            self._b2_bytes -= self._b2.pop(key)
            self._ghost_hit = self._incoming_in_b2 = True
        evicted = self._evict_for(size)
        self._insert(key, size, now)
        self._ghost_hit = self._incoming_in_b2 = False
        return evicted

    def evict_until_fits(self, size: int, incoming: Key | None = None) -> list[Key] | None:
        if not self.can_fit(size):
            return None
        return self._evict_for(size)

    def _evict_for(self, size: int) -> list[Key]:
        self._admitting_size = size
        evicted = super().evict_until_fits(size)
        assert evicted is not None  # the caller checked can_fit
        return evicted

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        if self._ghost_hit:
            self._t2[key] = None
            self._t2_bytes += size
        else:
            self._t1[key] = None
            self._t1_bytes += size

    def _pop_victim(self, incoming: Key | None) -> Key:
        if self._ghost_hit:
            return self._replace()
        if self._t1_bytes + self._b1_bytes + self._admitting_size > self.capacity:
            if self._b1:
                self._b1_bytes -= self._b1.popitem(last=False)[1]
                return self._replace()
            victim = self._first_unpinned(self._t1)
            if victim is None:
                return self._replace()
            del self._t1[victim]
            self._t1_bytes -= self._sizes[victim]
            return victim
        if self._t1_bytes + self._b1_bytes + self._t2_bytes + self._b2_bytes >= 2 * self.capacity and self._b2:
            self._b2_bytes -= self._b2.popitem(last=False)[1]
        return self._replace()

    def _replace(self) -> Key:
        """REPLACE of the paper: move one LRU entry of T1 (to B1) or T2 (to B2) out of the cache."""
        t1 = self._t1_bytes
        prefer_t1 = (t1 > 0 and (t1 > self._p or (t1 == self._p and self._incoming_in_b2))) or self._t2_bytes == 0
        first, second = (self._t1, self._t2) if prefer_t1 else (self._t2, self._t1)
        victim = self._first_unpinned(first)
        if victim is None:
            victim = self._first_unpinned(second)
        size = self._sizes[victim]
        if victim in self._t1:
            del self._t1[victim]
            self._t1_bytes -= size
            self._b1[victim] = size
            self._b1_bytes += size
        else:
            del self._t2[victim]
            self._t2_bytes -= size
            self._b2[victim] = size
            self._b2_bytes += size
        return victim

    def _first_unpinned(self, queue: OrderedDict[Key, None]) -> Key | None:
        if not queue:
            return None
        return next(self._unpinned(queue), None) if self._pins else next(iter(queue))

    def _on_remove(self, key: Key) -> None:
        size = self._sizes[key]
        if key in self._t1:
            del self._t1[key]
            self._t1_bytes -= size
        else:
            del self._t2[key]
            self._t2_bytes -= size
