"""mtserve: S3-FIFO where keys are all there is; LRU that knows users and versions where there are some.

Design (one paragraph the README and reports/POLICIES.md quote):

    mtserve picks its backbone from the structure it sees. (1) *Plain keys* (no user ever changes static
    version: block traces, or any trace whose keys are its users): S3-FIFO, libCacheSim's variant (a
    probation FIFO of 10% of the capacity, a main CLOCK with 2-bit counters, a ghost queue of 90%), the
    best general policy on the ARC and CloudPhysics traces; unlike libCacheSim it admits every entry
    that fits (S3-FIFO refuses entries as large as its probation queue, which turns most GR entries into
    misses at small capacities). (2) *Users with versions* (once `USER_MODE_AFTER` arrivals have carried
    a new version of a known user; the switch is one-way, S3-FIFO's probation queue drains first and
    main is kept in LRU order from then on): recency is the backbone, as on every GR trace measured, and
    three things are added. Dead first: when the versions of arriving requests behave as a global clock
    (detected online; at most 0.1% of arrivals may disagree) every entry older than the newest version
    is certain to be stale at its user's next request; those go first, oldest version first. Without a
    global clock an entry is dead once a request (or a queued one) of its user carries a newer version.
    Evidence-gated value: among the `window` least recently used entries, mtserve estimates P(reuse
    before the stale point), the chance that the user's next request comes within the time left until
    the next version (the version period is learned online), given how long the user has been idle, from
    a histogram of the user's own gaps shrunk toward the population's; the value of keeping an entry is
    that probability x the reload cost per byte (`reload_ms(size) / size`: PCIe when the host keeps a
    copy, recomputing the prefix when not) / size; the least recently used candidate within `TIE_FACTOR`
    (4x) of the lowest value goes (a value is reused until the entry is used again, its idle time
    doubles or the clock moves). Lookahead: keys of queued requests are never chosen while another entry
    can go.

Memory is O(resident keys + ghost keys + users): per user one record (`UserTraffic`: the newest version,
the last arrival time and a gap histogram of 40 bins and its 41-value tail, doubles) in `Traffic`, one for
both tiers of a control plane (the host tier's mtserve reads the GPU tier's); nothing grows with the number
of requests.

Speed (O(1) amortised per request, small constants): the unit-size fast path is S3-FIFO's loop (no
users, no versions). On the generic path an arrival costs one look-up of its user's record and, in user
mode, five increments in the user's and the population's histograms (each gap is spread when it is added;
a histogram's cumulative tail is rebuilt on its first read after an arrival, 40 additions). An eviction in user
mode scans at most `window` candidates at main's LRU end; a candidate's value is computed when it first
becomes a candidate and reused until the entry is used again, its idle time has grown by
`VALUE_REFRESH` (100%) or the version clock moves, so about two values are computed per eviction
instead of 16. Reusing values this way moves a few hits either way against recomputing them at every
eviction (synth-small: within 15 GPU hits of 50,000 at every capacity measured).

Gap histograms: half-octave bins of log2(1 + gap seconds), each gap spread over its bin and two on
either side; P(gap in (a, a+h] | gap > a) is read from the bin counts with linear interpolation
inside a bin. Keys are `(user_id, static_version)` tuples; any other key is its own user at version 0.
"""

from __future__ import annotations

import math
from math import nan
from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence

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
VALUE_REFRESH = 1.0
"""A candidate's value is reused until its idle time grew by this fraction (values drift slowly at the LRU end;
recomputing every candidate's value at every eviction made mtserve 10x slower than LRU for the same hits)."""

_N_BINS = 40
_BIN_EDGES = [2 ** (b / 2) - 1 for b in range(_N_BINS + 1)]
_BIN_WIDTH = [_BIN_EDGES[b + 1] - _BIN_EDGES[b] for b in range(_N_BINS)]
_SPREAD_WEIGHTS = (1.0, 2.0, 3.0, 2.0, 1.0)
"""A gap is spread over its bin and two on either side with these weights (piled up at the ends), so that a slightly
longer idle time than ever seen is not 'never'; histograms count in these units (integers: exact)."""
_SPREAD_WEIGHT = sum(_SPREAD_WEIGHTS)
_ZERO_SPREAD = array("d", bytes(8 * _N_BINS))
_ZERO_TAIL = array("d", bytes(8 * (_N_BINS + 1)))
"""A new histogram's arrays (C arrays when compiled, in the object too: a new histogram copies them with memcpy)."""


def _gap_bin(gap: float) -> int:
    if gap <= 0.0:
        return 0
    octaves = math.log2(1.0 + gap)  # compiled: libm's log2 (what math.log2 calls) on a C double, no Python call
    b = int(2 * octaves)
    return b if b < _N_BINS else _N_BINS - 1


def _split(key: Key) -> tuple[Hashable, int]:
    """(user, version) of a key: `(user_id, static_version)` tuples; any other key is its own user, version 0."""
    return key if type(key) is tuple else (key, 0)


class GapHistogram:
    """Inter-request gaps counted per half-octave bin, each spread when it is added; read through `tail()`.

    `_spread[b]`: the gaps spread into bin b, in ninths (`_SPREAD_WEIGHTS`: integers, exact in a double below
    2^53); `_tail[b]`: the spread gaps in bins >= b for b in 0..40 (`_tail[40] == 0`), the suffix sums of
    `_spread` divided by 9 (each one rounded once), valid while `_tail_valid` (an arrival invalidates it,
    `_refresh_tail` rebuilds it in place). 40 bins reach 2^20 s (12 days); longer gaps share the last bin.
    """

    __slots__ = ("_spread", "_tail", "_tail_valid")

    def __init__(self) -> None:
        self._spread = _ZERO_SPREAD[:]
        self._tail = _ZERO_TAIL[:]
        self._tail_valid = True

    def add_to_bin(self, center: int) -> None:
        """Count one gap of bin `center`: `_SPREAD_WEIGHTS` on bins center-2..center+2, clamped to the ends."""
        for offset in range(5):
            b = center + offset - 2
            self._spread[0 if b < 0 else _N_BINS - 1 if b >= _N_BINS else b] += _SPREAD_WEIGHTS[offset]
        self._tail_valid = False

    def tail(self) -> list[float]:
        """`tail[b]` = spread gaps in bins >= b, for b in 0..40 (`tail[40] == 0`), a copy."""
        self._refresh_tail()
        return list(self._tail)

    def _refresh_tail(self) -> None:
        if self._tail_valid:
            return
        above = 0.0
        for b in range(_N_BINS - 1, -1, -1):  # one explicit loop: the same sums in the same order, pure or compiled
            above += self._spread[b]
            self._tail[b] = above / _SPREAD_WEIGHT
        self._tail_valid = True

    def _longer(self, b: int, inside: float) -> float:
        """Spread gaps longer than a point in bin b with the share `inside` of its bin above it (tail refreshed)."""
        return self._tail[b + 1] + (self._tail[b] - self._tail[b + 1]) * inside


def _position(point: float) -> tuple[int, float]:
    """(bin of `point`, the share of that bin above `point`), for reading a tail at `point`."""
    b = _gap_bin(point)
    inside = (_BIN_EDGES[b + 1] - point) / _BIN_WIDTH[b]
    return b, 0.0 if inside < 0.0 else 1.0 if inside > 1.0 else inside


def _reuse_probability(user: GapHistogram | None, population: GapHistogram, age: float, horizon: float,
                       prior_weight: float) -> float:
    """P(the next gap ends within `horizon` | it already lasted `age`): the user's own gaps shrunk toward
    the population's with `prior_weight` pseudo-gaps (the population's alone without user gaps). Gaps
    longer than a point: the whole bins above its bin plus the part of its bin above it (both tails are
    read at the same two points)."""
    b, inside = _position(age)
    b_later, inside_later = _position(age + horizon)
    population._refresh_tail()
    longer = population._longer(b, inside)
    longer_later = population._longer(b_later, inside_later)
    pop_p = (longer - longer_later) / longer if longer > 0 else 0.0
    if user is None:
        return pop_p
    user._refresh_tail()
    longer = user._longer(b, inside)
    longer_later = user._longer(b_later, inside_later)
    return (longer - longer_later + prior_weight * pop_p) / (longer + prior_weight)


class UserTraffic:
    """What `Traffic` learned of one user: `newest_version` (from arrivals and hints; -1 before any), `last_seen`
    (its latest arrival in user mode; NaN before the first, so that no gap is counted then: every comparison
    with NaN is false) and `gaps` (its gap histogram, from its first gap; None before)."""

    __slots__ = ("newest_version", "last_seen", "gaps")

    def __init__(self) -> None:
        self.newest_version = -1
        self.last_seen = nan
        self.gaps: GapHistogram | None = None


class Traffic:
    """What mtserve learns from the requests (not from its tier's contents): the version clock, per-user
    gaps, the newest version of each user, the queued keys and the latest time.

    The tiers of one control plane see every request in the same order (both are accessed and hinted
    for each), so the host tier's mtserve reads the GPU tier's `Traffic` instead of learning the same
    statistics a second time (`MTServe(traffic=...)`).

    State: `user_mode` (the one-way switch); `users[user]`: one `UserTraffic` per user that arrived or was
    hinted (newest version; in user mode its last arrival and gaps: one look-up per arrival); before user
    mode, `arrived_version[user]` (its last arrival's version, to count version changes); `population`
    (everyone's gaps, in user mode); version clock: `max_version`, `arrivals`, `clock_violations`,
    `version_changes`, the first times versions `clock_start` and `max_version` were seen; `upcoming`: keys
    of queued requests; `now`: latest time seen.
    """

    __slots__ = ("user_mode", "users", "arrived_version", "population", "max_version", "max_version_since",
                 "clock_start", "arrivals", "clock_violations", "version_changes", "upcoming", "now")

    def __init__(self) -> None:
        self.user_mode = False
        self.users: dict[Hashable, UserTraffic] = {}
        self.arrived_version: dict[Hashable, int] = {}
        self.population = GapHistogram()
        self.max_version = -1
        self.max_version_since = 0.0
        self.clock_start: tuple[int, float] | None = None
        self.arrivals = 0
        self.clock_violations = 0
        self.version_changes = 0
        self.upcoming: set[Key] = set()
        self.now = 0.0

    def arrive(self, key: Key, now: float) -> None:
        """Learn from one request (hit or miss)."""
        user, version = key if type(key) is tuple else (key, 0)
        if now > self.now:
            self.now = now
        self.arrivals += 1
        if version < self.max_version:
            self.clock_violations += 1
        record = self._user(user)
        if self.user_mode:  # one gap more for the user and the population
            last = record.last_seen
            record.last_seen = now
            if now >= last:
                b = _gap_bin(now - last)
                gaps = record.gaps
                if gaps is None:
                    gaps = record.gaps = GapHistogram()
                gaps.add_to_bin(b)
                self.population.add_to_bin(b)
        else:
            # a hint may already have raised `newest_version` to this arrival's version, so version changes
            # are counted between arrivals only
            previous = self.arrived_version.get(user)
            self.arrived_version[user] = version
            if previous is not None and version != previous:
                self.version_changes += 1
                if self.version_changes >= USER_MODE_AFTER:
                    self.user_mode = True
                    self.arrived_version.clear()
        if version > record.newest_version or version > self.max_version:
            self._raise_versions(record, version, now)
        if self.upcoming:
            self.upcoming.discard(key)

    def hint(self, keys: Sequence[Key], now: float) -> None:
        """The keys of the queued requests, in arrival order."""
        upcoming = self.upcoming
        upcoming.clear()
        upcoming.update(keys)
        for key in keys:
            user, version = key if type(key) is tuple else (key, 0)
            record = self._user(user)
            if version > record.newest_version or version > self.max_version:
                self._raise_versions(record, version, now)

    def _user(self, user: Hashable) -> UserTraffic:
        """The user's record, made on first sight."""
        record = self.users.get(user)
        if record is None:
            record = self.users[user] = UserTraffic()
        return record

    def _raise_versions(self, record: UserTraffic, version: int, now: float) -> None:
        if version > record.newest_version:
            record.newest_version = version
        if version > self.max_version:
            self.max_version, self.max_version_since = version, now
            if self.clock_start is None:
                self.clock_start = (version, now)

    def newest_version(self, user: Hashable) -> int:
        """The newest version of `user` seen (arrivals and hints), -1 if none."""
        record = self.users.get(user)
        return -1 if record is None else record.newest_version

    def gaps(self, user: Hashable) -> GapHistogram | None:
        """The gap histogram of `user`, None before its first gap (in user mode)."""
        record = self.users.get(user)
        return None if record is None else record.gaps

    def versions_are_a_clock(self) -> bool:
        """Whether arriving versions behave as one global clock (then older versions are dead)."""
        return self.clock_violations <= CLOCK_TOLERANCE * self.arrivals


class ResidentEntry:
    """What mtserve keeps per resident key, so that an eviction scan reads fields instead of looking keys up:
    the `key`, its `user`, `version` and `size`; `record`, the user's `UserTraffic` (None until the user is
    known: `MTServe._record`); in user mode `in_main` and, in main, `older` and `newer`, its neighbours in
    main's LRU order (None at either end); `held_scan`, the number of the latest eviction scan that found
    the key pinned or queued (such a key is no candidate); `last_use`, the time of its latest access (or
    its insertion); and its value as a candidate, cached (0 once a scan found the entry dead): `value`
    holds while `value_generation` is the policy's `_value_generation` (moved on when the version clock
    moves), `now <= value_until` and `value_for_use == last_use` (the entry was not used since). A new entry
    has no value (`value_generation` -1; generations start at 0)."""

    __slots__ = ("key", "user", "version", "size", "record", "in_main", "older", "newer", "held_scan", "last_use",
                 "value", "value_until", "value_for_use", "value_generation")

    def __init__(self, key: Key, size: int, last_use: float) -> None:
        self.key = key
        self.user, self.version = _split(key)
        self.size = size
        self.record: UserTraffic | None = None
        self.in_main = False
        self.older: ResidentEntry | None = None
        self.newer: ResidentEntry | None = None
        self.held_scan = -1
        self.last_use = last_use
        self.value = 0.0
        self.value_until = 0.0
        self.value_for_use = 0.0
        self.value_generation = -1


class MTServe(S3FIFO):
    """S3-FIFO queues (see s3fifo.py) plus user mode: main in LRU order, dead-first, value-gated victims.

    Added state: `traffic` (`Traffic`: what the requests taught; its own, or the GPU tier's when this is
    the host tier's policy, then `_learns` is False); `_user_mode` (this tier's queues follow
    `traffic.user_mode` from its next access); `_entries[key]`: a `ResidentEntry` per resident key (user,
    version, size, last use, cached value: one look-up per candidate); `_scan`: eviction scans so far (an
    entry's `held_scan` names the scan that found it held); in user mode
    `_by_version[v]` (resident keys of version v, in insertion order; built from `_sizes`, which has the
    same order, at the switch) and main's LRU order as a list linked through the entries, from `_oldest` to
    `_newest` (a hit relinks its entry without a key look-up; S3-FIFO's `_main` and `_count` are emptied at
    the switch and stay empty); `_reload_per_byte[size]`: the reload cost per byte of an entry size (one
    per distinct size); `_value_generation`: moves on when the version clock (`_values_max_version`, the
    newest version, and `_values_clock`, whether versions are a clock, at the latest scan) moves, which
    drops every cached value. In user mode every admitted key enters main at its newest end, a hit in main
    moves it there and `_small` only drains (oldest first).
    """

    name = "mtserve"

    def __init__(
        self,
        capacity: int,
        reload_ms: Callable[[int], float] | None = None,
        session_gap: float = DEFAULT_HORIZON_S,
        window: int = DEFAULT_WINDOW,
        prior_weight: float = DEFAULT_PRIOR_WEIGHT,
        traffic: Traffic | None = None,
    ) -> None:
        """`session_gap`: the reuse horizon (seconds) while the version period is not yet known; `traffic`: the
        statistics of another tier's mtserve that is accessed and hinted first for every request (this one
        then only reads them); None: its own."""
        super().__init__(capacity)
        self._reload_ms = reload_ms
        self._default_horizon = float(session_gap)
        self._window = max(1, int(window))
        self._prior_weight = float(prior_weight)
        self._learns = traffic is None
        self.traffic = Traffic() if traffic is None else traffic
        self._user_mode = False
        self._entries: dict[Key, ResidentEntry] = {}
        self._by_version: dict[int, dict[Key, None]] = {}
        self._reload_per_byte: dict[int, float] = {}
        self._values_max_version = -2  # below any version: no value computed yet
        self._values_clock = False
        self._value_generation = 0
        self._scan = 0
        self._oldest: ResidentEntry | None = None
        self._newest: ResidentEntry | None = None

    # ------------------------------------------------------------ learning from arrivals
    def access(self, key: Key, now: float) -> bool:
        """Learn from every request (hit or miss; called once per request on each tier), then look up."""
        traffic = self.traffic
        if self._learns:
            traffic.arrive(key, now)
        if traffic.user_mode and not self._user_mode:
            self._enter_user_mode()
        entry = self._entries.get(key)
        if entry is None:
            return False
        entry.last_use = now
        if not self._user_mode:
            self._count[key] += 1
        elif entry.in_main and entry is not self._newest:
            self._unlink(entry)
            self._append_newest(entry)
        return True

    def _enter_user_mode(self) -> None:
        """The one-way switch: index the resident keys by version (in `_sizes`' order, their insertion order) and
        link main's entries in main's order; S3-FIFO's counters are dropped."""
        self._user_mode = True
        entries = self._entries
        for key in self._sizes:
            self._by_version.setdefault(entries[key].version, {})[key] = None
        for key in self._main:
            self._append_newest(entries[key])
        self._main.clear()
        self._count.clear()

    def _append_newest(self, entry: ResidentEntry) -> None:
        """Link `entry` (not in main) at main's most recently used end."""
        newest = self._newest
        entry.in_main = True
        entry.older = newest
        if newest is None:
            self._oldest = entry
        else:
            newest.newer = entry
        self._newest = entry

    def _unlink(self, entry: ResidentEntry) -> None:
        """Take `entry` out of main's LRU list."""
        older, newer = entry.older, entry.newer
        if older is None:
            self._oldest = newer
        else:
            older.newer = newer
        if newer is None:
            self._newest = older
        else:
            newer.older = older
        entry.older = entry.newer = None
        entry.in_main = False

    def _main_in_lru_order(self) -> Iterator[Key]:
        """Main's keys in user mode, least recently used first."""
        entry = self._oldest
        while entry is not None:
            yield entry.key
            entry = entry.newer

    def hint_upcoming(self, keys: Sequence[Key], now: float) -> None:
        if self._learns:
            self.traffic.hint(keys, now)

    @property
    def user_mode(self) -> bool:
        """Whether users change versions in this traffic (then LRU + dead-first + value), else S3-FIFO."""
        return self._user_mode

    @property
    def versions_are_a_clock(self) -> bool:
        """Whether arriving versions behave as one global clock (then older versions are dead)."""
        return self.traffic.versions_are_a_clock()

    def stale_horizon(self) -> float:
        """Seconds until the next version is expected (the default horizon until a period is known)."""
        traffic = self.traffic
        start = traffic.clock_start
        if not traffic.versions_are_a_clock() or start is None or traffic.max_version == start[0]:
            return self._default_horizon
        period = (traffic.max_version_since - start[1]) / (traffic.max_version - start[0])
        return max(traffic.max_version_since + period - traffic.now, 0.05 * period)

    # ------------------------------------------------------------ S3-FIFO hooks
    # (S3FIFO.hook(self, ...) rather than super().hook(...): compiled (mtserve.pxd), a C method has no
    # zero-argument super())
    def _refuses(self, size: int, was_ghost: bool) -> bool:
        return False

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        entry = self._entries[key] = ResidentEntry(key, size, now)
        if not self._user_mode:
            S3FIFO._on_insert(self, key, size, now)
            return
        self._main_bytes += size
        self._append_newest(entry)
        self._by_version.setdefault(entry.version, {})[key] = None

    def _on_remove(self, key: Key) -> None:
        if not self._user_mode:
            S3FIFO._on_remove(self, key)
            del self._entries[key]
            return
        entry = self._entries.pop(key)
        if entry.in_main:
            self._unlink(entry)
            self._main_bytes -= entry.size
        else:
            del self._small[key]
            self._small_bytes -= entry.size
        bucket = self._by_version[entry.version]
        del bucket[key]
        if not bucket:
            del self._by_version[entry.version]

    def _pop_victim(self, incoming: Key | None) -> Key:
        if not self._user_mode:
            victim = S3FIFO._pop_victim(self, incoming)
            del self._entries[victim]
            return victim
        self._has_evicted = True
        victim = self._dead_victim() if self.traffic.versions_are_a_clock() else None
        if victim is None:
            victim = self._live_victim()
        self._on_remove(victim)
        return victim

    # ------------------------------------------------------------ user mode
    def _dead_victim(self) -> Key | None:
        """An evictable entry of the oldest version older than the newest (clock mode)."""
        by_version, newest = self._by_version, self.traffic.max_version
        if len(by_version) == 1 and newest in by_version:
            return None
        pins, upcoming = self._pins, self.traffic.upcoming
        for version in sorted([v for v in by_version if v < newest]):
            for key in by_version[version]:
                if key not in pins and key not in upcoming:
                    return key
        return None

    def _live_victim(self) -> Key:
        """Small's leftovers first (oldest first), then the value-gated choice among main's LRU end: the least
        recently used of the `window` least recently used evictable entries within `TIE_FACTOR` of the
        lowest value among them. A value is reused (`ResidentEntry.value`) until the entry is used again, its idle time
        grew by `VALUE_REFRESH`, or the version clock moves."""
        traffic, entries = self.traffic, self._entries
        scan = self._scan = self._scan + 1
        for held_keys in (traffic.upcoming, self._pins):  # pinned or queued: not a candidate
            for key in held_keys:
                entry = entries.get(key)
                if entry is not None:
                    entry.held_scan = scan
        for key in self._small:
            entry = entries[key]
            if entry.held_scan != scan:
                return key
        now, clock = traffic.now, traffic.versions_are_a_clock()
        if traffic.max_version != self._values_max_version or clock != self._values_clock:
            self._value_generation += 1
            self._values_max_version, self._values_clock = traffic.max_version, clock
        generation = self._value_generation
        # with a version clock every evictable entry older than the newest version is gone already (dead
        # first), so no candidate is dead; without one, a cached value may predate its user's newer version
        check_newest = not clock
        left, horizon = self._window, -1.0  # horizon: read with the first value (-1: not yet)
        candidates: list[ResidentEntry] = []
        lowest = 0.0
        newer = self._oldest
        while newer is not None:
            entry, newer = newer, newer.newer
            if entry.held_scan == scan:
                continue
            used = entry.last_use
            if entry.value_generation != generation or now > entry.value_until or entry.value_for_use != used:
                if horizon < 0.0:
                    horizon = self.stale_horizon()
                entry.value = self._value(entry, now, horizon)
                entry.value_until = now + VALUE_REFRESH * (now - used)
                entry.value_for_use = used
                entry.value_generation = generation
            if check_newest and entry.value > 0.0:
                record = self._record(entry)
                if entry.version < (-1 if record is None else record.newest_version):
                    entry.value = 0.0  # dead for good (a user's newest version never goes back)
            if not candidates or entry.value < lowest:  # min()'s rule
                lowest = entry.value
            candidates.append(entry)
            left -= 1
            if not left:
                break
        if not candidates:  # only queued keys are unpinned: the least recent of them goes
            for queue in (self._small, self._main_in_lru_order()):
                for key in self._unpinned(queue):
                    return key
        floor = lowest * TIE_FACTOR
        for entry in candidates:  # least recently used first; the lowest is within the floor
            if entry.value <= floor:
                break
        return entry.key

    def value_density(self, key: Key, now: float) -> float:
        """Value of keeping resident `key` at time `now` (0 for a dead entry; see module doc)."""
        return self._value(self._entries[key], now, self.stale_horizon())

    def _value(self, entry: ResidentEntry, now: float, horizon: float) -> float:
        record = self._record(entry)
        if record is not None and entry.version < record.newest_version:
            return 0.0
        size = max(entry.size, 1)
        if size not in self._reload_per_byte:
            self._reload_per_byte[size] = 1.0 if self._reload_ms is None else self._reload_ms(size) / size
        reload_per_byte = self._reload_per_byte[size]
        probability = _reuse_probability(None if record is None else record.gaps, self.traffic.population,
                                         now - entry.last_use, horizon, self._prior_weight)
        return probability * reload_per_byte / size

    def _record(self, entry: ResidentEntry) -> UserTraffic | None:
        """The entry's user's record in `traffic`, None while the user is unknown (records are never dropped,
        so the first one found is kept)."""
        record = entry.record
        if record is None:
            record = entry.record = self.traffic.users.get(entry.user)
        return record

    def reuse_probability(self, user: Hashable, age: float, horizon: float) -> float:
        """P(the user's next gap ends within `horizon` | it already lasted `age`), user shrunk to population."""
        traffic = self.traffic
        return _reuse_probability(traffic.gaps(user), traffic.population, age, horizon, self._prior_weight)

    # ------------------------------------------------------------ fast path
    @classmethod
    def unit_hit_mask(cls, keys: Sequence[int], capacity: int) -> np.ndarray:
        """Unit sizes, no pins, plain keys (every key its own user, one version): S3-FIFO admitting every key."""
        return unit_hits(keys, capacity)
