"""mtserve: S3-FIFO on plain keys, user mode (LRU + dead-first + value gate) on GR traffic, pins, exact counts."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from mtbench.cache.policies import S3FIFO, MTServe
from mtbench.cache.policies.mtserve import USER_MODE_AFTER, GapHistogram, _gap_bin
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


def _request(policy: MTServe, key, t: float, size: int = 1, arrive: bool = True) -> list | None:
    """A request for `key` at t (arrive=True), or a demotion-style insert without a request (arrive=False)."""
    if arrive and policy.access(key, t):
        return []
    return policy.admit(key, size, t)


def _enter_user_mode(policy: MTServe, t: float = 0.0) -> float:
    """USER_MODE_AFTER users (ids -1, -2, ...) come back with a new version; returns the time after."""
    for version in (0, 1):
        for user in range(1, USER_MODE_AFTER + 1):
            policy.access((-user, version), t)
            t += 1.0
    assert policy.user_mode
    return t


@pytest.mark.parametrize("seed", range(8))
def test_plain_keys_are_s3fifo(seed: int) -> None:
    """Keys that are their own users, one version: the generic protocol gives S3-FIFO's (libCacheSim's) hits,
    and its unit fast path the same; below 20 entries S3-FIFO refuses everything, mtserve still admits."""
    rng = random.Random(seed)
    n_keys = rng.randint(50, 3000)
    keys = [min(int(rng.paretovariate(0.8)), n_keys) for _ in range(6000)]
    for capacity in (rng.randint(2, 19), rng.randint(20, 200), rng.randint(200, 2000)):
        policy = MTServe(capacity)
        generic = []
        for t, key in enumerate(keys):
            hit = policy.access(key, float(t))
            if not hit:
                assert policy.admit(key, 1, float(t)) is not None
            generic.append(hit)
        assert not policy.user_mode
        fast = MTServe.unit_hit_mask(keys, capacity)
        assert fast.tolist() == generic
        if capacity >= 20:
            assert fast.tolist() == S3FIFO.unit_hit_mask(keys, capacity).tolist()
        else:
            assert not S3FIFO.unit_hit_mask(keys, capacity).any() and fast.sum() > 0


@pytest.mark.parametrize("seed", range(6))
def test_gap_histogram_tail_counts_the_spread_gaps_above_each_bin(seed: int) -> None:
    """Counts per bin, spread when read: the tail equals spreading every gap over its bin and two on each
    side (1 2 3 2 1 / 9, piled up at the ends) and summing from the top."""
    rng = np.random.default_rng(seed)
    gaps = np.concatenate([rng.exponential(rng.uniform(0.5, 1e5), int(rng.integers(1, 300))), [0.0, 2e7]])
    histogram, spread = GapHistogram(), np.zeros(40)
    for gap in gaps:
        histogram.add_to_bin(_gap_bin(float(gap)))
        center = _gap_bin(float(gap))
        for offset, weight in zip(range(-2, 3), (1, 2, 3, 2, 1)):
            spread[min(max(center + offset, 0), 39)] += weight / 9
        if rng.random() < 0.1:  # a read between arrivals is dropped by the next one
            assert histogram.tail()[0] == pytest.approx(spread.sum(), rel=1e-6)
    expected = np.append(np.cumsum(spread[::-1])[::-1], 0.0)
    np.testing.assert_allclose(histogram.tail(), expected, rtol=1e-6, atol=1e-9)
    assert histogram.tail()[0] == pytest.approx(len(gaps))


def test_user_mode_starts_after_enough_version_changes() -> None:
    policy = MTServe(capacity=10)
    t = 0.0
    for user in range(USER_MODE_AFTER - 1):
        policy.access((user, 0), t)
        policy.access((user, 1), t + 1)
        t += 2
    for user in range(100):  # many users, one version each: no evidence of versions
        policy.access((1000 + user, 3), t)
    assert not policy.user_mode
    policy.access((0, 2), t + 1)
    assert policy.user_mode


@pytest.mark.parametrize("seed", range(10))
def test_user_mode_is_lru_with_dead_first_when_the_value_gate_is_off(seed: int) -> None:
    """window=1 switches the value gate off: victims are dead entries (oldest version first), then LRU order."""
    rng = np.random.default_rng(seed)
    policy = MTServe(capacity=int(rng.integers(3, 12)), window=1)
    t = _enter_user_mode(policy)
    version = 1
    recency: dict = {}
    for _ in range(400):
        t += float(rng.exponential(1.0))
        if rng.random() < 0.03:
            version += 1
        key = (int(rng.integers(0, 25)), version)
        dead = sorted((k for k in policy if k[1] < version), key=lambda k: k[1])
        live_lru = sorted((k for k in policy if k[1] == version), key=recency.__getitem__)
        evicted = _request(policy, key, t)
        recency[key] = t
        expected = (dead + live_lru)[: len(evicted or [])]
        assert [k[1] for k in (evicted or [])] == [k[1] for k in expected]  # dead ones first, oldest version first
        assert [k for k in (evicted or []) if k[1] == version] == [k for k in expected if k[1] == version]


@pytest.mark.parametrize("seed", range(10))
def test_dead_versions_go_first_oldest_first(seed: int) -> None:
    """Under a version clock every eviction takes an entry older than the newest version while one is unpinned."""
    rng = np.random.default_rng(seed)
    policy = MTServe(capacity=int(rng.integers(3, 12)))
    t = _enter_user_mode(policy)
    version, pinned = 1, set()
    for _ in range(300):
        t += float(rng.exponential(1.0))
        if rng.random() < 0.05:
            version += 1
        user = int(rng.integers(0, 30))
        old_version = int(rng.integers(1, version + 1))
        arrive = rng.random() < 0.7
        key = (user, version if arrive else old_version)  # demotions re-insert entries of any age
        if key in policy:
            continue
        if arrive:
            policy.access(key, t)
        dead_before = {k for k in policy if k[1] < version and k not in pinned}
        evicted = policy.admit(key, 1, t)
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
    t = _enter_user_mode(policy)
    _request(policy, (1, 5), t)
    for step in range(1, 40):  # users on an older version than (1, 5): versions are not a global clock
        _request(policy, (100 + step % 4, 0), t + step)
    assert not policy.versions_are_a_clock
    t += 40
    _request(policy, (2, 0), t)
    _request(policy, (3, 0), t + 1)
    assert policy.value_density((2, 0), t + 1) > 0.0  # older than the newest version seen, but not dead
    policy.hint_upcoming([(3, 1)], t + 1.5)  # user 3's queued request carries a newer version: (3, 0) is dead
    assert policy.value_density((3, 0), t + 1.5) == 0.0
    assert policy.admit((4, 0), 1, t + 2) == [(3, 0)]


def test_finished_sessions_go_before_live_ones() -> None:
    """A user whose burst ended long ago loses to one still inside a burst, though LRU would evict the latter."""
    policy = MTServe(capacity=2, session_gap=600.0)
    t = _enter_user_mode(policy)
    for user in (1, 2):  # bursts of requests 10 s apart
        for _ in range(30):
            _request(policy, (user, 1), t)
            t += 10.0
    t += 5.0
    # user 1 was last seen 300 s ago (its session is over), user 2 five seconds ago
    assert policy.value_density((1, 1), t) < policy.value_density((2, 1), t)
    assert policy.admit((3, 1), 1, t) == [(1, 1)]


def test_stale_horizon_learns_the_version_period() -> None:
    policy = MTServe(capacity=10, session_gap=50.0)
    assert policy.stale_horizon() == 50.0
    for t in np.arange(0.0, 1000.0, 10.0):
        _request(policy, (int(t) % 7, int(t // 100)), float(t))
    # versions every 100 s, the newest (9) first seen at t=900, now 990: the next one is due in about 10 s
    assert policy.versions_are_a_clock and policy.user_mode
    assert policy.stale_horizon() == pytest.approx(10.0)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("user_mode", [False, True])
def test_pinned_and_queued_keys_are_never_evicted(seed: int, user_mode: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    policy = MTServe(capacity=int(rng.integers(20, 60)))
    t0 = _enter_user_mode(policy) if user_mode else 0.0
    pinned: set = set()
    for step in range(400):
        t = t0 + step
        key = (int(rng.integers(0, 40)), step // 100 + 1)
        queued = [(int(rng.integers(0, 40)), step // 100 + 1) for _ in range(int(rng.integers(0, 4)))]
        policy.hint_upcoming(queued, t)
        unprotected_before = {k for k in policy if k not in pinned and k not in queued}
        evicted = _request(policy, key, t, size=int(rng.integers(1, 8)))
        for victim in evicted or []:
            assert victim not in pinned
            if user_mode and unprotected_before:  # user mode: queued keys go only once every other one has gone
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


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("user_mode", [False, True])
def test_evict_until_fits_frees_enough_or_changes_nothing(seed: int, user_mode: bool) -> None:
    rng = np.random.default_rng(200 + seed)
    policy = MTServe(capacity=100, reload_ms=lambda size: 0.5 * size)
    t0 = _enter_user_mode(policy) if user_mode else 0.0
    for step in range(300):
        key = (int(rng.integers(0, 50)), 1)
        _request(policy, key, t0 + step, size=int(rng.integers(1, 30)))
        if key in policy and rng.random() < 0.15:
            policy.pin(key)
        want = int(rng.integers(1, 120))
        before = {k: policy.size_of(k) for k in policy}
        evicted = policy.evict_until_fits(want)
        if evicted is None:
            assert want > policy.capacity - policy.pinned_bytes
            assert {k: policy.size_of(k) for k in policy} == before
        else:
            assert policy.free >= want
            assert set(evicted) == set(before) - set(policy)
            assert not any(policy.is_pinned(k) for k in evicted)


def test_memory_is_bounded_by_keys_not_requests() -> None:
    """Per-user and per-key state does not grow when the same keys are requested ten times longer."""
    rng = np.random.default_rng(3)
    policy = MTServe(capacity=50)
    t = _enter_user_mode(policy)
    footprints = []
    for rounds in (1, 5):
        for _ in range(rounds * 3000):
            t += 1.0
            _request(policy, (int(rng.integers(0, 300)), int(t // 500)), t)
        traffic = policy.traffic
        footprints.append((sum(user.gaps is not None for user in traffic.users.values()), len(traffic.users)))
        assert len(policy._entries) == len(policy) and len(policy._ghost) <= policy.capacity
        assert sum(len(bucket) for bucket in policy._by_version.values()) == len(policy)
    assert footprints[0] == footprints[1] == (300, 300 + USER_MODE_AFTER)


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
    ("mtserve", 2_000_000, 0): (3032, 0, 948, 20),
    ("mtserve", 5_000_000, 0): (3422, 0, 541, 37),
    ("mtserve", 2_000_000, 8_000_000): (3032, 575, 278, 115),
    ("lru", 2_000_000, 0): (2728, 0, 1257, 15),
    ("lru", 5_000_000, 0): (3344, 0, 603, 53),
    ("lru", 2_000_000, 8_000_000): (2728, 859, 303, 110),
}


# ---------------------------------------------------------------- the real traces (reports/POLICIES.md)
CLASSICS = ("lru", "fifo", "arc", "s3fifo", "sieve")
GR_SLICE = 20_000
MiB, GiB = 1 << 20, 1 << 30
MTSERVE_ON_BLOCK_TRACES = {"arc-oltp": (32354, 121464, 160280), "cloudphysics": (16540, 19867, 28183)}
MTSERVE_ON_GR_TRACES = {  # (trace, view, capacity): (gpu_hits, host_hits) over the first GR_SLICE requests
    ("movielens", "bytes", 48 * MiB): (19486, 0), ("movielens", "bytes", 256 * MiB): (19486, 0),
    ("movielens", "unit", 2): (19483, 0), ("movielens", "unit", 8): (19486, 0),
    ("synth-small", "bytes", 256 * MiB): (15417, 2777), ("synth-small", "bytes", GiB): (16944, 1250),
    ("synth-small", "unit", 20): (15771, 0), ("synth-small", "unit", 100): (17527, 0),
}


STRICTLY_BETTER = {("synth-small", "bytes", GiB)}
"""Where users, versions and sizes give mtserve's value gate something to use, it beats every classic on GPU hits."""


def _within_half_a_point_of_the_best(ours: int, classics: dict[str, int], requests: int) -> None:
    best = max(classics.values())
    assert ours >= best - 0.005 * requests, (ours, classics)


@pytest.mark.parametrize("trace", sorted(MTSERVE_ON_BLOCK_TRACES))
def test_block_traces_pinned_and_never_half_a_point_below_the_best_classic(trace: str, shared_data) -> None:
    """Plain keys: mtserve runs S3-FIFO; the classic counts are libCacheSim's (pinned in test_sim_peer)."""
    from test_sim_peer import CAPACITIES, EXPECTED, _keys

    w = Workload.from_keys(_keys(shared_data, trace))
    hits = tuple(simulate(w, "mtserve", capacity)[0].gpu_hits for capacity in CAPACITIES)
    assert hits == MTSERVE_ON_BLOCK_TRACES[trace]
    for index, ours in enumerate(hits):
        _within_half_a_point_of_the_best(ours, {p: EXPECTED[trace][p][index] for p in CLASSICS}, w.n_requests)


def _gr_cases(shared_data) -> list:
    from mtbench.sim.policy_table import movielens_columns, parquet_columns, request_cases

    movielens = movielens_columns(shared_data, GR_SLICE)
    synth = parquet_columns(Path(__file__).resolve().parents[1] / "traces" / "synth-small.parquet", GR_SLICE)
    return [*request_cases("movielens", movielens, "large", "bf16", (48 * MiB, 256 * MiB), 64 * GiB, (2, 8)),
            *request_cases("synth-small", synth, "large", "bf16", (256 * MiB, GiB), 64 * GiB, (20, 100))]


def test_gr_traces_pinned_and_never_half_a_point_below_the_best_classic(shared_data) -> None:
    """MovieLens (shared, imported) and synth-small, entry sizes with a host tier and unit size in one tier:
    mtserve's GPU hits and total hits are within 0.5 points of the best classic policy at every capacity, and
    strictly above every classic's GPU hits in `STRICTLY_BETTER`."""
    got = {}
    for case in _gr_cases(shared_data):
        view = "unit" if case.workload.unit else "bytes"
        for capacity in case.capacities:
            runs = {policy: simulate(case.workload, policy, capacity, case.host_capacity, TierSettings(),
                                     case.cost)[0] for policy in (*CLASSICS, "mtserve")}
            ours = runs.pop("mtserve")
            got[case.title.split(",")[0], view, capacity] = (ours.gpu_hits, ours.host_hits)
            n = case.workload.n_requests
            _within_half_a_point_of_the_best(ours.gpu_hits, {p: r.gpu_hits for p, r in runs.items()}, n)
            _within_half_a_point_of_the_best(ours.gpu_hits + ours.host_hits,
                                             {p: r.gpu_hits + r.host_hits for p, r in runs.items()}, n)
            if (case.title.split(",")[0], view, capacity) in STRICTLY_BETTER:
                assert ours.gpu_hits > max(r.gpu_hits for r in runs.values()), (ours, runs)
    assert got == MTSERVE_ON_GR_TRACES


@pytest.mark.parametrize("seed", range(4))
def test_host_tier_reading_the_gpu_tiers_traffic_decides_as_with_its_own(seed: int) -> None:
    """The host tier's mtserve reads the GPU tier's `Traffic` (both see every request): every outcome,
    both tiers' contents and the counters equal those of a host tier that learns its own copy, per
    request and in pipelined batches (hints), through user mode and the version clock."""
    from mtbench.cache.control import ControlPlane, policy_options, run_batches
    from mtbench.cache.policies import make_policy
    from mtbench.sim.simulator import control_config, request_batches

    rng = np.random.default_rng(seed)
    workload = Workload.from_columns(_clock_trace(seed, n=2500, n_users=int(rng.integers(30, 90)),
                                                  period=float(rng.choice([300.0, 1000.0]))), SIZER)
    entry = int(np.median(workload.size))
    gpu, host = int(rng.integers(4, 12)) * entry, int(rng.integers(12, 40)) * entry
    settings = TierSettings(batch_size=int(rng.integers(1, 4)), lookahead=int(rng.integers(0, 2)))
    config = control_config(workload, "mtserve", gpu, host, settings, COST)
    shared, own = ControlPlane(config), ControlPlane(config)
    assert shared.host.traffic is shared.gpu.traffic
    own.host = make_policy("mtserve", host, **policy_options("mtserve", "recompute", COST, SIZER, host_tier=True))
    own._tiers = (own.gpu, own.host)
    runs = []
    for plane in (shared, own):
        after: list = []
        run_batches(plane, request_batches(workload, settings.batch_size),
                    lambda plan, plane=plane, after=after: after.append(
                        (plan.outcomes[:], sorted(plane.gpu_tokens.items()), sorted(plane.host_tokens.items()))))
        runs.append((after, plane.stats))
    assert own.host.traffic is not own.gpu.traffic and own.gpu.user_mode and own.host.user_mode
    assert runs[0] == runs[1]
    assert runs[0][1].host_hits > 0 and runs[0][1].host_evictions > 0
