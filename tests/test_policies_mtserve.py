"""mtserve: exact hit counts on a small known trace, dead-version-first eviction, pins, evict-until-fits."""

from __future__ import annotations

import numpy as np
import pytest

from mtbench.cache.policies import MTServe
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload, simulate
from mtbench.sim.sizes import EntrySizer

SIZER = EntrySizer(bytes_per_token=1000, page_tokens=32)
COST = CostModel(static_token_ms=1e-3, new_token_ms=1e-3)


def _clock_trace(seed: int, n: int = 4000, n_users: int = 60, period: float = 1000.0) -> dict[str, np.ndarray]:
    """Bursty users (sessions of a few requests seconds apart), versions = floor(ts / period) (a global clock)."""
    rng = np.random.default_rng(seed)
    activity = rng.pareto(1.2, n_users) + 0.05
    user = rng.choice(n_users, size=n, p=activity / activity.sum())
    ts = np.cumsum(rng.exponential(2.0, size=n))
    version = np.floor(ts / period).astype(np.int64)
    history = rng.integers(1, 600, size=n_users)
    return {"ts": ts, "user_id": user, "static_version": version, "n_static": history[user] + version,
            "n_rt": rng.integers(0, 50, size=n), "n_cand": np.full(n, 16)}


def _fill(policy: MTServe, key: tuple[int, int], t: float, size: int = 1, arrive: bool = True) -> list | None:
    """A request for `key` at t (arrive=True), or a demotion-style insert without a request (arrive=False)."""
    if arrive and policy.access(key, t):
        return []
    return policy.admit(key, size, t)


def test_exact_hit_counts_on_a_known_trace() -> None:
    """Pinned outcomes (libCacheSim style) of mtserve vs LRU on a seeded bursty trace with daily-like versions."""
    w = Workload.from_columns(_clock_trace(0), SIZER)
    got = {}
    for policy in ("mtserve", "lru"):
        for gpu, host in ((2_000_000, 0), (5_000_000, 0), (2_000_000, 8_000_000)):
            result, _ = simulate(w, policy, gpu, host, TierSettings(), COST)
            got[policy, gpu, host] = (result.gpu_hits, result.host_hits, result.misses, result.stale)
    assert got == EXPECTED_HITS


EXPECTED_HITS = {  # (gpu_hits, host_hits, misses, stale); computed once by this code, kept as a regression pin
    ("mtserve", 2_000_000, 0): (3031, 0, 951, 18),
    ("mtserve", 5_000_000, 0): (3443, 0, 504, 53),
    ("mtserve", 2_000_000, 8_000_000): (3031, 576, 272, 121),
    ("lru", 2_000_000, 0): (2728, 0, 1257, 15),
    ("lru", 5_000_000, 0): (3344, 0, 603, 53),
    ("lru", 2_000_000, 8_000_000): (2728, 859, 303, 110),
}


@pytest.mark.parametrize("seed", range(20))
def test_dead_versions_go_first_oldest_first(seed: int) -> None:
    """Under a version clock every eviction takes an entry older than the newest version while one is unpinned."""
    rng = np.random.default_rng(seed)
    policy = MTServe(capacity=int(rng.integers(3, 12)))
    t, version, pinned = 0.0, 0, set()
    for _ in range(300):
        t += float(rng.exponential(1.0))
        if rng.random() < 0.05:
            version += 1
        user = int(rng.integers(0, 30))
        old_version = int(rng.integers(0, version + 1))
        arrive = rng.random() < 0.7
        key = (user, version if arrive else old_version)  # demotions re-insert entries of any age
        if key in policy:
            continue
        dead_before = {k for k in policy if k[1] < policy._max_version and k not in pinned}
        evicted = _fill(policy, key, t, arrive=arrive)
        if arrive and rng.random() < 0.1 and key in policy:
            policy.pin(key)
            pinned.add(key)
        for victim in evicted or []:
            if dead_before:
                assert victim in dead_before
                assert victim[1] == min(k[1] for k in dead_before)
                dead_before.discard(victim)
            assert victim not in pinned


def test_versions_that_are_not_a_clock_fall_back_to_per_user_staleness() -> None:
    policy = MTServe(capacity=3)
    _fill(policy, (1, 5), 0.0)
    for t in range(1, 20):  # users on an older version than (1, 5): versions are not a global clock
        _fill(policy, (100 + t % 4, 0), float(t))
    assert not policy.versions_are_a_clock
    _fill(policy, (2, 0), 20.0)
    _fill(policy, (3, 0), 21.0)
    assert policy.value_density((2, 0), 21.0) > 0.0  # older than the newest version seen, but not dead
    policy.hint_upcoming([(3, 1)], 21.5)  # user 3's queued request carries a newer version: (3, 0) is dead
    assert policy.value_density((3, 0), 21.5) == 0.0
    assert policy.admit((4, 0), 1, 22.0) == [(3, 0)]


def test_stale_horizon_learns_the_version_period() -> None:
    policy = MTServe(capacity=10, session_gap=50.0)
    assert policy.stale_horizon() == 50.0
    for t in np.arange(0.0, 1000.0, 10.0):
        _fill(policy, (int(t) % 7, int(t // 100)), float(t))
    # versions every 100 s, the newest (9) first seen at t=900, now 990: the next one is due in about 10 s
    assert policy.versions_are_a_clock
    assert policy.stale_horizon() == pytest.approx(10.0)


@pytest.mark.parametrize("seed", range(20))
def test_pinned_and_queued_keys_are_never_evicted(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    policy = MTServe(capacity=int(rng.integers(20, 60)))
    pinned: set = set()
    for step in range(400):
        t = float(step)
        key = (int(rng.integers(0, 40)), step // 100)
        queued = [(int(rng.integers(0, 40)), step // 100) for _ in range(int(rng.integers(0, 4)))]
        policy.hint_upcoming(queued, t)
        unprotected_before = {k for k in policy if k not in pinned and k not in queued}
        evicted = _fill(policy, key, t, size=int(rng.integers(1, 8)))
        for victim in evicted or []:  # queued keys go only once every other unpinned key has gone
            assert victim not in pinned
            if unprotected_before:
                assert victim in unprotected_before
                unprotected_before.discard(victim)
        if key in policy and key not in pinned and rng.random() < 0.2:
            policy.pin(key)
            pinned.add(key)
        if pinned and rng.random() < 0.1:
            released = sorted(pinned)[int(rng.integers(0, len(pinned)))]
            policy.unpin(released)
            pinned.discard(released)
        assert policy.used == sum(policy.size_of(k) for k in policy) <= policy.capacity
        assert policy.pinned_bytes == sum(policy.size_of(k) for k in pinned if k in policy)


@pytest.mark.parametrize("seed", range(20))
def test_evict_until_fits_frees_enough_or_changes_nothing(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    policy = MTServe(capacity=100, reload_ms=lambda size: 0.5 * size)
    for step in range(300):
        key = (int(rng.integers(0, 50)), 0)
        _fill(policy, key, float(step), size=int(rng.integers(1, 30)))
        if key in policy and rng.random() < 0.15:
            policy.pin(key)
        want = int(rng.integers(1, 120))
        before = dict((k, policy.size_of(k)) for k in policy)
        evicted = policy.evict_until_fits(want)
        if evicted is None:
            assert want > policy.capacity - policy.pinned_bytes
            assert dict((k, policy.size_of(k)) for k in policy) == before
        else:
            assert policy.free >= want
            assert set(evicted) == set(before) - set(policy)
            assert not any(policy.is_pinned(k) for k in evicted)
