"""Replay engine, cache manager and `mtbench replay` on the CPU (tiny model, small generated traces)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mtbench.cache.control import Request
from mtbench.cache.manager import CacheConfig, CacheManager
from mtbench.cache.pool import KVShape
from mtbench.cache.transfer import TransferFailed
from mtbench.cli import app
from mtbench.model import MTGR, get_config
from mtbench.replay.batching import iter_batches
from mtbench.replay.engine import ReplayOptions, replay_run
from mtbench.replay.verify import FP32_RTOL, verify_samples
from mtbench.trace import open_trace

CFG = get_config("tiny")
SHAPE = KVShape(CFG.n_layers, CFG.n_heads, CFG.head_dim, torch.float32, 32)
REPO = Path(__file__).resolve().parents[1]


def make_trace(path: Path, seed: int, requests: int = 90, users: int = 14, version_every: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, requests).astype(np.int64)
    frame = pd.DataFrame({
        "ts": np.sort(rng.random(requests) * 50.0),
        "user_id": user,
        "static_version": (np.arange(requests) // version_every).astype(np.int64),
        "n_static": (CFG.n_user_tokens + 3 + (user * 7) % 60).astype(np.int64),
        "n_rt": rng.integers(0, 6, requests).astype(np.int64),
        "n_cand": rng.integers(1, 5, requests).astype(np.int64),
    })
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def model() -> MTGR:
    torch.manual_seed(0)
    return MTGR(CFG).eval()


def _cache(mode: str, layout: str = "hybrid", gpu_pages: int = 9, host_pages: int = 40, **kw) -> CacheConfig:
    return CacheConfig(mode=mode, policy=kw.pop("policy", "lru"), gpu_capacity=gpu_pages * SHAPE.page_bytes,
                       host_capacity=host_pages * SHAPE.page_bytes, layout=layout, **kw)


@pytest.mark.parametrize("seed", [0, 1])
def test_cached_scores_equal_recomputed_for_every_request(tmp_path: Path, model: MTGR, seed: int) -> None:
    trace = open_trace(make_trace(tmp_path / "t.parquet", seed), CFG.limits())
    options = ReplayOptions(batch_size=6, keep_all_scores=True)
    reference = replay_run(model, trace, _cache("none"), options, "none")
    assert reference.row["misses"] == trace.num_rows
    runs = [("gpu", "hybrid", "lru", "all", None), ("tiered", "hybrid", "lru", "all", None),
            ("tiered", "paged", "sieve", "all", None), ("tiered", "user", "arc", "all", None),
            ("tiered", "zerocopy", "lru", "all", None), ("tiered", "hybrid", "lru", SHAPE.entry_bytes(64), None),
            ("tiered", "hybrid", "lru", "all", True)]  # loads issued by the loader thread, as on CUDA
    for mode, layout, policy, budget, thread in runs:
        run_options = replace(options, load_budget=budget)
        config = _cache(mode, layout, policy=policy, load_thread=thread)
        result = replay_run(model, trace, config, run_options, f"{mode}/{layout}")
        row = result.row
        assert row["gpu_hits"] + row["host_hits"] > 0, f"{mode}/{layout} never hit: the test would prove nothing"
        if mode == "tiered":
            assert row["host_hits"] > 0 and row["bytes_h2d"] > 0 and row["bytes_d2h"] > 0
        outcomes = row["gpu_hits"] + row["host_hits"] + row["host_recomputes"] + row["misses"] + row["stale"]
        assert row["requests"] == outcomes == trace.num_rows
        assert set(result.samples) == set(reference.samples) == set(range(trace.num_rows))
        for index, sample in result.samples.items():
            expected = reference.samples[index]
            scale = expected.ctr.abs().max()
            assert float((sample.ctr - expected.ctr).abs().max() / scale) < FP32_RTOL, (mode, layout, index, sample.outcome)
            assert float((sample.ctcvr - expected.ctcvr).abs().max() / expected.ctcvr.abs().max()) < FP32_RTOL


@pytest.mark.parametrize("policy,write_back,inclusive", [("s3fifo", True, True), ("lru", False, False),
                                                        ("mtserve", True, False)])
def test_every_hierarchy_serves_exact_scores(tmp_path: Path, model: MTGR, policy: str, write_back: bool,
                                             inclusive: bool) -> None:
    """Write-back demotions, write-through, exclusive promotions and S3-FIFO's refusals (served from
    scratch pages, copied to the host) all give cached scores equal to recomputation."""
    trace = open_trace(make_trace(tmp_path / "t.parquet", 11, requests=60), CFG.limits())
    options = ReplayOptions(batch_size=5, keep_all_scores=True)
    reference = replay_run(model, trace, _cache("none"), options, "none")
    config = _cache("tiered", gpu_pages=5, policy=policy, write_back=write_back, inclusive=inclusive)
    result = replay_run(model, trace, config, options, "tiered")
    assert result.row["host_hits"] > 0 and result.row["write_back"] == write_back
    for index, sample in result.samples.items():
        assert torch.allclose(sample.ctr, reference.samples[index].ctr, rtol=FP32_RTOL, atol=1e-7), (index, sample.outcome)


def test_stale_entries_are_never_served(tmp_path: Path, model: MTGR) -> None:
    """Every user gets a new static_version every 15 requests; hits must still equal recomputation."""
    trace = open_trace(make_trace(tmp_path / "t.parquet", 3, requests=80, users=5, version_every=15), CFG.limits())
    options = ReplayOptions(batch_size=4, keep_all_scores=True)
    reference = replay_run(model, trace, _cache("none"), options, "none")
    result = replay_run(model, trace, _cache("tiered", gpu_pages=6), options, "tiered")
    assert result.row["stale"] > 0
    records = result.records
    for index, sample in result.samples.items():
        assert torch.allclose(sample.ctr, reference.samples[index].ctr, rtol=FP32_RTOL, atol=1e-7)
    # a hit is only ever on the request's own version: the first request of each version is never a hit
    first_of_version = records.drop_duplicates(["user_id", "static_version"])
    assert not first_of_version["outcome"].isin(["gpu_hit", "host_hit"]).any()


def _computed_rows(plan) -> np.ndarray:
    """Row offsets of a batch whose requests compute only their uncached static tokens."""
    return np.concatenate([[0], np.cumsum([r.n_static - c for r, c in zip(plan.requests, plan.cached)])])


def _fake_forward(manager: CacheManager, plan, seed: int) -> dict[tuple[int, int], torch.Tensor]:
    """What the forward does to the pool: random K/V [layers, 2, n, H, D] into the rows `pool_inputs`
    says each computed entry is stored into."""
    gen = torch.Generator().manual_seed(seed)
    offsets = _computed_rows(plan)
    reads = manager.pool_inputs(plan, offsets)
    written = {}
    for i, request in enumerate(plan.requests):
        rows = torch.as_tensor(reads.store_k_rows[offsets[i]:offsets[i + 1]]).long()
        if not len(rows) or (rows < 0).all():
            continue
        kv = torch.randn(SHAPE.layers, 2, len(rows), SHAPE.heads, SHAPE.head_dim, generator=gen)
        for layer in range(SHAPE.layers):
            flat = reads.kv[layer].view(-1, SHAPE.heads * SHAPE.head_dim)
            flat[rows] = kv[layer, 0].flatten(1)
            flat[rows + SHAPE.page_tokens] = kv[layer, 1].flatten(1)
        written[request.key] = kv
    return written


def _read_entry(manager: CacheManager, plan, row: int) -> torch.Tensor:
    """[layers, 2, n, H, D] of request `row`'s prefix, read through the batch's page table."""
    reads = manager.pool_inputs(plan, _computed_rows(plan))
    n = int(reads.lengths[row])
    slots = torch.arange(n)
    pages = torch.as_tensor(reads.page_table[row]).long()[slots // SHAPE.page_tokens]
    return torch.stack([reads.kv[layer][pages, :, slots % SHAPE.page_tokens].transpose(0, 1)
                        for layer in range(SHAPE.layers)])


@pytest.mark.parametrize("seed", range(4))
def test_in_flight_entries_are_never_evicted(seed: int) -> None:
    """Random batches through the manager alone: pinned keys (current + queued batch) stay resident."""
    rng = np.random.default_rng(seed)
    manager = CacheManager(_cache("tiered", gpu_pages=6, host_pages=14), SHAPE, "cpu", max_entry_tokens=64,
                           scratch_entries=3)
    plan = None
    index = 0
    for _ in range(30):
        requests = [Request((int(u), 0), 20 + int(u) * 3, float(index)) for u in rng.integers(0, 12, 3)]
        next_plan = manager.plan(requests)
        index += len(requests)
        if plan is not None:
            in_flight = {r.key for r in plan.requests} | {r.key for r in next_plan.requests}
            manager.refresh(plan)
            _fake_forward(manager, plan, index)
            for i in plan.rows("gpu_hit", "host_hit"):
                key = plan.requests[i].key
                assert key in manager.gpu or key in plan.transient, "a hit of the batch in flight was evicted"
            for key in in_flight:
                if key in manager.gpu:
                    assert manager.plane.is_pinned(key)
            manager.release(plan)
            manager.check_invariants()
        plan = next_plan
    assert manager.stats.gpu_evictions > 0 and manager.stats.host_hits > 0


def test_host_round_trip_through_manager_is_exact() -> None:
    """Computed into the pool -> evicted from the GPU (host keeps it) -> a host hit reloads the same K/V."""
    manager = CacheManager(_cache("tiered", gpu_pages=2, host_pages=10), SHAPE, "cpu", max_entry_tokens=64)
    first = [Request((1, 0), 50, 0.0)]
    plan = manager.plan(first)
    manager.refresh(plan)
    written = _fake_forward(manager, plan, 7)
    manager.release(plan)
    evictor = manager.plan([Request((2, 0), 60, 1.0)])
    manager.refresh(evictor)
    _fake_forward(manager, evictor, 8)
    manager.release(evictor)
    assert (1, 0) not in manager.gpu and (1, 0) in manager.host
    plan = manager.plan(first)
    assert plan.outcomes == ["host_hit"] and not plan.decisions.stores
    manager.refresh(plan)
    assert torch.equal(_read_entry(manager, plan, 0), written[(1, 0)])
    manager.release(plan)


def test_load_budget_recomputes_host_hits_into_the_pool() -> None:
    """A host entry over the load budget is recomputed (and stored in the pool), not loaded; the
    entry asked for most often in the batch is the one loaded."""
    manager = CacheManager(_cache("tiered", gpu_pages=4, host_pages=12), SHAPE, "cpu", max_entry_tokens=64)
    for index, user in enumerate((1, 2, 3, 4)):  # 2 pages each: users 1 and 2 end up on the host only
        plan = manager.plan([Request((user, 0), 40, float(index))])
        manager.refresh(plan)
        _fake_forward(manager, plan, index)
        manager.release(plan)
    assert {(1, 0), (2, 0)} <= set(manager.host) and not {(1, 0), (2, 0)} & set(manager.gpu)
    requests = [Request((1, 0), 40, 0.0), Request((2, 0), 40, 0.0), Request((2, 0), 40, 0.0)]
    plan = manager.plan(requests, load_budget_bytes=SHAPE.entry_bytes(40))
    assert plan.outcomes == ["host_recompute", "host_hit", "host_hit"]
    assert set(plan.decisions.stores) == {0} and plan.load is not None and len(plan.load.jobs) == 1
    manager.refresh(plan)
    _fake_forward(manager, plan, 11)
    manager.release(plan)
    assert manager.stats.host_recomputes == 1 and manager.stats.host_hits == 2
    manager.check_invariants()


def test_failed_transfers_fall_back_and_are_counted(tmp_path: Path, model: MTGR) -> None:
    trace = open_trace(make_trace(tmp_path / "t.parquet", 5), CFG.limits())
    options = ReplayOptions(batch_size=6, keep_all_scores=True)
    reference = replay_run(model, trace, _cache("none"), options, "none")

    def fail_odd_users(job, direction: str) -> None:
        if direction == "load" and job.key[0] % 2:
            raise TransferFailed("injected failure")

    result = replay_run(model, trace, _cache("tiered", gpu_pages=5), options, "tiered", fault_hook=fail_odd_users)
    assert result.row["transfer_fallbacks"] > 0
    assert result.row["host_hits"] > 0  # even users still load
    for index, sample in result.samples.items():
        assert torch.allclose(sample.ctr, reference.samples[index].ctr, rtol=FP32_RTOL, atol=1e-7)


def test_verify_detects_wrong_scores(tmp_path: Path, model: MTGR) -> None:
    trace = open_trace(make_trace(tmp_path / "t.parquet", 6), CFG.limits())
    result = replay_run(model, trace, _cache("tiered"), ReplayOptions(batch_size=6, verify_sample=10), "tiered")
    assert len(result.samples) == 10
    assert sum(s.outcome in ("gpu_hit", "host_hit") for s in result.samples.values()) >= 5
    check = verify_samples(model, result.samples)
    assert check.ok and check.checked == 10 and check.max_rel_err < FP32_RTOL
    broken = dict(result.samples)
    index = next(iter(broken))
    broken[index].ctr[0] += 0.01
    assert not verify_samples(model, broken).ok


@pytest.mark.parametrize("batch_size,window", [(4, None), (7, 2.0), (100, 0.5)])
def test_batches_respect_size_and_window(tmp_path: Path, batch_size: int, window: float | None) -> None:
    trace = open_trace(make_trace(tmp_path / "t.parquet", 2, requests=70), CFG.limits())
    batches = list(iter_batches(trace, batch_size, window))
    seen = np.concatenate([b.request_index for b in batches])
    assert seen.tolist() == list(range(70))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        if window is not None:
            assert batch.ts[-1] - batch.ts[0] <= window
    assert sum(len(b) for b in iter_batches(trace, batch_size, window, max_requests=33)) == 33


RECORD_COLUMNS = ["run", "request_index", "ts", "user_id", "static_version", "outcome", "n_static", "n_rt", "n_cand",
                  "latency_ms", "batch_index", "gpu_used_bytes", "host_used_bytes"]
ROW_FIELDS = ["policy", "gpu_capacity", "host_capacity", "requests", "gpu_hits", "host_hits", "misses", "stale",
              "hit_ratio", "gpu_hit_ratio", "token_hit_ratio", "bytes_h2d", "bytes_d2h", "gpu_evictions",
              "host_evictions", "est_ms_per_request", "est_speedup", "run", "cache_mode", "layout", "sync", "p50_ms",
              "p99_ms", "batch_p50_ms", "batch_p99_ms", "requests_per_s", "candidates_per_s", "h2d_GBps", "d2h_GBps",
              "compute_ms", "transfer_wait_ms", "bookkeeping_ms", "pipeline_efficiency", "speedup_vs_none",
              "speedup_vs_gpu", "speedup_vs_sync", "transfer_fallbacks", "host_fragmentation"]


def test_replay_command_writes_documented_report(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "t.parquet", 4, requests=60)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "replay", str(trace), "--model", "tiny", "--device", "cpu", "--dtype", "fp32",
        "--gpu-cache", f"{8 * SHAPE.page_bytes}", "--host-cache", "1MiB",
        "--batch-size", "6", "--baseline", "--verify", "6", "--layouts", "paged,hybrid", "--warmup", "12", "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "replay" and summary["trace"]["rows"] == 60 and summary["model"] == "tiny"
    labels = [row["run"] for row in summary["rows"]]
    assert labels == ["tiered/paged", "tiered/hybrid", "none", "gpu", "tiered/paged/sync"]
    for row in summary["rows"]:
        missing = [f for f in ROW_FIELDS if f not in row]
        assert not missing, missing
        assert row["requests"] == 48  # warm-up batches (first 12 requests) excluded
    assert summary["rows"][0]["verify_max_rel_err"] < FP32_RTOL
    assert summary["rows"][0]["speedup_vs_none"] > 0 and summary["rows"][0]["speedup_vs_sync"] > 0
    if summary["device"] == "cpu":  # timings are flagged once, and no CUDA graph is claimed
        assert result.output.count("say nothing about GPU speed") == 1 and summary["config"]["cuda_graphs"] is False
    records = pd.read_parquet(out / "records.parquet")
    assert all(column in records.columns for column in RECORD_COLUMNS)
    assert len(records) == 60 * len(labels)
    assert set(records["outcome"]) <= {"gpu_hit", "host_hit", "host_recompute", "miss", "stale"}
    assert (out / "summary.md").is_file()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtbench", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_bad_configurations_exit_2_without_a_report(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "t.parquet", 1, requests=20)
    too_long = tmp_path / "long.parquet"
    frame = pd.read_parquet(trace)
    frame.loc[3, "n_static"] = CFG.max_static + 1
    frame.to_parquet(too_long, index=False)
    cases = [
        ([str(trace), "--gpu-cache", "1KiB"], "cannot hold one entry"),
        ([str(trace), "--host-cache", "2KiB"], "cannot hold one entry"),
        ([str(trace), "--device", "cuda"] if not torch.cuda.is_available() else [str(trace), "--dtype", "fp8"],
         "cuda" if not torch.cuda.is_available() else "dtype"),
        ([str(too_long)], "n_static"),
        ([str(trace), "--policy", "nosuch"], "policy"),
        ([str(trace), "--layouts", "paged,striped"], "layout"),
        ([str(trace), "--gpu-cache", "4GB?"], "--gpu-cache"),
    ]
    for index, (args, needle) in enumerate(cases):
        out = tmp_path / f"out{index}"
        done = _run_cli("replay", *args, "--model", "tiny", "-o", str(out))
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.mark.parametrize("mode", ["none", "gpu", "tiered"])
def test_prewarm_leaves_the_cache_as_it_found_it(tmp_path: Path, model: MTGR, mode: str) -> None:
    """The pre-warm pass (run on CUDA before timing) touches only free pages/extents; on the CPU it must
    run through every path and leave pool, arena and policies untouched."""
    from mtbench.replay.prewarm import batch_size_classes, prewarm

    trace = open_trace(make_trace(tmp_path / "t.parquet", 9, requests=70), CFG.limits())
    options = ReplayOptions(batch_size=16, max_requests=65)
    manager = CacheManager(_cache(mode), SHAPE, "cpu", max_entry_tokens=int(trace.arrays(["n_static"])["n_static"].max()))
    extents = manager.plane.extents.free_extents() if manager.tiered else None
    prewarm(model, manager, trace, options)
    assert batch_size_classes(trace, 16, None, 65) == [1, 16]  # 4 batches of 16, one of 1
    assert batch_size_classes(trace, 6, None, 65) == [6]  # sizes 6 and 5: one Triton class
    assert not manager.gpu and not manager.host and manager.gpu_used_bytes == 0  # and every page free:
    manager.check_invariants()
    if manager.tiered:
        assert manager.plane.extents.free_extents() == extents


def test_scratch_pages_serve_what_the_gpu_tier_cannot_keep() -> None:
    """A GPU tier of one entry, a batch of three: the hit that cannot be promoted is loaded into scratch
    pages (exactly), the misses the tier cannot keep still reach the host, and scratch is freed after."""
    manager = CacheManager(_cache("tiered", gpu_pages=2, host_pages=20), SHAPE, "cpu", max_entry_tokens=64,
                           scratch_entries=3)
    scratch = manager.free_scratch_pages
    first = [Request((user, 0), 40, 0.0) for user in (1, 2, 3)]
    plan = manager.plan(first)
    assert plan.outcomes == ["miss"] * 3 and len(plan.decisions.stores) == 3 and len(plan.transient) == 2
    manager.refresh(plan)
    written = _fake_forward(manager, plan, 3)
    manager.release(plan)
    # write-back: the entry the GPU keeps goes to the host when evicted; those it refused go at once
    assert (1, 0) in manager.gpu and {(2, 0), (3, 0)} <= set(manager.host), "scratch misses must reach the host"
    plan = manager.plan(first)
    assert plan.outcomes.count("host_hit") == 2 and plan.outcomes.count("gpu_hit") == 1 and plan.transient
    manager.refresh(plan)
    for row, request in enumerate(first):
        assert torch.equal(_read_entry(manager, plan, row), written[request.key])
    manager.release(plan)
    manager.plan([])  # polls copies: released scratch pages come back
    assert manager.free_scratch_pages == scratch
    manager.check_invariants()


def test_calibrate_writes_a_cost_model_and_compares_with_the_simulator(tmp_path: Path) -> None:
    """`mtbench calibrate` on the CPU: every cost field measured and valid, and --compare-trace writes
    the replay report with the simulator-vs-measured comparison (the GPU figures are in BENCHMARKS.md)."""
    from mtbench.sim.costmodel import CostModel

    trace = make_trace(tmp_path / "t.parquet", 9, requests=80)
    cost_file, report = tmp_path / "cost.json", tmp_path / "cal"
    result = CliRunner().invoke(app, [
        "calibrate", "--model", "tiny", "--device", "cpu", "--dtype", "fp32", "-o", str(cost_file),
        "--compare-trace", str(trace), "--gpu-cache", f"{8 * SHAPE.page_bytes}", "--host-cache", "1MiB",
        "--batch-size", "8", "--report", str(report)])
    assert result.exit_code == 0, result.output
    cost = CostModel.load(cost_file)
    # Slopes are CPU timings: on a loaded machine a fit may clamp to 0, so only their validity is asserted.
    times = (cost.static_token_ms, cost.new_token_ms, cost.request_overhead_ms)
    assert all(math.isfinite(t) and t >= 0 for t in times) and sum(times) > 0
    assert cost.h2d_GBps > 0 and cost.d2h_GBps > 0 and "calibrated on cpu" in cost.source
    calibration = json.loads((report / "summary.json").read_text())["calibration"]
    # warm-up: the first quarter (20 requests), in whole batches of 8: batches starting at 0, 8 and 16
    assert calibration["timed_requests"] == 80 - 24
    assert calibration["decisions_equal"], "the simulator decided otherwise than the replay it estimates"
    assert calibration["measured_speedup"] > 0 and calibration["estimated_speedup"] > 0
    assert calibration["gap"] == pytest.approx(abs(calibration["estimated_speedup"] - calibration["measured_speedup"])
                                               / calibration["measured_speedup"])
    assert 0 < calibration["measured_host_ms_per_request"] <= calibration["measured_ms_per_request"] * 1.5
