"""mtserve: S3-FIFO where keys are all there is; LRU that knows users and versions where there are some.

Design (one paragraph the README and reports/POLICIES.md quote):

    mtserve picks its backbone from the structure it sees. (1) *Plain keys* (no user ever changes
    static version: block traces, or any trace whose keys are its users): S3-FIFO, libCacheSim's
    variant (a probation FIFO of 10% of the capacity, a main CLOCK with 2-bit counters, a ghost
    queue of 90%), the best general policy on the ARC and CloudPhysics traces; unlike libCacheSim it
    admits every entry that fits (S3-FIFO refuses entries as large as its probation queue, which
    turns most GR entries into misses at small capacities). (2) *Users with versions* (once
    `USER_MODE_AFTER` arrivals have carried a new version of a known user; the switch is one-way,
    S3-FIFO's probation queue drains first and main is kept in LRU order from then on): recency is
    the backbone, as on every GR trace measured, and three things are added. Dead first: when the versions of arriving requests behave as a
    global clock (detected online; at most 0.1% of arrivals may disagree) every entry older than the
    newest version is certain to be stale at its user's next request; those go first, oldest version
    first. Without a global clock an entry is dead once a request (or a queued one) of its user
    carries a newer version. Evidence-gated value: among the `window` least recently used entries,
    mtserve estimates P(reuse before the stale point), the chance that the user's next request comes
    within the time left until the next version (the version period is learned online), given how
    long the user has been idle, from a histogram of the user's own gaps shrunk toward the
    population's; the value of keeping an entry is that probability x the reload cost per byte
    (`reload_ms(size) / size`: PCIe when the host keeps a copy, recomputing the prefix when not) /
    size; the least recently used candidate within `TIE_FACTOR` (4x) of the lowest value goes.
    Lookahead: keys of queued requests are never chosen while another entry can go.

Memory is O(resident keys + ghost keys + users): per user a 40-bin float32 gap histogram, the last
arrival time and the newest version; nothing grows with the number of requests. Speed: the unit-size
fast path is S3-FIFO's loop (no users, no versions); the generic path costs a few dict operations per
request, and in user mode at most `window` value estimates per eviction.

Gap histograms: half-octave bins of log2(1 + gap seconds), each gap spread over its bin and two on
either side; P(gap in (a, a+h] | gap > a) is read from the bin counts with linear interpolation
inside a bin. Keys are `(user_id, static_version)` tuples by default; the simulator passes `user_of` /
`version_of` for its integer keys.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from mtbench.cache.policies.base import Key
from mtbench.cache.policies.s3fifo import S3FIFO, unit_hits

DEFAULT_HORIZON_S = 86_400.0
DEFAULT_WINDOW = 16
DEFAULT_PRIOR_WEIGHT = 4.0
TIE_FACTOR = 4.0
"""A candidate more recent than the LRU one is evicted only if the LRU one is worth this many times more."""
CLOCK_TOLERANCE = 0.001
"""Share of arrivals allowed to carry an older version than the newest seen while versions count as a clock."""
USER_MODE_AFTER = 8
"""Arrivals carrying a new version of an already seen user before mtserve switches to user mode."""

_N_BINS = 40
_BIN_EDGES = [2 ** (b / 2) - 1 for b in range(_N_BINS + 1)]
_SPREAD = [
    [(min(max(center + offset, 0), _N_BINS - 1), (3 - abs(offset)) / 9) for offset in range(-2, 3)]
    for center in range(_N_BINS)
]
"""Each gap is spread over its bin and two on either side (weights 1 2 3 2 1 / 9), so that a slightly
longer idle time than ever seen is not 'never'."""


def _gap_bin(gap: float) -> int:
    if gap <= 0.0:
        return 0
    b = int(2 * math.log2(1.0 + gap))
    return b if b < _N_BINS else _N_BINS - 1


def _user_of_tuple(key: Key) -> Hashable:
    return key[0] if isinstance(key, tuple) else key


def _version_of_tuple(key: Key) -> int:
    return int(key[1]) if isinstance(key, tuple) else 0


class GapHistogram:
    """Counts of inter-request gaps in half-octave bins (float32); `tail[b]` = gaps in bins >= b (lazy).

    40 bins reach 2^20 s (12 days); longer gaps share the last bin.
    """

    __slots__ = ("_counts", "_tail")

    def __init__(self) -> None:
        self._counts = array("f", bytes(4 * _N_BINS))
        self._tail: array | None = None

    def add(self, gap: float) -> None:
        """Count one gap, spread over its bin and two on each side (a factor 2 either way)."""
        counts = self._counts
        for b, weight in _SPREAD[_gap_bin(gap)]:
            counts[b] += weight
        self._tail = None

    def longer_than(self, age: float) -> float:
        """Number of recorded gaps longer than `age` (interpolated inside age's bin)."""
        return self.longer_than_both(age, age)[0]

    def longer_than_both(self, age: float, later: float) -> tuple[float, float]:
        """(gaps longer than `age`, gaps longer than `later`): one call for the two ends of a horizon."""
        tail = self._tail
        if tail is None:
            tail = array("f", bytes(4 * (_N_BINS + 1)))
            counts, running = self._counts, 0.0
            for b in range(_N_BINS - 1, -1, -1):
                running += counts[b]
                tail[b] = running
            self._tail = tail
        longer = []
        for point in (age, later):
            b = _gap_bin(point)
            low, high = _BIN_EDGES[b], _BIN_EDGES[b + 1]
            inside = (high - point) / (high - low)
            inside = 0.0 if inside < 0.0 else 1.0 if inside > 1.0 else inside
            longer.append(tail[b + 1] + (tail[b] - tail[b + 1]) * inside)
        return longer[0], longer[1]


class MTServe(S3FIFO):
    """S3-FIFO queues (see s3fifo.py) plus user mode: `_main` in LRU order, dead-first, value-gated victims.

    Added state: `_user_mode`; `_last_use[key]` (resident keys); `_by_version[v]`: resident keys of
    version v (insertion order); per user `_newest_version` (arrivals and hints), `_arrived_version`, `_last_seen` and (user mode) `_gaps`;
    `_population`: everyone's gaps; version clock: `_max_version`, `_arrivals`, `_clock_violations`,
    `_version_changes`, the first times versions `_clock_start` and `_max_version` were seen;
    `_upcoming`: keys of queued requests; `_now`: latest time seen; `_reload_per_byte[size]`: the
    reload cost per byte of an entry size (one per distinct size). In user mode every admitted key
    enters `_main`, a hit moves it to `_main`'s end, and `_small` only drains (oldest first).
    """

    name = "mtserve"

    def __init__(
        self,
        capacity: int,
        reload_ms: Callable[[int], float] | None = None,
        user_of: Callable[[Key], Hashable] = _user_of_tuple,
        version_of: Callable[[Key], int] = _version_of_tuple,
        session_gap: float = DEFAULT_HORIZON_S,
        window: int = DEFAULT_WINDOW,
        prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    ) -> None:
        """`session_gap`: the reuse horizon (seconds) while the version period is not yet known."""
        super().__init__(capacity)
        self._reload_ms = reload_ms
        self._user_of = user_of
        self._version_of = version_of
        self._default_horizon = float(session_gap)
        self._window = max(1, int(window))
        self._prior_weight = float(prior_weight)
        self._user_mode = False
        self._last_use: dict[Key, float] = {}
        self._by_version: dict[int, dict[Key, None]] = {}
        self._newest_version: dict[Hashable, int] = {}
        self._arrived_version: dict[Hashable, int] = {}  # version of each user's last arrival (hints excluded)
        self._last_seen: dict[Hashable, float] = {}
        self._gaps: dict[Hashable, GapHistogram] = {}
        self._population = GapHistogram()
        self._max_version = -1
        self._max_version_since = 0.0
        self._clock_start: tuple[int, float] | None = None
        self._arrivals = 0
        self._clock_violations = 0
        self._version_changes = 0
        self._upcoming: set[Key] = set()
        self._now = 0.0
        self._reload_per_byte: dict[int, float] = {}

    # ------------------------------------------------------------ learning from arrivals
    def access(self, key: Key, now: float) -> bool:
        self._observe_arrival(key, now)
        if key not in self._sizes:
            return False
        self._count[key] += 1
        self._last_use[key] = now
        if self._user_mode and key in self._main:
            self._main.move_to_end(key)
        return True

    def _observe_arrival(self, key: Key, now: float) -> None:
        """Learn from every request (hit or miss); `access` is called once per request on each tier."""
        user, version = self._user_of(key), self._version_of(key)
        if self._user_mode:
            last = self._last_seen.get(user)
            if last is not None and now >= last:
                gaps = self._gaps.get(user)
                if gaps is None:
                    gaps = self._gaps[user] = GapHistogram()
                gaps.add(now - last)
                self._population.add(now - last)
            self._last_seen[user] = now
        self._now = max(self._now, now)
        self._arrivals += 1
        if version < self._max_version:
            self._clock_violations += 1
        # a hint (`hint_upcoming`) may already have raised `_newest_version` to this arrival's version, so
        # version changes are counted between arrivals only
        previous = self._arrived_version.get(user)
        self._arrived_version[user] = version
        if previous is not None and version != previous and not self._user_mode:
            self._version_changes += 1
            if self._version_changes >= USER_MODE_AFTER:
                self._user_mode = True
        self._raise_versions(user, version, now)
        self._upcoming.discard(key)

    def _raise_versions(self, user: Hashable, version: int, now: float) -> None:
        if version > self._newest_version.get(user, -1):
            self._newest_version[user] = version
        if version > self._max_version:
            self._max_version, self._max_version_since = version, now
            if self._clock_start is None:
                self._clock_start = (version, now)

    def hint_upcoming(self, keys: Sequence[Key], now: float) -> None:
        self._upcoming = set(keys)
        for key in keys:
            self._raise_versions(self._user_of(key), self._version_of(key), now)

    @property
    def user_mode(self) -> bool:
        """Whether users change versions in this traffic (then LRU + dead-first + value), else S3-FIFO."""
        return self._user_mode

    @property
    def versions_are_a_clock(self) -> bool:
        """Whether arriving versions behave as one global clock (then older versions are dead)."""
        return self._clock_violations <= CLOCK_TOLERANCE * self._arrivals

    def stale_horizon(self) -> float:
        """Seconds until the next version is expected (the default horizon until a period is known)."""
        start = self._clock_start
        if not self.versions_are_a_clock or start is None or self._max_version == start[0]:
            return self._default_horizon
        period = (self._max_version_since - start[1]) / (self._max_version - start[0])
        return max(self._max_version_since + period - self._now, 0.05 * period)

    # ------------------------------------------------------------ S3-FIFO hooks
    def _refuses(self, size: int, was_ghost: bool) -> bool:
        return False

    def _enters_main(self, key: Key, was_ghost: bool) -> bool:
        return self._user_mode or super()._enters_main(key, was_ghost)

    def _on_hit(self, key: Key, now: float) -> None:
        self._count[key] += 1
        self._last_use[key] = now

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        super()._on_insert(key, size, now)
        self._last_use[key] = now
        self._by_version.setdefault(self._version_of(key), {})[key] = None

    def _on_remove(self, key: Key) -> None:
        super()._on_remove(key)
        self._forget_key(key)

    def _forget_key(self, key: Key) -> None:
        del self._last_use[key]
        version = self._version_of(key)
        bucket = self._by_version[version]
        del bucket[key]
        if not bucket:
            del self._by_version[version]

    def _pop_victim(self, incoming: Key | None) -> Key:
        if not self._user_mode:
            victim = super()._pop_victim(incoming)
            self._forget_key(victim)
            return victim
        self._has_evicted = True
        victim = self._dead_victim() if self.versions_are_a_clock else None
        if victim is None:
            victim = self._live_victim()
        self._on_remove(victim)
        return victim

    # ------------------------------------------------------------ user mode
    def _evictable(self, key: Key) -> bool:
        return key not in self._pins and key not in self._upcoming

    def _dead_victim(self) -> Key | None:
        """An evictable entry of the oldest version older than the newest (clock mode)."""
        if len(self._by_version) == 1 and self._max_version in self._by_version:
            return None
        for version in sorted(v for v in self._by_version if v < self._max_version):
            for key in self._by_version[version]:
                if self._evictable(key):
                    return key
        return None

    def _live_victim(self) -> Key:
        """Small's leftovers first (oldest first), then the value-gated choice among main's LRU end."""
        candidates: list[Key] = []
        for queue in (self._small, self._main):
            for key in queue:
                if self._evictable(key):
                    if queue is self._small:
                        return key
                    candidates.append(key)
                    if len(candidates) >= self._window:
                        break
        if not candidates:  # only queued keys are unpinned: the least recent of them goes
            return next(key for queue in (self._small, self._main) for key in self._unpinned(queue))
        now, horizon = self._now, self.stale_horizon()
        values = [self._value(key, now, horizon) for key in candidates]
        floor = min(values) * TIE_FACTOR
        return next(key for key, value in zip(candidates, values) if value <= floor)

    def value_density(self, key: Key, now: float) -> float:
        """Value of keeping resident `key` at time `now` (0 for a dead entry; see module doc)."""
        return self._value(key, now, self.stale_horizon())

    def _value(self, key: Key, now: float, horizon: float) -> float:
        user = self._user_of(key)
        if self._version_of(key) < self._newest_version.get(user, -1):
            return 0.0
        size = max(self._sizes[key], 1)
        reload_per_byte = self._reload_per_byte.get(size)
        if reload_per_byte is None:
            reload_per_byte = 1.0 if self._reload_ms is None else self._reload_ms(size) / size
            self._reload_per_byte[size] = reload_per_byte
        return self.reuse_probability(user, now - self._last_use[key], horizon) * reload_per_byte / size

    def reuse_probability(self, user: Hashable, age: float, horizon: float) -> float:
        """P(the user's next gap ends within `horizon` | it already lasted `age`), user shrunk to population."""
        pop_longer, pop_longer_later = self._population.longer_than_both(age, age + horizon)
        pop_p = (pop_longer - pop_longer_later) / pop_longer if pop_longer > 0 else 0.0
        gaps = self._gaps.get(user)
        if gaps is None:
            return pop_p
        longer, longer_later = gaps.longer_than_both(age, age + horizon)
        weight = self._prior_weight
        return (longer - longer_later + weight * pop_p) / (longer + weight)

    # ------------------------------------------------------------ fast path
    @classmethod
    def unit_hit_mask(cls, keys: Sequence[int], capacity: int) -> np.ndarray:
        """Unit sizes, no pins, plain keys (every key its own user, one version): S3-FIFO admitting every key."""
        return unit_hits(keys, capacity)
