"""OPT (Belady's MIN): evict the entry whose next use is farthest in the future; the offline bound.

The simulator precomputes, for every request, the index of the next request for the same key (as
libCacheSim's oracleGeneral `next_access_vtime`; NEVER when there is none) and calls `set_next_use`
before `access`/`admit`. Ties (several entries never used again) do not change the hit count with
unit sizes; they are broken by the older update first. With byte sizes this is "farthest next use
first", the classic heuristic bound (libCacheSim's Belady, not its sampled BeladySize).
"""

from __future__ import annotations

from mtbench.cache.policies.base import NEVER, Key, ReplacementPolicy
from mtbench.cache.policies.lazy_heap import LazyHeap


class OPT(ReplacementPolicy):
    """Belady's farthest-next-use eviction with a lazy max-heap.

    `_heap`: resident keys by -next_use (a LazyHeap, so the farthest next use pops first);
    `_pending`: the next use announced by `set_next_use` for the request being served.
    """

    name = "opt"
    uses_next_use = True

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._heap = LazyHeap()
        self._pending: dict[Key, int] = {}

    def set_next_use(self, key: Key, next_use: int) -> None:
        self._pending[key] = next_use

    def _on_hit(self, key: Key, now: float) -> None:
        self._schedule(key)

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._schedule(key)

    def _schedule(self, key: Key) -> None:
        next_use = self._pending.pop(key, NEVER)
        self._heap.push(key, -next_use)

    def _pop_victim(self, incoming: Key | None) -> Key:
        key, _ = self._heap.pop_min(self._pins)
        self._on_remove(key)
        return key

    def _on_remove(self, key: Key) -> None:
        self._heap.remove(key)
