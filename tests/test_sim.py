"""The two-tier simulator, entry sizes, cost model and `mtbench compare-policies` / `bench sim`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtbench.errors import MtbenchError
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import GPU_HIT, HOST_HIT, MISS, STALE, TierSettings, Workload, simulate
from mtbench.sim.sizes import EntrySizer

REPO = Path(__file__).resolve().parents[1]
ROW_FIELDS = ("policy", "gpu_capacity", "host_capacity", "requests", "gpu_hits", "host_hits", "misses", "stale",
              "hit_ratio", "gpu_hit_ratio", "token_hit_ratio", "bytes_h2d", "bytes_d2h", "gpu_evictions",
              "host_evictions", "est_ms_per_request", "est_speedup")


def _random_trace(seed: int, n: int = 3000) -> dict[str, np.ndarray]:
    """Bursty users with occasional version bumps; n_static fixed per (user, version)."""
    rng = np.random.default_rng(seed)
    n_users = int(rng.integers(5, 80))
    user = rng.integers(0, n_users, size=n)
    bump = rng.random(n) < 0.02
    version = np.zeros(n, dtype=np.int64)
    for u in range(n_users):
        idx = np.flatnonzero(user == u)
        version[idx] = np.cumsum(bump[idx])
    base = rng.integers(1, 1000, size=(n_users, int(version.max()) + 1))
    return {"ts": np.sort(rng.random(n) * 1e5), "user_id": user, "static_version": version,
            "n_static": base[user, version], "n_rt": rng.integers(0, 100, size=n), "n_cand": rng.integers(1, 200, size=n)}


SIZER = EntrySizer(bytes_per_token=1000, page_tokens=32)
COST = CostModel(static_token_ms=1e-3, new_token_ms=1e-3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("policy", ["lru", "arc", "s3fifo", "sieve", "gdsf", "mtserve", "opt"])
def test_two_tier_accounting(seed: int, policy: str) -> None:
    columns = _random_trace(seed)
    w = Workload.from_columns(columns, SIZER)
    gpu, host = 3_000_000, 20_000_000
    for settings in (TierSettings(), TierSettings(write_back=False, inclusive=False, lookahead=4)):
        result, recomputed = simulate(w, policy, gpu, host, settings, COST, keep_outcomes=True)
        outcomes = result.outcomes
        assert result.gpu_hits + result.host_hits + result.misses + result.stale == w.n_requests
        # bytes moved host->GPU are exactly the tokens of host hits (copies move tokens, not page padding)
        assert result.bytes_h2d == int(w.n_static[outcomes == HOST_HIT].sum()) * SIZER.bytes_per_token
        assert (recomputed[outcomes == GPU_HIT] == 0).all() and (recomputed[outcomes == HOST_HIT] == 0).all()
        assert (recomputed[(outcomes == MISS) | (outcomes == STALE)] == w.n_static[(outcomes == MISS) | (outcomes == STALE)]).all()
        first_use = np.zeros(w.n_requests, dtype=bool)
        first_use[np.unique(w.key, return_index=True)[1]] = True
        assert not np.isin(outcomes[first_use], [GPU_HIT, HOST_HIT]).any()
        # a stale miss is the first request of a new version whose old entry was still cached
        assert (w.prev_key[outcomes == STALE] != w.key[outcomes == STALE]).all()
        if not settings.write_back:
            assert result.bytes_d2h >= int(w.size[(outcomes == MISS) | (outcomes == STALE)].sum()) - result.host_evictions * int(w.size.max())
        row = result.row(COST, w, recomputed)
        assert set(ROW_FIELDS) <= set(row)
        assert 0 <= row["token_hit_ratio"] <= 1 and row["est_speedup"] >= 1 - 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_unbounded_gpu_only_misses_are_first_uses(seed: int) -> None:
    w = Workload.from_columns(_random_trace(seed), SIZER)
    for policy in ("lru", "fifo", "arc", "mtserve", "opt"):
        result, _ = simulate(w, policy, int(w.size.sum()) + 1)
        assert result.misses + result.stale == np.unique(w.key).shape[0]
        assert result.gpu_evictions == 0 and result.host_hits == 0


def test_single_tier_opt_bounds_every_online_policy() -> None:
    w = Workload.from_keys(np.random.default_rng(3).zipf(1.3, size=20_000) % 2000)
    for capacity in (10, 100, 600):
        best = simulate(w, "opt", capacity)[0].gpu_hits
        for policy in ("lru", "fifo", "lfu", "arc", "s3fifo", "sieve", "gdsf", "mtserve"):
            assert simulate(w, policy, capacity)[0].gpu_hits <= best


def test_append_variant_counts_partial_hits() -> None:
    columns = {"ts": np.arange(4.0), "user_id": np.zeros(4, dtype=np.int64), "static_version": np.zeros(4, dtype=np.int64),
               "n_static": np.array([100, 100, 164, 130]), "n_rt": np.zeros(4, dtype=np.int64), "n_cand": np.ones(4, dtype=np.int64)}
    w = Workload.from_columns(columns, SIZER)
    result, recomputed = simulate(w, "lru", 10**9, settings=TierSettings(append=True))
    assert recomputed.tolist() == [100, 0, 64, 0]
    assert result.reused_tokens == 100 + 100 + 130 and result.static_tokens == 494
    with pytest.raises(MtbenchError, match="row 2: n_static 164 differs"):  # the first row that differs
        simulate(w, "lru", 10**9)


def test_entry_sizes_round_to_pages() -> None:
    sizer = EntrySizer(bytes_per_token=15 * 2 * 768 * 2, page_tokens=32)
    assert sizer.entry_bytes(np.array([1, 32, 33, 1032])).tolist() == [32 * 46080, 32 * 46080, 64 * 46080, 1056 * 46080]
    assert EntrySizer(10, 32, unit=True).entry_bytes(np.array([5, 900])).tolist() == [1, 1]
    assert EntrySizer.for_model("large", "bf16").bytes_per_token == 15 * 2 * 768 * 2
    with pytest.raises(MtbenchError):
        EntrySizer(10, 0)


def test_cost_model_roundtrip_and_bad_files(tmp_path: Path) -> None:
    from mtbench.model import get_config

    cost = CostModel.default(get_config("large"), "bf16")
    assert cost.static_token_ms > 0 and cost.h2d_GBps == 52.0
    path = cost.save(tmp_path / "cost.json")
    assert CostModel.load(path) == cost
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MtbenchError, match="not valid JSON"):
        CostModel.load(tmp_path / "bad.json")
    (tmp_path / "neg.json").write_text(json.dumps({"static_token_ms": -1, "new_token_ms": 1}))
    with pytest.raises(MtbenchError, match="static_token_ms"):
        CostModel.load(tmp_path / "neg.json")
    (tmp_path / "extra.json").write_text(json.dumps({"static_token_ms": 1, "new_token_ms": 1, "warp": 9}))
    with pytest.raises(MtbenchError, match="warp"):
        CostModel.load(tmp_path / "extra.json")
    total, exposed = CostModel(static_token_ms=1.0, new_token_ms=0.0, request_overhead_ms=0.0, h2d_GBps=1.0,
                               transfer_overlap=0.5).total_ms(np.zeros(2), np.array([1, 1]), 4e6)
    assert (total, exposed) == (2.0 + 3.0, 3.0)  # 4 ms of copies, 1 ms hidden under half of 2 ms compute


def _write_trace(path: Path, seed: int = 0) -> Path:
    from mtbench.trace.writer import write_trace

    write_trace(pd.DataFrame(_random_trace(seed, 800)), path)
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtbench", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_compare_policies_writes_report(tmp_path: Path) -> None:
    trace = _write_trace(tmp_path / "t.parquet")
    out = tmp_path / "report"
    done = _cli("compare-policies", str(trace), "--policies", "lru,mtserve,opt", "--gpu-cache", "64MiB,256MiB",
                "--host-cache", "2GiB", "--model", "small", "--workers", "2", "-o", str(out), cwd=REPO)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "compare-policies" and len(summary["rows"]) == 6
    for row in summary["rows"]:
        assert set(ROW_FIELDS) <= set(row)
    opt = {r["gpu_capacity"]: r for r in summary["rows"] if r["policy"] == "opt"}
    lru = {r["gpu_capacity"]: r for r in summary["rows"] if r["policy"] == "lru"}
    assert all(opt[c]["gpu_hits"] + opt[c]["host_hits"] >= lru[c]["gpu_hits"] - 0 for c in opt)
    assert (out / "records.parquet").is_file() and list((out / "plots").glob("*.png"))


@pytest.mark.parametrize("args, message", [
    (["--policies", "lru,belady9"], "unknown policy 'belady9'"),
    (["--gpu-cache", "4GB?"], "cannot read '4GB?'"),
    (["--gpu-cache", "1KiB"], "cannot hold one entry"),
    (["--host-cache", "1KiB"], "cannot hold one entry"),
    (["--object-size", "blocks"], "--object-size"),
    (["--model", "giant"], "unknown model preset"),
])
def test_compare_policies_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    trace = _write_trace(tmp_path / "t.parquet")
    out = tmp_path / "report"
    done = _cli("compare-policies", str(trace), "--gpu-cache", "64MiB", "--model", "small", *args, "-o", str(out), cwd=REPO)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name("report.partial").exists()


def test_compare_policies_unit_mode_single_tier(tmp_path: Path) -> None:
    trace = _write_trace(tmp_path / "t.parquet", seed=3)
    out = tmp_path / "unit"
    done = _cli("compare-policies", str(trace), "--policies", "lru,s3fifo", "--gpu-cache", "5,40", "--host-cache", "0",
                "--object-size", "unit", "--workers", "1", "-o", str(out), cwd=REPO)
    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["policy"], r["gpu_capacity"], r["host_capacity"], r["host_hits"]) for r in rows] == [
        ("lru", 5, 0, 0), ("lru", 40, 0, 0), ("s3fifo", 5, 0, 0), ("s3fifo", 40, 0, 0)]


def test_bench_sim_prints_both_simulators(tmp_path: Path) -> None:
    pytest.importorskip("libcachesim")
    trace = _write_trace(tmp_path / "t.parquet")
    done = _cli("bench", "sim", str(trace), "--policies", "lru,arc", "--capacity", "10,50", cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "libCacheSim" in done.stdout and "ours" in done.stdout and "arc" in done.stdout
