"""Fleet scale: routers, the replica adapter, the queueing estimate, the fleet simulation and `mtbench fleet`."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtbench.cli import main
from mtbench.fleet.backend import LocalBackend
from mtbench.fleet.queueing import FifoClock, fifo_latency
from mtbench.fleet.replica import ReplicaSpec, SimReplica, simulate_subtrace
from mtbench.fleet.routers import (
    ROUTER_NAMES, ConsistentHashRouter, ResidencyRouter, make_router, splitmix64,
)
from mtbench.fleet.simulate import FleetSettings, FleetTrace, plan_tasks, run_task, summary_row
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload, simulate
from mtbench.sim.sizes import EntrySizer
from mtbench.trace.writer import write_trace

SIZER = EntrySizer(bytes_per_token=4, page_tokens=8)
COST = CostModel(static_token_ms=0.001, new_token_ms=0.002)


def random_columns(rng: np.random.Generator, n: int, users: int) -> dict[str, np.ndarray]:
    """A trace with skewed users, version bumps (stale entries) and a fixed prefix per (user, version)."""
    user_id = (rng.zipf(1.3, n) % users) * 7 + 3
    version = np.zeros(n, dtype=np.int64)
    bumps = rng.random(n) < 0.03
    seen: dict[int, int] = {}
    for i, (u, bump) in enumerate(zip(user_id.tolist(), bumps.tolist())):
        seen[u] = seen.get(u, 0) + int(bump)
        version[i] = seen[u]
    n_static = 1 + (user_id * 31 + version * 17) % 90
    return {"ts": np.sort(rng.random(n)) * 100.0, "user_id": user_id.astype(np.int64), "static_version": version,
            "n_static": n_static.astype(np.int64), "n_rt": rng.integers(0, 5, n), "n_cand": rng.integers(1, 9, n)}


def splitmix64_reference(x: int) -> int:
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


# ------------------------------------------------------------------------------------------- routers
def test_stateless_routers_assign_deterministically_on_a_known_trace() -> None:
    users = np.array([5, 9, 5, 2, 9, 5, 7, 2, 2, 11], dtype=np.int64)
    assert make_router("round-robin", 3).assign(users).tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    expected = [splitmix64_reference(u) % 4 for u in users.tolist()]
    assert make_router("user-hash", 4).assign(users).tolist() == expected
    assert splitmix64(users).tolist() == [splitmix64_reference(u) for u in users.tolist()]
    first, again = make_router("random", 4, seed=3).assign(users), make_router("random", 4, seed=3).assign(users)
    assert first.tolist() == again.tolist() and first.tolist() == np.random.default_rng(3).integers(0, 4, 10).tolist()
    assert make_router("random", 4, seed=4).assign(np.zeros(200, np.int64)).tolist() != \
        make_router("random", 4, seed=3).assign(np.zeros(200, np.int64)).tolist()
    for name in ("user-hash", "consistent-hash"):
        assigned = make_router(name, 4).assign(users)
        for user in np.unique(users):
            assert len(set(assigned[users == user].tolist())) == 1, (name, user)


@pytest.mark.parametrize("seed", range(4))
def test_consistent_hash_respects_the_load_bound_and_moves_few_users(seed: int) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 5000, 20000) * 13
    n_users = len(np.unique(users))
    for n, balance in ((3, 1.0), (8, 1.1), (16, 1.25)):
        router = ConsistentHashRouter(n, seed, balance=balance)
        assigned = router.assign(users)
        per_replica = np.bincount(np.unique(np.stack([users, assigned], 1), axis=0)[:, 1], minlength=n)
        assert per_replica.max() <= router.bound(n_users) == int(np.ceil(balance * n_users / n))
        assert (assigned >= 0).all() and (assigned < n).all()
    # without a binding bound, adding a replica moves about 1/(n+1) of the users (consistency)
    before = ConsistentHashRouter(8, seed, balance=100.0).assign(users)
    after = ConsistentHashRouter(9, seed, balance=100.0).assign(users)
    _, first = np.unique(users, return_index=True)
    moved = float(np.mean(before[first] != after[first]))
    assert moved < 0.25 and (after[first][before[first] != after[first]] == 8).all()


class FakeView:
    def __init__(self, holdings: set[tuple[int, int]], backlogs: list[float]) -> None:
        self.holdings, self.backlogs = holdings, backlogs

    def holds(self, replica: int, key: int) -> bool:
        return (replica, key) in self.holdings

    def backlog_ms(self, replica: int) -> float:
        return self.backlogs[replica]

    def backlogs_ms(self) -> list[float]:
        return list(self.backlogs)


def test_residency_router_picks_the_holder_unless_its_queue_is_over_the_bound() -> None:
    router = ResidencyRouter(4, queue_bound_ms=10.0)
    view = FakeView(set(), [0.0, 0.0, 0.0, 0.0])
    assert [router.route(u, u, view) for u in (1, 2, 3, 4)] == [0, 1, 2, 3]  # idle: new users spread evenly
    view = FakeView({(2, 3)}, [5.0, 1.0, 9.0, 0.5])
    assert router.route(3, 3, view) == 2                    # holder, backlog 9 <= 10
    view.backlogs[2] = 11.0
    assert router.route(3, 3, view) == 3                    # over the bound: least loaded
    view = FakeView({(3, 3)}, [5.0, 1.0, 9.0, 0.5])
    assert router.route(3, 99, view) == 3                   # a new version is not held: least loaded
    with pytest.raises(TypeError):
        router.assign(np.arange(3))


@pytest.mark.parametrize("seed", range(3))
def test_residency_router_invariant_on_random_states(seed: int) -> None:
    rng = np.random.default_rng(seed)
    router = ResidencyRouter(6, queue_bound_ms=3.0)
    for _ in range(400):
        user, backlogs = int(rng.integers(0, 30)), rng.exponential(3.0, 6).round(1).tolist()
        holdings = {(int(r), user) for r in rng.integers(0, 6, 2)}
        previous = router._last.get(user)
        chosen = router.route(user, user, FakeView(holdings, backlogs))
        if previous is not None and (previous, user) in holdings and backlogs[previous] <= 3.0:
            assert chosen == previous
        else:
            assert backlogs[chosen] == min(backlogs)


# ------------------------------------------------------------------------------------- replica adapter
def workload_of(columns: dict[str, np.ndarray]) -> Workload:
    return Workload.from_columns(columns, SIZER)


@pytest.mark.parametrize("policy", ["lru", "s3fifo", "gdsf", "mtserve", "arc"])
@pytest.mark.parametrize("write_back,inclusive", [(True, True), (False, True), (True, False)])
def test_stepped_replicas_equal_the_simulator_request_by_request(policy: str, write_back: bool, inclusive: bool) -> None:
    rng = np.random.default_rng(hash((policy, write_back, inclusive)) % 1000)
    columns = random_columns(rng, 1500, 60)
    workload = workload_of(columns)
    spec = ReplicaSpec(policy, int(workload.size.mean() * 20), int(workload.size.mean() * 40),
                       TierSettings(write_back=write_back, inclusive=inclusive), COST)
    assignment = make_router("round-robin", 3).assign(columns["user_id"])
    exercised = np.zeros(4, dtype=np.int64)
    for replica in range(3):
        indices = np.flatnonzero(assignment == replica)
        result, recomputed, sub = simulate_subtrace(workload, indices, spec)
        stepped = SimReplica(spec, workload.key_user, workload.key_version, workload.sizer)
        served = [stepped.serve(k, s, t) for k, s, t in zip(sub.key.tolist(), sub.n_static.tolist(), sub.ts.tolist())]
        assert [o for o, _ in served] == result.outcomes.tolist()
        assert [r for _, r in served] == recomputed.tolist()
        assert (stepped.bytes_h2d, stepped.bytes_d2h) == (result.bytes_h2d, result.bytes_d2h)
        exercised += np.bincount(result.outcomes, minlength=4)[:4]
    assert (exercised > 0).all(), exercised  # GPU hits, host hits, misses and stale drops all occurred


def test_fifo_latency_matches_the_one_request_clock() -> None:
    rng = np.random.default_rng(5)
    arrival = np.cumsum(rng.exponential(1.0, 3000))
    service = rng.exponential(0.9, 3000)
    clock = FifoClock()
    scalar = [clock.serve(a, s) for a, s in zip(arrival.tolist(), service.tolist())]
    np.testing.assert_allclose(fifo_latency(arrival, service), scalar, rtol=1e-9, atol=1e-9)
    assert (fifo_latency(arrival, service) >= service - 1e-12).all()
    spaced = np.arange(100) * 10.0
    np.testing.assert_allclose(fifo_latency(spaced, np.full(100, 2.0)), 2.0)  # idle server: no queueing


# ------------------------------------------------------------------------------------ fleet simulation
def fleet_trace(columns: dict[str, np.ndarray], qps: float = 2000.0) -> FleetTrace:
    workload = workload_of(columns)
    spec = ReplicaSpec("lru", int(workload.size.mean() * 5), int(workload.size.mean() * 20), TierSettings(), COST)
    return FleetTrace.prepare(workload, columns["user_id"], FleetSettings(spec, COST, qps, queue_bound_ms=1.0))


def test_fleet_of_one_replica_is_the_simulator_and_sticky_routers_keep_hits() -> None:
    columns = random_columns(np.random.default_rng(2), 3000, 120)
    trace = fleet_trace(columns)
    rows = {}
    for task in plan_tasks(list(ROUTER_NAMES), [1, 4]):
        stats = run_task(task, trace)
        rows.setdefault((task.router, task.n_replicas), []).extend(stats)
    rows = {key: summary_row(stats, trace) for key, stats in rows.items()}
    spec = trace.settings.replica
    whole, _ = simulate(trace.workload, "lru", spec.gpu_capacity, spec.host_capacity, spec.settings, COST)
    for name in ROUTER_NAMES:
        assert rows[(name, 1)]["hit_ratio"] == (whole.gpu_hits + whole.host_hits) / whole.requests
        assert rows[(name, 1)]["gpu_hit_ratio"] == whole.gpu_hits / whole.requests
        assert rows[(name, 1)]["imbalance_req"] == 1.0
    assert rows[("round-robin", 4)]["imbalance_req"] == 1.0
    # sticky routers keep every user's entry on one replica: a 4x bigger fleet cannot lose hits
    for name in ("user-hash", "consistent-hash"):
        assert rows[(name, 4)]["hit_ratio"] >= rows[(name, 1)]["hit_ratio"]
    assert rows[("round-robin", 4)]["hit_ratio"] < rows[("user-hash", 4)]["hit_ratio"]
    assert rows[("user-hash", 4)]["throughput_rps"] > rows[("user-hash", 1)]["throughput_rps"]


def test_local_backend_processes_give_the_same_rows_as_one_process() -> None:
    columns = random_columns(np.random.default_rng(4), 2000, 80)
    trace = fleet_trace(columns)
    tasks = plan_tasks(["user-hash", "residency", "random"], [2, 3], shard=2)
    serial = LocalBackend(1).map(run_task, tasks, trace)
    forked = LocalBackend(2).map(run_task, tasks, trace)
    for a, b in zip(serial, forked):
        for x, y in zip(a, b):
            assert (x.replica, x.requests, x.outcome_counts, x.busy_ms) == (y.replica, y.requests, y.outcome_counts, y.busy_ms)
            assert np.array_equal(x.latency_ms, y.latency_ms)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    columns = random_columns(np.random.default_rng(9), 2500, 100)
    columns["n_static"] = columns["n_static"] * 5
    return write_trace(columns, tmp_path_factory.mktemp("fleet") / "trace.parquet")


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["mtbench", *args])
    try:
        main()
    except SystemExit as stopped:
        return int(stopped.code or 0)
    return 0


def test_fleet_command_writes_a_report_with_both_plots(small_trace: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "fleet"
    code = run_cli(monkeypatch, "fleet", str(small_trace), "--replicas", "1,2,4", "--router", "user-hash,residency",
                   "--model", "tiny", "--gpu-cache", "2MiB", "--host-cache", "16MiB", "--target-qps", "3000",
                   "--warmup", "500", "--workers", "1", "-o", str(out))
    assert code == 0
    records = pd.read_parquet(out / "records.parquet")
    assert (records.groupby(["router", "replicas"])["requests"].sum() == 2000).all()  # 2500 minus the warm-up
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["router"], r["replicas"]) for r in summary["rows"]] == [
        (r, n) for r in ("user-hash", "residency") for n in (1, 2, 4)]
    assert set(summary["gpus_for_target"]) == {"user-hash", "residency"}
    assert summary["resources"]["peak_rss_mib"] > 0
    assert (out / "plots" / "fleet_hit_ratio.png").stat().st_size > 0
    assert (out / "plots" / "fleet_p99.png").stat().st_size > 0 or "fleet_p99" in (out / "summary.md").read_text()


def test_fleet_command_plans_a_replays_batches_and_warm_up(small_trace: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`--batch-size 4 --lookahead 1 --max-requests --warmup` (what gpu_fleet_bench.sh passes) give the rows of
    the fleet simulation run directly with those settings on the trace's first requests."""
    from mtbench.model import get_config
    from mtbench.trace import open_trace

    out = tmp_path / "fleet"
    code = run_cli(monkeypatch, "fleet", str(small_trace), "--replicas", "1,2", "--router", "user-hash,round-robin",
                   "--model", "tiny", "--gpu-cache", "2MiB", "--host-cache", "16MiB", "--batch-size", "4",
                   "--lookahead", "1", "--max-requests", "2000", "--warmup", "501", "--workers", "1", "-o", str(out))
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["config"]["batch_size"], summary["config"]["lookahead"], summary["config"]["max_requests"]) == (4, 1, 2000)
    names = ["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"]
    columns = {name: values[:2000] for name, values in open_trace(small_trace).arrays(names).items()}
    cost = CostModel.default(get_config("tiny"), "bf16")
    spec = ReplicaSpec("lru", 2 << 20, 16 << 20, TierSettings(lookahead=1, batch_size=4), cost)
    workload = Workload.from_columns(columns, EntrySizer.for_model("tiny", "bf16"))
    trace = FleetTrace.prepare(workload, columns["user_id"], FleetSettings(spec, cost, summary["config"]["offered_qps"],
                                                                         warmup=501))
    records = pd.read_parquet(out / "records.parquet")
    for row in summary["rows"]:
        stats = run_task(plan_tasks([row["router"]], [row["replicas"]])[0], trace)
        assert row == summary_row(stats, trace)
        mine = records[(records["router"] == row["router"]) & (records["replicas"] == row["replicas"])]
        assert mine["requests"].tolist() == [s.requests for s in stats]
    # one replica leaves out whole batches of 4: the warm-up ends at request 504, not 501
    assert records[records["replicas"] == 1]["requests"].tolist() == [2000 - 504] * 2


@pytest.mark.parametrize("args,message", [
    (("--replicas", "0"), "--replicas"),
    (("--replicas", "2,x"), "--replicas"),
    (("--router", "sticky"), "unknown router"),
    (("--backend", "spark"), "unknown backend"),
    (("--backend", "ray", "--ray-address", "127.0.0.1:9"), "--ray-address"),
    (("--target-qps", "0"), "--target-qps"),
    (("--warmup", "2500"), "--warmup"),
    (("--batch-size", "0"), "--batch-size"),
    (("--router", "residency", "--batch-size", "4"), "--batch-size"),
])
def test_fleet_bad_input_is_one_line_and_exit_2(small_trace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture, args: tuple, message: str) -> None:
    if "ray" in args:
        pytest.importorskip("ray")
    code = run_cli(monkeypatch, "fleet", str(small_trace), "--model", "tiny", "--gpu-cache", "2MiB",
                   "--host-cache", "16MiB", *args, "-o", str(tmp_path / "never"))
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.startswith("error:") and message in stderr and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "never").exists()


def test_fleet_ray_address_that_never_answers_is_one_line_not_a_hang(small_trace: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("ray")
    monkeypatch.setattr("mtbench.fleet.backend.RAY_CONNECT_TIMEOUT_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts the connection, never says a word
        started = time.perf_counter()
        code = run_cli(monkeypatch, "fleet", str(small_trace), "--model", "tiny", "--gpu-cache", "2MiB", "--backend", "ray",
                       "--ray-address", f"127.0.0.1:{silent.getsockname()[1]}", "-o", str(tmp_path / "never"))
        elapsed = time.perf_counter() - started
    stderr = capsys.readouterr().err
    assert code == 2 and "no Ray cluster answers" in stderr and stderr.count("\n") == 1, stderr
    assert elapsed < 5 and not (tmp_path / "never").exists()


def test_backend_ray_without_ray_says_how_to_install_it(small_trace: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where the extra is not installed
    for command in (("fleet", str(small_trace), "--model", "tiny", "--gpu-cache", "2MiB"),
                    ("compare-policies", str(small_trace), "--model", "tiny", "--gpu-cache", "2MiB")):
        code = run_cli(monkeypatch, *command, "--backend", "ray", "-o", str(tmp_path / "never"))
        stderr = capsys.readouterr().err
        assert code == 2 and "pip install -e '.[cluster]'" in stderr and stderr.count("\n") == 1, stderr


@pytest.mark.parametrize("args,message", [(("--gpus", "0"), "--gpus"), (("--router", "residency"), "residency"),
                                          (("--router", "nearest"), "unknown router")])
def test_replay_bad_fleet_options_are_one_line_and_exit_2(small_trace: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture, args: tuple,
                                                          message: str) -> None:
    code = run_cli(monkeypatch, "replay", str(small_trace), "--model", "tiny", "--device", "cpu", *args,
                   "-o", str(tmp_path / "never"))
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "never").exists()


def test_streaming_matches_the_simulator_and_its_memory_does_not_grow_with_requests(tmp_path: Path) -> None:
    import tracemalloc

    from mtbench.fleet.stream import stream_simulate
    from mtbench.trace import open_trace

    rng = np.random.default_rng(13)
    long = random_columns(rng, 24000, 150)
    long["static_version"] = np.zeros_like(long["static_version"])  # a fixed key population
    long["n_static"] = 1 + (long["user_id"] * 31) % 90
    workload = workload_of(long)
    spec = ReplicaSpec("lru", int(workload.size.mean() * 10), int(workload.size.mean() * 40), TierSettings(), COST)
    whole, _ = simulate(workload, "lru", spec.gpu_capacity, spec.host_capacity, spec.settings, COST)
    peaks = []
    for rows in (3000, 24000):
        path = write_trace({k: v[:rows] for k, v in long.items()}, tmp_path / f"t{rows}.parquet")
        trace = open_trace(path)
        tracemalloc.start()
        result = stream_simulate(trace, spec, SIZER, batch_rows=1000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert (result.gpu_hits, result.host_hits, result.misses) == (whole.gpu_hits, whole.host_hits, whole.misses)
    assert peaks[1] < 1.25 * peaks[0], peaks  # 8x the requests, the same keys: about the same memory
