"""SIEVE (Zhang et al., NSDI'24), as libCacheSim's Sieve.c does it.

New entries go to the head of one queue; a hit only sets the entry's `visited` bit. To evict, a
hand walks from where it stopped last (the tail at first) toward the head, clearing visited bits,
and evicts the first entry whose bit is clear; the hand then rests on the next newer entry, and
wraps to the tail when it passes the head.
"""

from __future__ import annotations

from mtbench.cache.policies.base import Key, ReplacementPolicy


class SIEVE(ReplacementPolicy):
    """SIEVE with a doubly linked queue in two dicts.

    `_newer[key]` / `_older[key]`: neighbours toward the head (newest) / tail (oldest), None at ends;
    `_head`, `_tail`: newest / oldest resident key; `_hand`: where the next scan starts (None = tail);
    `_visited`: keys hit since the hand last passed them. Pinned keys are passed over like visited ones
    but keep their bit.
    """

    name = "sieve"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._newer: dict[Key, Key | None] = {}
        self._older: dict[Key, Key | None] = {}
        self._head: Key | None = None
        self._tail: Key | None = None
        self._hand: Key | None = None
        self._visited: set[Key] = set()

    def access(self, key: Key, now: float) -> bool:
        if key in self._sizes:
            self._visited.add(key)
            return True
        return False

    def _on_hit(self, key: Key, now: float) -> None:
        self._visited.add(key)

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._newer[key] = None
        self._older[key] = self._head
        if self._head is not None:
            self._newer[self._head] = key
        self._head = key
        if self._tail is None:
            self._tail = key

    def _pop_victim(self, incoming: Key | None) -> Key:
        visited, pins, newer = self._visited, self._pins, self._newer
        key = self._hand if self._hand is not None else self._tail
        while key in visited or key in pins:
            if key not in pins:
                visited.discard(key)
            key = newer[key]
            if key is None:
                key = self._tail
        self._hand = newer[key]
        self._unlink(key)
        return key

    def _on_remove(self, key: Key) -> None:
        if self._hand == key:
            self._hand = self._newer[key]
        self._unlink(key)

    def _unlink(self, key: Key) -> None:
        newer, older = self._newer.pop(key), self._older.pop(key)
        self._visited.discard(key)
        if newer is None:
            self._head = older
        else:
            self._older[newer] = older
        if older is None:
            self._tail = newer
        else:
            self._newer[older] = newer
