"""The one replacement-policy interface, shared by the fast simulator and the real GPU/host tiers.

A policy decides *which* resident entry leaves a tier when a new one needs room. It never touches
tensors: it only sees opaque hashable keys (the real tiers use `(user_id, static_version)`; the
simulator uses dense integer ids for speed) and integer sizes (bytes, or 1 per entry in unit mode).

Data structures kept by the base class (subclasses add their own queues / heaps / ghosts):
- `_sizes: dict[key, int]`   every resident key and its size;
- `used: int`                sum of `_sizes` values;
- `_pins: dict[key, int]`    pin count per key (a key may be pinned before it becomes resident);
- `_pinned_bytes: int`       sum of the sizes of resident keys whose pin count is > 0.

Invariants (checked by the tests after every operation):
- `used == sum(_sizes.values()) <= capacity`;
- a pinned key is never chosen as a victim (entries of requests in flight or queued stay put);
- `evict_until_fits(size)` either frees enough room for `size` and returns the evicted keys in the
  order they left, or returns None and changes nothing (it first checks that the unpinned bytes
  suffice, so a caller never ends up with a half-emptied tier and no room);
- `access()` on a missing key changes nothing, so a lookup can be retried on another tier.

Call protocol (what the simulator and the tiers do for one request for key k at virtual time t):
```
if policy.uses_next_use: policy.set_next_use(k, next_use_of_this_request)  # OPT only
if policy.access(k, t):           # hit: recency/frequency updated
    ...
else:
    evicted = policy.admit(k, size, t)   # evicts (victims returned, in order) then inserts
    if evicted is None: ...              # cannot fit: bypass the tier
```
`remove(k)` drops an entry explicitly (stale version, exclusive promotion to the other tier);
`hint_upcoming(keys, t)` tells the policy which keys are queued (lookahead), in arrival order.
Virtual time `now` is the request's trace time in seconds (non-decreasing; the simulator passes `ts`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import ClassVar

import numpy as np

from mtbench.errors import MtbenchError

Key = Hashable
NEVER = 1 << 62
"""Next-use time of a key that is never requested again (larger than any virtual time)."""


class ReplacementPolicy:
    """Byte-capacity replacement policy with pins; subclasses implement the four `_` hooks.

    Hooks (called only by this base class, with the base bookkeeping already consistent):
    - `_on_hit(key, now)`: a resident key was accessed;
    - `_on_insert(key, size, now)`: a key just became resident (already in `_sizes`);
    - `_pop_victim(incoming) -> key`: choose the next victim among resident *unpinned* keys, drop it
      from the subclass's own structures (recording ghosts/history as the algorithm does) and return
      it; `incoming` is the key being admitted (ARC looks at it) or None. Only called while at least
      one resident key is unpinned;
    - `_on_remove(key)`: a resident key is being dropped explicitly (no ghost is recorded).
    Not an `ABC`: the compiled core (`mtbench/compiled.py`, `base.pxd`) makes this an extension type, which
    takes no metaclass; `tests/test_compiled.py` checks that every registered policy implements the hooks.
    """

    name: ClassVar[str] = "base"
    uses_next_use: ClassVar[bool] = False
    """True for offline policies (OPT) that need `set_next_use` before every access/admit."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise MtbenchError(f"policy {self.name}: capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.used = 0
        self._sizes: dict[Key, int] = {}
        self._pins: dict[Key, int] = {}
        self._pinned_bytes = 0

    # ---------------------------------------------------------------- queries
    def __contains__(self, key: Key) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._sizes))

    @property
    def free(self) -> int:
        """Bytes (or units) not used by resident entries."""
        return self.capacity - self.used

    @property
    def pinned_bytes(self) -> int:
        return self._pinned_bytes

    def size_of(self, key: Key) -> int:
        """Size of a resident key (KeyError if absent)."""
        return self._sizes[key]

    def is_pinned(self, key: Key) -> bool:
        return key in self._pins

    def can_fit(self, size: int) -> bool:
        """Whether `evict_until_fits(size)` would succeed right now (pinned bytes cannot be freed)."""
        return size <= self.capacity - self._pinned_bytes

    def readmits(self, size: int) -> bool:
        """Whether a resident key of `size` removed now would be admitted back at that size: its room is
        still there, so only an admission rule (S3-FIFO's) can refuse it. The append variant asks before
        it resizes an entry that a batch in flight still reads."""
        return True

    # ---------------------------------------------------------------- pins
    def pin(self, key: Key) -> None:
        """Protect `key` from eviction until a matching `unpin` (pins nest; the key need not be resident)."""
        count = self._pins.get(key, 0)
        self._pins[key] = count + 1
        if count == 0:
            size = self._sizes.get(key)
            if size is not None:
                self._pinned_bytes += size

    def unpin(self, key: Key) -> None:
        """Release one pin of `key` (ValueError if it is not pinned)."""
        count = self._pins.get(key, 0)
        if count == 0:
            raise ValueError(f"unpin of a key that is not pinned: {key!r}")
        if count > 1:
            self._pins[key] = count - 1
            return
        del self._pins[key]
        size = self._sizes.get(key)
        if size is not None:
            self._pinned_bytes -= size

    # ---------------------------------------------------------------- life cycle
    def access(self, key: Key, now: float) -> bool:
        """Look `key` up: on a hit update the policy state and return True; on a miss change nothing."""
        if key in self._sizes:
            self._on_hit(key, now)
            return True
        return False

    def admit(self, key: Key, size: int, now: float) -> list[Key] | None:
        """Make `key` (absent) resident with `size`, evicting first as needed.

        Returns the evicted keys in eviction order (empty when none), or None when `size` cannot fit
        even after evicting every unpinned entry; then nothing changed.
        """
        if key in self._sizes:
            raise ValueError(f"admit of a key that is already resident: {key!r}")
        evicted = self.evict_until_fits(size, incoming=key)
        if evicted is None:
            return None
        self._insert(key, size, now)
        return evicted

    def evict_until_fits(self, size: int, incoming: Key | None = None) -> list[Key] | None:
        """Evict unpinned entries in policy order until `size` more fits; None (no change) if it never can."""
        if size > self.capacity - self._pinned_bytes:
            return None
        evicted: list[Key] = []
        while self.capacity - self.used < size:
            victim = self._pop_victim(incoming)
            self._forget(victim)
            evicted.append(victim)
        return evicted

    def remove(self, key: Key) -> int:
        """Drop `key` explicitly (stale version, exclusive promotion); returns its size, 0 if absent."""
        if key not in self._sizes:
            return 0
        self._on_remove(key)
        return self._forget(key)

    # ---------------------------------------------------------------- hints
    def set_next_use(self, key: Key, next_use: int) -> None:
        """Offline oracle: the virtual time of the next request for `key` after the current one (NEVER if none)."""

    def hint_upcoming(self, keys: Sequence[Key], now: float) -> None:
        """Lookahead: keys of the requests already queued, in arrival order (policies may ignore it)."""

    # ---------------------------------------------------------------- fast path
    @classmethod
    def unit_hit_mask(cls, keys: Sequence[int], capacity: int) -> np.ndarray | None:
        """Optional fast path: hits of one tier of `capacity` unit-size entries over a key sequence.

        Must give exactly the hits of the generic `access`/`admit` protocol with size 1, no pins and no
        hints (the tests compare both). Returns a bool array, or None when the policy has no fast path.
        """
        return None

    # ---------------------------------------------------------------- internals
    def _insert(self, key: Key, size: int, now: float) -> None:
        """Base bookkeeping of a new resident key, then the subclass hook (room already made)."""
        self._sizes[key] = size
        self.used += size
        if key in self._pins:
            self._pinned_bytes += size
        self._on_insert(key, size, now)

    def _forget(self, key: Key) -> int:
        size = self._sizes.pop(key)
        self.used -= size
        if key in self._pins:
            self._pinned_bytes -= size
        return size

    def _unpinned(self, keys: Iterable[Key]) -> Iterator[Key]:
        """The keys of `keys` that are not pinned (victim scans use it)."""
        pins = self._pins
        return (key for key in keys if key not in pins)

    @abstractmethod
    def _on_hit(self, key: Key, now: float) -> None: ...

    @abstractmethod
    def _on_insert(self, key: Key, size: int, now: float) -> None: ...

    @abstractmethod
    def _pop_victim(self, incoming: Key | None) -> Key: ...

    @abstractmethod
    def _on_remove(self, key: Key) -> None: ...
