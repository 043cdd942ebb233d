"""Replacement policies: the interface contract (pins, evict-until-fits, removal) on random workloads,
the unit-size fast paths against the generic protocol, and the registry."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mtbench.cache.policies import NEVER, POLICY_NAMES, make_policy, parse_policy_list, policy_class
from mtbench.errors import MtbenchError
from mtbench.sim.oracle import next_use_indices


def _check_invariants(policy) -> None:
    assert policy.used == sum(policy.size_of(k) for k in policy) <= policy.capacity
    assert policy.pinned_bytes == sum(policy.size_of(k) for k in policy if policy.is_pinned(k))


def _random_ops(name: str, seed: int) -> None:
    """Random accesses, admits, pins, unpins and removals with byte sizes; invariants after each step."""
    rng = random.Random(seed)
    capacity = rng.randint(50, 400)
    policy = make_policy(name, capacity)
    n_keys = rng.randint(5, 60)
    sizes = {k: rng.randint(1, 40) for k in range(n_keys)}
    keys = [rng.randrange(n_keys) for _ in range(400)]
    next_use = next_use_indices(np.array(keys)).tolist()
    pins: dict[int, int] = {}
    for now, key in enumerate(keys):
        if policy.uses_next_use:
            policy.set_next_use(key, next_use[now])
        action = rng.random()
        if action < 0.1:
            policy.pin(key)
            pins[key] = pins.get(key, 0) + 1
        elif action < 0.2 and pins:
            victim = rng.choice(sorted(pins))
            policy.unpin(victim)
            pins[victim] -= 1
            if not pins[victim]:
                del pins[victim]
        elif action < 0.25:
            before = policy.size_of(key) if key in policy else 0
            assert policy.remove(key) == before
            assert key not in policy
        if policy.access(key, now):
            continue
        resident_before = set(policy)
        used_before = policy.used
        evicted = policy.admit(key, sizes[key], now)
        if evicted is None:
            assert set(policy) == resident_before and policy.used == used_before
            assert sizes[key] > policy.capacity - policy.pinned_bytes or name == "s3fifo"
        else:
            assert key in policy
            assert not any(k in pins for k in evicted), "a pinned key was evicted"
            assert set(evicted) <= resident_before and not (set(evicted) & set(policy))
            assert len(evicted) == len(set(evicted))
        _check_invariants(policy)


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("seed", range(12))
def test_contract_on_random_workloads(name: str, seed: int) -> None:
    _random_ops(name, seed)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_evict_until_fits_frees_enough_or_changes_nothing(name: str) -> None:
    rng = random.Random(7)
    for case in range(20):
        policy = make_policy(name, 100)
        for now, key in enumerate(rng.sample(range(1000), 30)):
            if policy.uses_next_use:
                policy.set_next_use(key, rng.randrange(1000, 5000))
            if not policy.access(key, now):
                policy.admit(key, rng.randint(1, 9), now)
        resident = list(policy)
        for key in rng.sample(resident, k=len(resident) // 2):
            policy.pin(key)
        want = rng.randint(1, 120)
        snapshot = (set(policy), policy.used)
        evicted = policy.evict_until_fits(want)
        if want > policy.capacity - policy.pinned_bytes:
            assert evicted is None and (set(policy), policy.used) == snapshot
        else:
            assert evicted is not None and policy.free >= want
            assert all(not policy.is_pinned(k) for k in evicted)
            assert set(evicted) == snapshot[0] - set(policy)


@pytest.mark.parametrize("name", ["lru", "fifo", "s3fifo"])
@pytest.mark.parametrize("seed", range(6))
def test_unit_fast_path_equals_generic_protocol(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_keys = int(rng.integers(10, 3000))
    keys = (rng.zipf(1.2, size=20_000) % n_keys).tolist()
    for capacity in (1, 5, 19, 20, 57, 400, 5000):
        generic = make_policy(name, capacity)
        expected = []
        for now, key in enumerate(keys):
            hit = generic.access(key, now)
            if not hit:
                generic.admit(key, 1, now)
            expected.append(hit)
        fast = policy_class(name).unit_hit_mask(keys, capacity)
        assert fast.tolist() == expected, (name, capacity)


def test_lru_order_and_pins_by_hand() -> None:
    policy = make_policy("lru", 3)
    for now, key in enumerate("abc"):
        assert policy.admit(key, 1, now) == []
    assert policy.access("a", 3)
    policy.pin("b")
    assert policy.admit("d", 1, 4) == ["c"]  # b is LRU but pinned, c is next
    policy.pin("a")
    policy.pin("d")
    assert policy.admit("e", 1, 5) is None  # everything pinned: nothing changes
    assert sorted(policy) == ["a", "b", "d"]
    policy.unpin("b")
    assert policy.admit("e", 1, 6) == ["b"]
    with pytest.raises(ValueError):
        policy.unpin("zzz")


def test_opt_evicts_farthest_next_use() -> None:
    policy = make_policy("opt", 2)
    for now, (key, nxt) in enumerate([("a", 10), ("b", 5)]):
        policy.set_next_use(key, nxt)
        policy.admit(key, 1, now)
    policy.set_next_use("c", NEVER)
    assert policy.admit("c", 1, 2) == ["a"]


def test_registry_and_errors() -> None:
    assert set(POLICY_NAMES) == {"lru", "fifo", "lfu", "arc", "s3fifo", "sieve", "gdsf", "mtserve", "opt"}
    assert parse_policy_list(" LRU, arc ,lru") == ["lru", "arc"]
    with pytest.raises(MtbenchError, match="unknown policy 'belady2'"):
        make_policy("belady2", 10)
    with pytest.raises(MtbenchError, match="no policy"):
        parse_policy_list(" , ")
    with pytest.raises(MtbenchError):
        make_policy("lru", -1)
