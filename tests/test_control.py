"""The control plane: the real tiers (CacheManager on CPU tensors) and the simulator decide identically.

Random traces (users, versions, variable and growing n_static, ts), random capacities, every policy,
one and two tiers, write-through / write-back, inclusive / exclusive, pipelined or not, append on and
off, batch sizes and load budgets: every request's outcome and reused (cached) token count, and the
keys of each tier with their token counts after every batch, must be EQUAL between `CacheManager`
(pool pages, host extents, transfers on the CPU) and the simulator's control plane (no data plane).
No tolerance.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mtbench.cache.control import ControlPlane, Outcome, TierSettings, run_batches
from mtbench.cache.manager import CacheConfig, CacheManager
from mtbench.cache.policies import POLICY_NAMES
from mtbench.cache.pool import KVShape
from mtbench.model import get_config
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import Workload, control_config, request_batches, simulate

CFG = get_config("tiny")
SHAPE = KVShape(CFG.n_layers, CFG.n_heads, CFG.head_dim, torch.float32, 8)
COST = CostModel.default(CFG, "fp32")


def _trace(rng: np.random.Generator, append: bool) -> dict[str, np.ndarray]:
    n = int(rng.integers(15, 60))
    users = int(rng.integers(2, 10))
    user = rng.integers(0, users, n) * 3 + 100  # sparse raw ids
    bump = rng.random(n) < rng.choice([0.0, 0.05, 0.2])
    version = np.zeros(n, dtype=np.int64)
    for u in np.unique(user):
        rows = np.flatnonzero(user == u)
        version[rows] = np.cumsum(bump[rows])
    base = rng.integers(1, 40, size=(user.max() + 1, int(version.max()) + 1))
    n_static = base[user, version]
    if append:  # histories of one version grow (or repeat, or come back shorter) from request to request
        step = rng.integers(0, 2, n) * rng.integers(0, 12, n)
        if rng.random() < 0.5:  # or only grow, as a causal history does
            for key in set(zip(user.tolist(), version.tolist())):
                rows = np.flatnonzero((user == key[0]) & (version == key[1]))
                step[rows] = np.cumsum(step[rows])
        n_static = n_static + step
    ts = np.sort(rng.random(n) * 100.0)
    if rng.random() < 0.3:
        ts = np.round(ts / 10.0) * 10.0  # ties in time
    return {"ts": ts, "user_id": user.astype(np.int64), "static_version": version, "n_static": n_static.astype(np.int64),
            "n_rt": np.ones(n, dtype=np.int64), "n_cand": np.ones(n, dtype=np.int64)}


def _case(seed: int):
    rng = np.random.default_rng(seed)
    append = bool(rng.random() < 0.3)
    columns = _trace(rng, append)
    largest = SHAPE.pages_for(int(columns["n_static"].max()))
    gpu_pages = int(rng.integers(largest, 4 * largest + 3))
    host_pages = int(rng.integers(largest, 10 * largest + 3)) if rng.random() < 0.75 else 0
    policy = POLICY_NAMES[seed % len(POLICY_NAMES)]
    config = CacheConfig(mode="tiered" if host_pages else "gpu", policy=policy, gpu_capacity=gpu_pages * SHAPE.page_bytes,
                         host_capacity=host_pages * SHAPE.page_bytes, layout=str(rng.choice(["hybrid", "paged", "user"])),
                         host_fit=str(rng.choice(["first", "best"])), write_back=bool(rng.random() < 0.5),
                         inclusive=bool(rng.random() < 0.6), append=append)
    budget = None if rng.random() < 0.6 else int(rng.integers(0, 3 * largest)) * SHAPE.page_tokens * SHAPE.bytes_per_token
    settings = TierSettings(write_back=config.write_back, inclusive=config.inclusive, append=append,
                            lookahead=int(rng.integers(0, 2)), batch_size=int(rng.integers(1, 6)), load_budget=budget)
    return columns, config, settings


def _replay_like(manager: CacheManager, batches, lookahead: int, budget: int | None, after_release) -> None:
    """The replay engine's call order: plan the next batch (pipelined), then refresh / pool inputs /
    release the current one."""
    batches = iter(batches)
    current = next(batches, None)
    plan = manager.plan(current, budget) if current is not None else None
    while current is not None:
        upcoming = next(batches, None)
        next_plan = manager.plan(upcoming, budget) if lookahead and upcoming is not None else None
        manager.refresh(plan)
        rows = np.concatenate([[0], np.cumsum([r.n_static - c + 2 for r, c in zip(plan.requests, plan.cached)])])
        reads = manager.pool_inputs(plan, rows)
        assert reads.lengths.tolist() == plan.cached
        manager.release(plan)
        manager.check_invariants()
        after_release(plan)
        if upcoming is not None and next_plan is None:
            next_plan = manager.plan(upcoming, budget)
        current, plan = upcoming, next_plan


@pytest.mark.parametrize("seed", range(90))
def test_manager_and_simulator_decide_identically(seed: int) -> None:
    _check_identical(*_case(seed))


@pytest.mark.parametrize("seed", range(24))
def test_manager_and_simulator_decide_identically_with_an_fp8_host_tier(seed: int) -> None:
    """fp8 host tier: host entries (capacity, extents in fp8 rows) and PCIe bytes in fp8, GPU entries in
    the pool dtype; the real tiers (Fp8RowArena, quantising copies on the CPU) and the simulator agree."""
    columns, config, settings = _case(1000 + seed)
    rng = np.random.default_rng(seed)
    config = replace(config, host_kv="fp8", layout=str(rng.choice(["hybrid", "zerocopy"])))
    _check_identical(columns, config, settings)


def _check_identical(columns: dict[str, np.ndarray], config: CacheConfig, settings: TierSettings) -> None:
    workload = Workload.from_columns(columns, SHAPE.sizer_for(config.host_kv))
    host = config.host_capacity if config.mode == "tiered" else 0
    control = config.control(SHAPE, COST)
    sim_config = control_config(workload, config.policy, config.gpu_capacity, host, settings, COST, control.host_geometry)
    assert sim_config.host_geometry == control.host_geometry and sim_config.sizer == control.sizer

    sim = ControlPlane(sim_config)
    sim_trail: list[tuple] = []
    run_batches(sim, request_batches(workload, settings.batch_size),
                lambda plan: sim_trail.append((plan.labels, list(plan.cached), dict(sim.gpu_tokens),
                                               dict(sim.host_tokens))))

    manager = CacheManager(config, SHAPE, "cpu", int(columns["n_static"].max()), scratch_entries=settings.batch_size,
                           costs=COST)
    real_trail: list[tuple] = []
    _replay_like(manager, request_batches(workload, settings.batch_size), settings.lookahead, settings.load_budget,
                 lambda plan: real_trail.append((plan.outcomes, list(plan.cached),
                                                 {key: entry.n_tokens for key, entry in manager.gpu.items()},
                                                 {key: entry.placement.n_tokens for key, entry in manager.host.items()})))
    assert len(real_trail) == len(sim_trail)
    for batch, (real, simulated) in enumerate(zip(real_trail, sim_trail)):
        assert real == simulated, f"batch {batch}: {config} {settings}"
    assert manager.stats == sim.stats

    result, recomputed = simulate(workload, config.policy, config.gpu_capacity, host, settings, COST, keep_outcomes=True,
                                  host_geometry=control.host_geometry)
    labels = [Outcome(o).label for o in result.outcomes]
    assert labels == [label for outcomes, *_ in sim_trail for label in outcomes]
    reused = [tokens for _, cached, *_ in real_trail for tokens in cached]
    assert recomputed.tolist() == (workload.n_static - np.array(reused, dtype=np.int64)).tolist()
    if settings.append:
        assert manager.stats.hit_tokens == sum(reused)
    assert result.requests == workload.n_requests == sum(
        getattr(result, name) for name in ("gpu_hits", "host_hits", "partial_hits", "host_recomputes", "misses", "stale"))
    assert int(recomputed.sum()) == result.static_tokens - result.hit_tokens


def test_a_host_tier_with_room_never_loses_an_entry() -> None:
    """S3-FIFO refuses entries at least as large as its small queue; with a host tier that never fills,
    every request after a key's first must still hit (the cold-miss limit), whatever the GPU refuses."""
    rng = np.random.default_rng(5)
    n = 400
    user = rng.integers(0, 40, n)
    columns = {"ts": np.arange(n, dtype=float), "user_id": user, "static_version": np.zeros(n, dtype=np.int64),
               "n_static": 20 + user % 7 * 30, "n_rt": np.ones(n, dtype=np.int64), "n_cand": np.ones(n, dtype=np.int64)}
    workload = Workload.from_columns(columns, SHAPE.sizer)
    gpu = 6 * SHAPE.entry_bytes(200)  # small queue < most entries: S3-FIFO refuses them at the GPU
    host = int(workload.size.sum())
    for write_back in (True, False):
        for policy in ("s3fifo", "lru", "opt"):
            result, _ = simulate(workload, policy, gpu, host, TierSettings(write_back=write_back), COST)
            row = result.row(COST, workload, np.zeros(n, dtype=np.int64))
            assert result.misses_capacity == 0 and result.host_evictions == 0, policy
            assert row["hit_ratio"] == pytest.approx(row["cold_miss_limit"]), (policy, write_back)
    assert simulate(workload, "s3fifo", gpu, host, TierSettings(), COST)[0].gpu_admission_failures > 0


@pytest.mark.parametrize("seed", range(40))
def test_serve_is_plan_then_release_of_one_request(seed: int) -> None:
    """`serve` (one request, its pins deferred to its first admission, no batch built) decides exactly as
    `plan([request])` + `release`: same outcome and cached tokens, same tier contents, host extents,
    pins and counters after every request (random traces, every policy, both tiers, append, budgets)."""
    columns, config, settings = _case(2000 + seed)
    settings = replace(settings, batch_size=1, lookahead=0)
    workload = Workload.from_columns(columns, SHAPE.sizer)
    host = config.host_capacity if config.mode == "tiered" else 0
    geometry = config.control(SHAPE, COST).host_geometry
    served = ControlPlane(control_config(workload, config.policy, config.gpu_capacity, host, settings, COST, geometry))
    planned = ControlPlane(control_config(workload, config.policy, config.gpu_capacity, host, settings, COST, geometry))
    for (request,) in request_batches(workload, 1):
        plan = planned.plan([request])
        planned.release(plan)
        assert served.serve(request) == (plan.outcomes[0], plan.cached[0])
        for plane in (served, planned):
            plane.check_invariants()
        assert served.gpu_tokens == planned.gpu_tokens and served.host_tokens == planned.host_tokens
        assert served.host_offsets == planned.host_offsets and served.stats == planned.stats
        for a, b in zip(served._tiers, planned._tiers):
            assert list(a) == list(b) and a.used == b.used and a.pinned_bytes == b.pinned_bytes == 0
    with pytest.raises(RuntimeError):  # serve needs every batch released
        served.plan([request]) and served.serve(request)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_unit_fast_paths_equal_the_control_plane(policy: str) -> None:
    """One tier, unit sizes, per request: the policies' `unit_hit_mask` fast paths (libCacheSim speed)
    decide exactly as the control plane does."""
    rng = np.random.default_rng(len(policy))
    workload = Workload.from_keys(rng.zipf(1.2, size=3000) % 300)
    hits = 0
    for capacity in (10, 40, 150):
        fast, _ = simulate(workload, policy, capacity, keep_outcomes=True)
        plane = ControlPlane(control_config(workload, policy, capacity))
        outcomes: list[int] = []
        run_batches(plane, request_batches(workload, 1), lambda plan: outcomes.extend(plan.outcomes))
        assert outcomes == fast.outcomes.tolist() and plane.stats.gpu_hits == fast.gpu_hits, capacity
        hits += fast.gpu_hits
    assert hits > 0
