"""LFU: evict the least frequently used entry, as libCacheSim's LFU.c does it.

Choices libCacheSim makes that the paper-less algorithm leaves open, matched here:
- a new entry starts at frequency 1, and an evicted entry's frequency is forgotten (no history);
- ties among entries of the same frequency go FIFO: the entry that *reached* that frequency first
  leaves first (libCacheSim appends to the frequency bucket's tail and evicts from its head).
"""

from __future__ import annotations

from collections import OrderedDict

from mtbench.cache.policies.base import Key, ReplacementPolicy


class LFU(ReplacementPolicy):
    """Least frequently used first.

    `_freq[key]`: access count of a resident key (1 on insert);
    `_buckets[f]`: OrderedDict of the keys with frequency f, in the order they reached f;
    `_min_freq`: smallest f with a non-empty bucket (a lower bound while pins force a scan).
    """

    name = "lfu"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._freq: dict[Key, int] = {}
        self._buckets: dict[int, OrderedDict[Key, None]] = {}
        self._min_freq = 1

    def _on_hit(self, key: Key, now: float) -> None:
        old = self._freq[key]
        self._freq[key] = old + 1
        bucket = self._buckets[old]
        del bucket[key]
        if not bucket:
            del self._buckets[old]
            if self._min_freq == old:
                self._min_freq = old + 1
        self._buckets.setdefault(old + 1, OrderedDict())[key] = None

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._freq[key] = 1
        self._buckets.setdefault(1, OrderedDict())[key] = None
        self._min_freq = 1

    def _pop_victim(self, incoming: Key | None) -> Key:
        for freq in sorted(self._buckets) if self._pins else (self._min_freq,):
            bucket = self._buckets[freq]
            victim = next(self._unpinned(bucket), None)
            if victim is not None:
                self._drop(victim)
                return victim
        raise AssertionError("no unpinned entry to evict")

    def _on_remove(self, key: Key) -> None:
        self._drop(key)

    def _drop(self, key: Key) -> None:
        freq = self._freq.pop(key)
        bucket = self._buckets[freq]
        del bucket[key]
        if not bucket:
            del self._buckets[freq]
            if self._min_freq == freq:
                self._min_freq = min(self._buckets, default=1)
