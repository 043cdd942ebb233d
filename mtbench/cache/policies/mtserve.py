"""mtserve: the locality-driven policy, built from what generative-recommender traffic offers.

What the traffic offers, and how the policy uses it:

1. **Users come back in sessions.** A user sends a burst of requests seconds to minutes apart, then
   is gone for hours or days. The policy learns, per user, from the gaps between the user's own
   requests: gaps shorter than `session_gap` (default 30 min) are *in-session*; their mean `g_in`
   and the share `p_cont` of gaps that stay in-session (vs. end the session) are kept as running
   estimates, shrunk toward the population's estimates while a user has few gaps
   (`prior_weight` pseudo-gaps). Gaps longer than `session_gap` feed the mean `g_out` of
   cross-session gaps.
2. **Recency is evidence about the session, not a rank.** For an entry last used `a` seconds ago the
   policy computes the posterior that the user's session is still running, modelling in-session gaps
   as exponential with mean `g_in`:
   `post = p_cont e^(-a/g_in) / (p_cont e^(-a/g_in) + 1 - p_cont)` (0 once `a > session_gap`).
   The expected reuse rate is then `rate = post / g_in + (1 - post) / g_out` (per second).
   An entry whose user just finished a session therefore drops to the cross-session rate within a few
   `g_in`, long before LRU would reach it, while a slow but still-active user keeps its entry.
3. **Size and the cost of bringing an entry back.** Evicting an entry of `size` bytes costs, at its
   next use, `reload_ms(size)`: for the GPU tier a PCIe host->GPU copy when the host keeps a copy,
   or recomputing the prefix when it does not; for the host tier always the recompute (both come
   from the CostModel; the simulator passes them). The value density of keeping an entry is
   `rate * reload_ms(size) / size` (milliseconds saved per byte and second); the victim is the
   unpinned entry with the lowest density. With unit sizes and no cost model this is "expected time
   to next use, farthest first", an online estimate of what OPT does.
4. **Lookahead.** Keys of queued requests (`hint_upcoming`) are never chosen (the simulator and the
   real tiers also pin them, and promote them from host to GPU early); entries of a user whose queued
   request carries a *newer* static version are dead and go first.
5. **Stale versions** (`static_version` older than the newest seen for the user) have density 0.

Candidates: the `window` least recently used unpinned entries (default 64), so an eviction costs
O(window). Estimates are noisy, so densities within a factor `TIE_FACTOR` (2) of the lowest count as
equal and the least recently used of those goes: mtserve is LRU except that it skips entries whose
users are, by the evidence above, clearly still coming back.
Keys are `(user_id, static_version)` tuples by default; the simulator passes `user_of` /
`version_of` for its integer keys.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from mtbench.cache.policies.base import Key, ReplacementPolicy

DEFAULT_SESSION_GAP_S = 1800.0
DEFAULT_WINDOW = 64
DEFAULT_PRIOR_WEIGHT = 4.0
TIE_FACTOR = 2.0
"""Densities within this factor of the lowest count as equal; among them the least recent goes (LRU)."""


def _user_of_tuple(key: Key) -> Hashable:
    return key[0] if isinstance(key, tuple) else key


def _version_of_tuple(key: Key) -> int:
    return int(key[1]) if isinstance(key, tuple) else 0


@dataclass
class _ReturnStats:
    """Running gap statistics of one user (or of the whole population, the prior)."""

    last_seen: float | None = None
    in_session_gaps: float = 0.0
    in_session_total: float = 0.0
    session_ends: float = 0.0
    cross_total: float = 0.0

    def record_gap(self, gap: float, session_gap: float) -> None:
        if gap <= session_gap:
            self.in_session_gaps += 1
            self.in_session_total += gap
        else:
            self.session_ends += 1
            self.cross_total += gap


class MTServe(ReplacementPolicy):
    """Evict the entry with the lowest expected reload milliseconds saved per byte and second.

    `_order`: resident keys, least recently used first; `_last_use[key]`: time of its last access;
    `_users[user]`: `_ReturnStats` per user, `_population`: the pooled prior; `_newest_version[user]`;
    `_upcoming`: keys of queued requests (never chosen); `_estimate[user]`: the user's
    (g_in, p_cont, g_out), refreshed at each of the user's requests; `_now`: latest time seen.
    """

    name = "mtserve"

    def __init__(
        self,
        capacity: int,
        reload_ms: Callable[[int], float] | None = None,
        user_of: Callable[[Key], Hashable] = _user_of_tuple,
        version_of: Callable[[Key], int] = _version_of_tuple,
        session_gap: float = DEFAULT_SESSION_GAP_S,
        window: int = DEFAULT_WINDOW,
        prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    ) -> None:
        super().__init__(capacity)
        self._reload_ms = reload_ms
        self._user_of = user_of
        self._version_of = version_of
        self._session_gap = float(session_gap)
        self._window = int(window)
        self._prior_weight = float(prior_weight)
        self._order: OrderedDict[Key, None] = OrderedDict()
        self._last_use: dict[Key, float] = {}
        self._users: dict[Hashable, _ReturnStats] = {}
        self._population = _ReturnStats()
        self._newest_version: dict[Hashable, int] = {}
        self._upcoming: set[Key] = set()
        self._estimate: dict[Hashable, tuple[float, float, float]] = {}
        self._now = 0.0

    # ------------------------------------------------------------ learning from arrivals
    def access(self, key: Key, now: float) -> bool:
        self._observe_arrival(key, now)
        return super().access(key, now)

    def _observe_arrival(self, key: Key, now: float) -> None:
        """Learn from every request of a user (hit or miss); called once per request by `access`."""
        user = self._user_of(key)
        stats = self._users.get(user)
        if stats is None:
            stats = self._users[user] = _ReturnStats()
        if stats.last_seen is not None and now >= stats.last_seen:
            gap = now - stats.last_seen
            stats.record_gap(gap, self._session_gap)
            self._population.record_gap(gap, self._session_gap)
        stats.last_seen = now
        self._estimate[user] = self._estimates(stats)
        self._now = max(self._now, now)
        version = self._version_of(key)
        if version > self._newest_version.get(user, -1):
            self._newest_version[user] = version
        self._upcoming.discard(key)

    def hint_upcoming(self, keys: Sequence[Key], now: float) -> None:
        self._upcoming = set(keys)
        for key in keys:
            user, version = self._user_of(key), self._version_of(key)
            if version > self._newest_version.get(user, -1):
                self._newest_version[user] = version

    # ------------------------------------------------------------ policy hooks
    def _on_hit(self, key: Key, now: float) -> None:
        self._order.move_to_end(key)
        self._last_use[key] = now

    def _on_insert(self, key: Key, size: int, now: float) -> None:
        self._order[key] = None
        self._last_use[key] = now

    def _on_remove(self, key: Key) -> None:
        del self._order[key]
        del self._last_use[key]

    def _pop_victim(self, incoming: Key | None) -> Key:
        now, pins, upcoming, density = self._now, self._pins, self._upcoming, self.value_density
        candidates: list[tuple[Key, float]] = []
        for key in self._order:
            if key in pins or key in upcoming:
                continue
            candidates.append((key, density(key, now)))
            if len(candidates) >= self._window:
                break
        if not candidates:  # only queued keys are unpinned: fall back to the least recent of them
            victim = next(self._unpinned(self._order))
        else:
            floor = min(value for _, value in candidates) * TIE_FACTOR
            victim = next(key for key, value in candidates if value <= floor)
        self._on_remove(victim)
        return victim

    # ------------------------------------------------------------ the model
    def value_density(self, key: Key, now: float) -> float:
        """Expected reload milliseconds saved per byte and second by keeping resident `key` (see module doc)."""
        user = self._user_of(key)
        if self._version_of(key) < self._newest_version.get(user, -1):
            return 0.0
        size = self._sizes[key]
        rate = self.reuse_rate(user, now - self._last_use[key])
        reload = float(size) if self._reload_ms is None else self._reload_ms(size)
        return rate * reload / max(size, 1)

    def reuse_rate(self, user: Hashable, age: float) -> float:
        """Expected requests per second of `user`, `age` seconds after its last request."""
        estimate = self._estimate.get(user)
        g_in, p_cont, g_out = estimate if estimate is not None else self._estimates(None)
        if age > self._session_gap:
            posterior = 0.0
        else:
            still = p_cont * math.exp(-age / g_in)
            posterior = still / (still + (1.0 - p_cont))
        return posterior / g_in + (1.0 - posterior) / g_out

    def _estimates(self, stats: _ReturnStats | None) -> tuple[float, float, float]:
        """(mean in-session gap, P(next gap stays in session), mean cross-session gap), shrunk to the prior."""
        pop = self._population
        pop_in = (pop.in_session_total + self._session_gap / 4) / (pop.in_session_gaps + 1)
        pop_cont = (pop.in_session_gaps + 1) / (pop.in_session_gaps + pop.session_ends + 2)
        pop_out = (pop.cross_total + 100 * self._session_gap) / (pop.session_ends + 1)
        if stats is None:
            return pop_in, pop_cont, pop_out
        weight = self._prior_weight
        g_in = (stats.in_session_total + weight * pop_in) / (stats.in_session_gaps + weight)
        p_cont = (stats.in_session_gaps + weight * pop_cont) / (stats.in_session_gaps + stats.session_ends + weight)
        g_out = (stats.cross_total + weight * pop_out) / (stats.session_ends + weight)
        return max(g_in, 1e-3), min(max(p_cont, 1e-6), 1 - 1e-6), max(g_out, 1e-3)
