"""Capacity planning on the CPU: the SLO-rate search brackets its answer, GPUs for a target rate,
`mtbench capacity` writes a report that `mtbench report`/`plot` handle, and its bad input exits 2."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mtbench.cli import app
from mtbench.errors import MtbenchError
from mtbench.model import get_config
from mtbench.serve.arrivals import ArrivalSpec, arrival_times
from mtbench.serve.batcher import BatcherConfig
from mtbench.cache.control import Outcome
from mtbench.serve.capacity import (CALIBRATION_LOADS, SEARCH_PRECISION, SPREAD_RUNS, CapacityQuestion, ModeCost,
                                     ModeServer, fit_plane, gpus_needed, measured_search)
from mtbench.serve.options import ServingOptions
from mtbench.serve.des import closed_loop_rate
from mtbench.serve.gap import batch_gaps, gap_summary, host_summary, with_host_samples
from mtbench.serve.service import SPREAD_QUANTILES, STRATA, BatchOverhead, CacheService, CacheSetting, batch_costs, batch_price_ms
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload, simulate

ROOT = Path(__file__).resolve().parents[1]
from mtbench.sim.sizes import EntrySizer

CFG = get_config("tiny")


def _columns(seed: int, n: int = 3000, users: int = 60) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n).astype(np.int64)
    return {"ts": np.sort(rng.random(n) * 100.0), "user_id": user, "static_version": np.zeros(n, dtype=np.int64),
            "n_static": (CFG.n_user_tokens + 20 + (user * 7) % 40).astype(np.int64),
            "n_rt": rng.integers(0, 6, n).astype(np.int64), "n_cand": rng.integers(1, 5, n).astype(np.int64)}


@pytest.mark.parametrize("seed, mode", [(0, "none"), (1, "gpu"), (2, "tiered")])
def test_search_brackets_the_highest_rate_within_the_slo(seed: int, mode: str) -> None:
    sizer = EntrySizer(CFG.kv_bytes_per_token(torch.float32), 32)
    workload = Workload.from_columns(_columns(seed), sizer)
    cost = CostModel(static_token_ms=0.02, new_token_ms=0.01, request_overhead_ms=0.05, h2d_GBps=0.05)
    question = CapacityQuestion(ServingOptions(ArrivalSpec("poisson", rate=1.0, seed=seed), BatcherConfig(8, 2.0), 8.0),
                                percentile=99.0, warmup=300).check()
    entry = int(workload.size.max())
    server = ModeServer(workload, CacheSetting(mode, "lru", 20 * entry, 80 * entry), ModeCost(cost, BatchOverhead.constant(0.5)), question)
    best = server.search()
    assert 0 < best < server.saturation_qps
    row = server.at(best)
    assert row["meets_slo"] and row["latency_at_percentile_ms"] <= 8.0 and not row["overloaded"]
    above = server.at(best * (1 + 2 * SEARCH_PRECISION))
    assert not above["meets_slo"]
    if mode != "none":
        assert float(np.mean(server.outcomes != "miss")) > 0.3  # the cache mattered


def test_gpus_needed_rounds_up_and_needs_a_target() -> None:
    assert gpus_needed(1000.0, 300.0) == 4 and gpus_needed(900.0, 300.0) == 3 and gpus_needed(10.0, 300.0) == 1
    assert gpus_needed(None, 300.0) is None and gpus_needed(100.0, 0.0) is None


def _trace(path: Path, seed: int = 0, n: int = 600) -> Path:
    pd.DataFrame(_columns(seed, n, users=20)).to_parquet(path, index=False)
    return path


def test_capacity_command_report_and_plots(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.parquet")
    common = ["capacity", str(trace), "--model", "tiny", "--dtype", "fp32", "--gpu-cache", "256KiB", "--host-cache",
              "2MiB", "--slo-ms", "2", "--max-wait-ms", "0.5", "--batch-size", "8", "--target-qps", "1e6"]
    runner = CliRunner()
    result = runner.invoke(app, [*common, "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "max QPS per GPU within p99 <= 2 ms" in result.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["kind"] == "capacity" and [r["run"] for r in summary["rows"]] == ["none", "gpu", "tiered"]
    for row in summary["rows"]:
        assert 0 < row["max_qps"] < row["saturation_qps"]
        assert row["gpus_needed"] == int(np.ceil(1e6 / row["max_qps"]))
    points = pd.read_parquet(tmp_path / "a" / "records.parquet")
    assert set(points["cache_mode"]) == {"none", "gpu", "tiered"} and set(points["source"]) == {"simulated"}
    assert points.groupby("cache_mode").size().min() >= 5
    plots = {p.name for p in (tmp_path / "a" / "plots").glob("*.png")}
    assert {"latency_vs_load.png", "slo_attainment.png", "gpu_count.png"} <= plots
    # report and plot handle the new kind, alone and side by side
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shown = runner.invoke(app, ["report", str(tmp_path / "a")])
    assert shown.exit_code == 0 and "max_qps" in shown.output
    compared = runner.invoke(app, ["report", str(tmp_path / "a"), str(tmp_path / "b")])
    assert compared.exit_code == 0 and "tiered" in compared.output, compared.output
    drawn = runner.invoke(app, ["plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "overlay")])
    assert drawn.exit_code == 0 and (tmp_path / "overlay" / "latency_vs_load.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--percentile", "100"], "--percentile"),
    (["--slo-ms", "0"], "--slo-ms"),
    (["--cache", "none,disk"], "--cache"),
    (["--target-qps", "-5"], "--target-qps"),
    (["--measure-rates", "100"], "need --measure"),
    (["--measure-steps", "2"], "need --measure"),
    (["--measure", "--measure-steps", "-1"], "--measure-steps"),
    (["--measure-repeats", "2"], "need --measure"),
    (["--measure", "--measure-repeats", "0"], "--measure-repeats"),
    (["--batch-overhead-ms", "soon"], "--batch-overhead-ms"),
    (["--arrivals", "closed"], "--arrivals"),
    (["--gpu-cache", "1KiB"], "cannot hold one entry"),
    (["--cpus", "x"], "--cpus: expected CPU numbers"),
    (["--cpus", "100000"], "--cpus: CPU 100000 is not available"),
])
def test_capacity_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    trace = _trace(tmp_path / "t.parquet", n=50)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["capacity", str(trace), "--model", "tiny", "--dtype", "fp32", "--gpu-cache",
                                      "256KiB", "--host-cache", "2MiB", *args, "-o", str(out)])
    assert isinstance(result.exception, MtbenchError) and message in str(result.exception), result.output
    assert not out.exists() and not out.with_name("out.partial").exists()


@pytest.mark.parametrize("seed", range(5))
def test_measured_search_bisects_the_slo_rate_between_the_measured_runs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    threshold = float(rng.uniform(150, 900))  # the device meets the SLO up to this rate
    grid = sorted(rng.uniform(50, 1000, 4).tolist() + [100.0, 1200.0])
    run_at = lambda rate: {"rate": rate, "meets_slo": rate <= threshold}
    runs = [run_at(rate) for rate in grid]
    low = max(rate for rate in grid if rate <= threshold)
    high = min(rate for rate in grid if rate > threshold)
    added = measured_search(runs, run_at, 4)
    assert len(added) == 4
    for row in added:  # each run bisects the bracket left by the ones before it (geometric midpoint)
        assert row["rate"] == pytest.approx(math.sqrt(low * high))
        low, high = (row["rate"], high) if row["meets_slo"] else (low, row["rate"])
    assert high / low == pytest.approx((min(r for r in grid if r > threshold) / max(r for r in grid if r <= threshold))
                                       ** (1 / 16))
    assert measured_search(runs, run_at, 0) == []
    assert measured_search([run_at(2000.0)], run_at, 3) == []  # nothing met the SLO: nothing to bisect
    assert measured_search([run_at(50.0), run_at(100.0)], run_at, 3) == []  # nothing above the best missed it


def test_capacity_measure_runs_the_real_replay(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.parquet", n=40)
    out = tmp_path / "m"
    result = CliRunner().invoke(app, ["capacity", str(trace), "--model", "tiny", "--dtype", "fp32", "--gpu-cache",
                                      "256KiB", "--host-cache", "2MiB", "--cache", "tiered", "--batch-size", "4",
                                      "--slo-ms", "10000", "--measure", "--device", "cpu", "--warmup", "8",
                                      "--batch-overhead-ms", "auto", "-o", str(out)])  # an SLO a busy CPU meets
    assert result.exit_code == 0, result.output
    row = json.loads((out / "summary.json").read_text())["rows"][0]
    assert row["measured_saturation_qps"] > 0 and "measured_max_qps" in row and "measured_meets_slo" in row
    points = pd.read_parquet(out / "records.parquet")
    measured = points[points["source"] == "measured"]
    assert len(measured) == 1 and measured["rate"].iloc[0] == pytest.approx(row["max_qps"])
    assert "measured: max QPS per GPU" in result.output
    requests = pd.read_parquet(out / "measured_requests.parquet")  # the measured run's timed requests
    assert len(requests) == 40 - 8 and set(requests["rate"]) == set(measured["rate"])
    assert (requests["cache_mode"] == "tiered").all() and (requests["finish_s"] >= requests["arrival_s"]).all()
    gaps = batch_gaps(out)  # every measured batch priced as the simulator prices it
    assert len(gaps) == requests["batch_index"].nunique() and gaps["size"].sum() == len(requests)
    assert (gaps["simulated_ms"] >= gaps["fixed_ms"] + gaps["compute_ms"] - 1e-9).all()
    assert (gaps["exposed_ms"] >= -1e-9).all() and (gaps["stall_ms"] == 0).all()  # no copy stalls on the CPU
    table = gap_summary(gaps)
    assert table["batches"].sum() == len(gaps)
    # the forwards' host issue per batch: the server thread's CPU time never exceeds its wall time
    assert (gaps["host_ms"] > 0).all() and (gaps["host_cpu_ms"] <= gaps["host_ms"] + 0.05).all()
    # with the kernel's part (Linux: getrusage per thread, apportioned by ticks) and its minor page faults
    assert (gaps["host_kernel_ms"] >= 0).all() and gaps["host_kernel_ms"].mean() <= gaps["host_cpu_ms"].mean() + 4
    assert (gaps["host_faults"] >= 0).all() and (gaps["host_faults"] == gaps["host_faults"].round()).all()
    assert (gaps["host_preemptions"] >= 0).all() and (gaps["host_preemptions"] == gaps["host_preemptions"].round()).all()
    # batches on the host's monotonic clock, in order, each as long as its measured time
    assert (np.diff(gaps["clock_start_s"]) > 0).all()
    assert np.allclose((gaps["clock_finish_s"] - gaps["clock_start_s"]) * 1e3, gaps["measured_ms"])
    hosts = host_summary(gaps)
    assert hosts["batches"].sum() == len(gaps) and set(hosts["slow"]) <= {True, False}
    # the machine around each batch, from a host_sampler.py CSV (CPU seconds at 10 ms ticks): 1.5 CPUs busy, 0.25 stolen
    clock = np.arange(gaps["clock_start_s"].min() - 1, gaps["clock_finish_s"].max() + 1, 0.05)
    seconds = lambda cpus: np.round(100 * cpus * (clock - clock[0])) / 100
    samples = pd.DataFrame({"clock_s": clock, "user": seconds(1.0), "nice": 0, "system": seconds(0.5),
                            "idle": seconds(14.0), "iowait": 0, "irq": 0, "softirq": 0, "steal": seconds(0.25),
                            "procs_running": 2})
    samples.to_csv(tmp_path / "host_samples.csv", index=False)
    machine = with_host_samples(gaps, tmp_path / "host_samples.csv")
    assert np.allclose(machine["busy_cpus"], 1.5, atol=0.2) and np.allclose(machine["steal_cpus"], 0.25, atol=0.2)
    assert {"busy_cpus", "steal_cpus"} <= set(host_summary(machine).columns)
    with pytest.raises(MtbenchError, match="not a host_sampler.py CSV"):
        with_host_samples(gaps, trace)  # a parquet file is no sampler CSV
    script = [sys.executable, str(ROOT / "scripts" / "serving_gap.py"), str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    printed = subprocess.run([*script, "--host-samples", str(tmp_path / "host_samples.csv")], env=env,
                             capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert "steal" in printed.stdout and all(len(line) <= 80 for line in printed.stdout.splitlines())
    refused = subprocess.run([*script, "--host-samples", str(trace)], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    # re-priced from its own calibration records, the report's simulated p99 comes back exactly
    repriced = subprocess.run([sys.executable, str(ROOT / "scripts" / "serving_reprice.py"), str(out), str(trace)],
                              env=env, capture_output=True, text=True, timeout=300)
    assert repriced.returncode == 0, repriced.stderr
    line = next(line for line in repriced.stdout.splitlines() if line.startswith("tiered "))
    report_p99, refit_p99 = line.split()[-4:-2]
    assert report_p99 == refit_p99 and all(len(line) <= 80 for line in repriced.stdout.splitlines())
    # a busy machine's server may fall behind at the simulated max QPS: that point is shown, not dropped
    behind = tmp_path / "behind"
    shutil.copytree(out, behind)
    points = pd.read_parquet(behind / "records.parquet")
    percentiles = ["latency_at_percentile_ms", "latency_at_percentile_ms_min", "latency_at_percentile_ms_max"]
    points.loc[points["source"] == "measured", percentiles] = np.nan
    points.to_parquet(behind / "records.parquet")
    repriced = subprocess.run([sys.executable, str(ROOT / "scripts" / "serving_reprice.py"), str(behind), str(trace)],
                              env=env, capture_output=True, text=True, timeout=300)
    line = next(line for line in repriced.stdout.splitlines() if line.startswith("tiered "))
    assert repriced.returncode == 0 and "overloaded" in line and line.split()[-4] == report_p99
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / "serving_reprice.py"), str(tmp_path), str(trace)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    calibration = pd.read_parquet(out / "calibration_requests.parquet")  # the calibration replays' records
    sizes = calibration.groupby(["feed", "batch_size", "pipelined"]).size()
    assert set(sizes.index) == {("serial", 1, False), ("serial", 2, False), ("serial", 4, False),
                                ("saturated", 4, True), ("open-loop", 4, True)}
    assert (calibration["cache_mode"] == "tiered").all()
    assert sizes[("saturated", 4, True)] == 40 - 8  # the throughput replays every timed request
    open_loop = calibration[calibration["feed"] == "open-loop"]  # every timed request at each load
    assert open_loop.groupby("load").size().to_dict() == {load: 40 - 8 for load in CALIBRATION_LOADS}
    assert calibration.loc[calibration["feed"] != "open-loop", "load"].isna().all()
    assert (open_loop["finish_s"] >= open_loop["arrival_s"]).all()
    curve = row["batch_overhead_curve"]  # a plane in the composition, fitted over the open-loop calibration
    assert set(curve) == {"serial", "pipelined", "per_recompute", "per_reuse", "copy_tail", "eager", "graphs",
                          "spread", "eager_spread"}
    assert curve["eager"] is None and curve["graphs"] is None  # no CUDA graphs on the CPU: one plane
    assert curve["eager_spread"] is None and len(curve["spread"]) == SPREAD_QUANTILES  # its batches' scatter
    assert all(np.isfinite(value) for value in curve.values() if isinstance(value, float))
    assert np.isfinite(curve["spread"]).all() and np.all(np.diff(curve["spread"]) >= 0)
    assert curve["copy_tail"] == 0.0  # no copy stalls on the CPU


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="host_sampler.py reads /proc/stat (Linux)")
def test_host_sampler_writes_cumulative_cpu_seconds_on_the_monotonic_clock_until_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "samples.csv"
    before = time.perf_counter()
    sampler = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "host_sampler.py"), str(out), "--interval", "0.02"])
    time.sleep(1.0)
    sampler.send_signal(signal.SIGTERM)
    assert sampler.wait(timeout=30) == 0
    samples = pd.read_csv(out)
    assert len(samples) >= 5 and list(samples.columns)[:2] == ["clock_s", "user"] and "steal" in samples
    assert (samples["clock_s"] >= before).all() and (np.diff(samples["clock_s"]) > 0).all()
    seconds = samples.drop(columns=["clock_s", "procs_running"]).to_numpy()  # cumulative CPU seconds
    assert (np.diff(seconds, axis=0) >= 0).all() and (samples["procs_running"] >= 1).all()  # the sampler itself runs
    assert seconds[-1].sum() - seconds[0].sum() == pytest.approx((samples["clock_s"].iloc[-1] - samples["clock_s"].iloc[0])
                                                                 * os.cpu_count(), rel=0.35)  # every CPU's time


def test_capacity_measure_repeats_each_rate_on_the_same_arrivals(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.parquet", n=40)
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["capacity", str(trace), "--model", "tiny", "--dtype", "fp32", "--cache", "none",
                                      "--batch-size", "4", "--slo-ms", "10000", "--measure", "--device", "cpu",
                                      "--warmup", "8", "--batch-overhead-ms", "1", "--measure-repeats", "2",
                                      "--measure-rates", "2", "--measure-steps", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "over repeated runs" in result.output
    points = pd.read_parquet(out / "records.parquet")
    measured = points[points["source"] == "measured"]
    assert len(measured) == 2 and (measured["repeats"] == 2).all()  # 2/s and the simulated SLO rate
    slow = measured[measured["rate"] == 2.0].iloc[0]  # 2 requests/s: a rate the tiny model keeps up with
    low, median, high = (slow[f"latency_at_percentile_ms{suffix}"] for suffix in ("_min", "", "_max"))
    assert low <= median <= high
    requests = pd.read_parquet(out / "measured_requests.parquet")
    assert (requests.groupby(["rate", "repeat"]).size() == 40 - 8).all() and set(requests["repeat"]) == {0, 1}
    runs = requests[requests["rate"] == 2.0].groupby("repeat")
    for column in ("request_index", "arrival_s"):  # the same requests at the same arrival times
        first, second = (part[column].to_numpy() for _, part in runs)
        assert np.array_equal(first, second)
    gaps = batch_gaps(out)  # batches of each repeat priced on their own
    assert gaps["size"].sum() == len(requests)


@pytest.mark.parametrize("seed", range(5))
def test_fit_plane_recovers_the_fixed_cost_per_batch_and_per_request(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = rng.integers(1, 65, 200)
    recomputed = rng.binomial(size, rng.uniform(0.1, 0.9))
    intercept, per_recompute, per_reuse = rng.uniform(0.5, 10), rng.uniform(0, 0.5), rng.uniform(0, 0.1)
    ms = intercept + per_recompute * recomputed + per_reuse * (size - recomputed)
    assert fit_plane(recomputed, size - recomputed, ms) == pytest.approx((intercept, per_recompute, per_reuse))
    noisy = ms + rng.normal(0, 0.01, len(ms))
    assert fit_plane(recomputed, size - recomputed, noisy) == pytest.approx((intercept, per_recompute, per_reuse),
                                                                            abs=0.02)
    # no cache: every request recomputes, so the reuse term is absent and the plane is a line in the size
    assert fit_plane(size, np.zeros(len(size)), intercept + per_recompute * size) == pytest.approx(
        (intercept, per_recompute, 0.0))


@pytest.mark.parametrize("seed, mode", [(3, "gpu"), (4, "tiered"), (5, "tiered")])
def test_des_decides_through_the_control_plane_as_the_simulator_does(seed: int, mode: str) -> None:
    """Closed loop (every batch full and planned while the previous one runs) the DES's decisions equal
    the simulator's with the replay's lookahead of one batch; the service time of each batch is the
    fixed cost plus `batch_costs` of its decisions, priced by `batch_price_ms`."""
    sizer = EntrySizer(CFG.kv_bytes_per_token(torch.float32), 32)
    workload = Workload.from_columns(_columns(seed, n=1200, users=80), sizer)
    cost = CostModel(static_token_ms=0.02, new_token_ms=0.01, request_overhead_ms=0.05, h2d_GBps=0.05)  # copies partly exposed
    entry = int(workload.size.max())
    setting = CacheSetting(mode, "lru", 12 * entry, 40 * entry)
    service = CacheService(workload, setting, cost, BatchOverhead(0.4, pipelined=0.3, per_recompute=0.05, per_reuse=0.01))
    charged: list[tuple[int, int, bool, float]] = []
    closed_loop_rate(workload.n_requests, lambda s, e, early: charged.append((s, e, early, service(s, e, early)))
                     or charged[-1][3], max_batch=8)
    host = setting.host_capacity if mode == "tiered" else 0
    expected, recomputed = simulate(workload, "lru", setting.gpu_capacity, host, TierSettings(lookahead=1, batch_size=8),
                                    cost, keep_outcomes=True)
    np.testing.assert_array_equal(service.outcomes, expected.outcomes)
    np.testing.assert_array_equal(service.recomputed, recomputed)
    assert (service.outcomes == int(Outcome.HOST_HIT)).any() == (mode == "tiered")
    batch_index = np.repeat(np.arange(len(charged)), [e - s for s, e, _, _ in charged])
    records = pd.DataFrame({"batch_index": batch_index, "n_rt": workload.n_rt, "n_cand": workload.n_cand,
                            "computed_tokens": service.recomputed, "outcome": service.outcome_names,
                            "n_cached": workload.n_static - service.recomputed,
                            "user_id": workload.key_user[workload.key], "static_version": workload.key_version[workload.key]})
    costs = batch_costs(records, cost, sizer)
    fixed = [(0.3 if early else 0.4) + 0.05 * r + 0.01 * u
             for (*_, early, _), r, u in zip(charged, costs["recomputed"], costs["reused"])]
    expected_ms = [batch_price_ms(cost, c, h, f) for c, h, f in zip(costs["compute_ms"], costs["h2d_ms"], fixed)]
    np.testing.assert_allclose([ms for *_, ms in charged], expected_ms, rtol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_fit_overhead_gives_each_forward_path_its_own_plane(seed: int) -> None:
    """Serial calibration batches on two paths: each plane is recovered exactly, full batches set the
    pipelined intercept against their own path's slopes; without limits or one path there is one plane."""
    from mtbench.graphs import GraphLimits
    from mtbench.serve.capacity import fit_overhead

    rng = np.random.default_rng(seed)
    n = 60
    recomputed, reused = rng.integers(0, 40, n), rng.integers(0, 40, n)
    graphed = recomputed + reused <= 32
    fixed = np.where(graphed, 3.0 + 0.1 * recomputed + 0.02 * reused, 9.0 + 0.3 * recomputed + 0.05 * reused)
    serial = pd.DataFrame({"fixed_ms": fixed, "recomputed": recomputed, "reused": reused, "graphed": graphed,
                           "stall_ms": 0.0, "batch_ms": fixed, "h2d_ms": 0.0})
    full = pd.DataFrame({"fixed_ms": [2.0 + 0.3 * 50 + 0.05 * 14], "recomputed": [50], "reused": [14],
                         "graphed": [False], "stall_ms": 0.0, "batch_ms": 0.0, "h2d_ms": 0.0})
    limits = GraphLimits(max_requests=64, row_bucket=2048, max_rows=32768)
    overhead = fit_overhead(serial, full, limits)
    assert overhead.graphs == limits
    assert (overhead.serial, overhead.per_recompute, overhead.per_reuse) == pytest.approx((3.0, 0.1, 0.02))
    assert overhead.eager == pytest.approx((9.0, 0.3, 0.05)) and overhead.pipelined == pytest.approx(2.0)
    for together in (fit_overhead(serial, full, None), fit_overhead(serial[graphed], full, limits)):
        assert together.eager is None and together.graphs is None



@pytest.mark.parametrize("seed", range(3))
def test_fit_overhead_prefers_the_open_loop_batches_on_each_path(seed: int) -> None:
    """Open-loop calibration batches give a path's plane when there are MIN_PLANE_BATCHES of them on it;
    with fewer the serial batches on that path do; the serial ones alone still give both planes."""
    from mtbench.graphs import GraphLimits
    from mtbench.serve.capacity import MIN_PLANE_BATCHES, fit_overhead

    rng = np.random.default_rng(seed)

    def batches(n: int, graphed: bool, intercept: float, per_recompute: float) -> pd.DataFrame:
        recomputed, reused = rng.integers(0, 30, n), rng.integers(0, 30, n)
        fixed = intercept + per_recompute * recomputed + 0.01 * reused
        return pd.DataFrame({"fixed_ms": fixed, "recomputed": recomputed, "reused": reused, "graphed": graphed,
                             "stall_ms": 0.0, "batch_ms": fixed, "h2d_ms": 0.0})

    serial = pd.concat([batches(40, True, 4.0, 0.2), batches(40, False, 9.0, 0.3)])
    full = batches(1, False, 9.0, 0.3)
    limits = GraphLimits(max_requests=64)
    open_loop = pd.concat([batches(MIN_PLANE_BATCHES, True, 3.0, 0.05), batches(MIN_PLANE_BATCHES - 1, False, 6.0, 0.1)])
    overhead = fit_overhead(serial, full, limits, open_loop)
    assert (overhead.serial, overhead.per_recompute, overhead.per_reuse) == pytest.approx((3.0, 0.05, 0.01))
    assert overhead.eager == pytest.approx((9.0, 0.3, 0.01))  # too few open-loop eager batches: the serial ones
    assert overhead.pipelined == pytest.approx(9.0)
    only_serial = fit_overhead(serial, full, limits)
    assert only_serial.serial == pytest.approx(4.0) and only_serial.eager == pytest.approx((9.0, 0.3, 0.01))
    # one path (no limits): one plane over every open-loop batch once there are enough of them
    one_path = fit_overhead(serial, full, None, batches(MIN_PLANE_BATCHES, False, 5.0, 0.15))
    assert one_path.eager is None and (one_path.serial, one_path.per_recompute) == pytest.approx((5.0, 0.15))


def test_fit_overhead_keeps_each_paths_scatter_around_its_plane() -> None:
    """`spread` holds how the graphed plane's batches scattered around it, `eager_spread` the eager
    plane's (here the serial batches': too few open-loop ones took that path); both at mean zero."""
    from mtbench.graphs import GraphLimits
    from mtbench.serve.capacity import MIN_PLANE_BATCHES, fit_overhead

    rng = np.random.default_rng(8)

    def batches(n: int, graphed: bool, intercept: float, sd: float) -> pd.DataFrame:
        recomputed, reused = rng.integers(0, 30, n), rng.integers(0, 30, n)
        fixed = intercept + 0.1 * recomputed + 0.01 * reused + rng.normal(0.0, sd, n)
        return pd.DataFrame({"fixed_ms": fixed, "recomputed": recomputed, "reused": reused, "graphed": graphed,
                             "stall_ms": 0.0, "batch_ms": fixed, "h2d_ms": 0.0})

    serial = pd.concat([batches(40, True, 4.0, 0.0), batches(400, False, 9.0, 2.0)])
    open_loop = pd.concat([batches(800, True, 3.0, 0.4), batches(MIN_PLANE_BATCHES - 1, False, 6.0, 0.0)])
    overhead = fit_overhead(serial, batches(1, False, 9.0, 0.0), GraphLimits(max_requests=64), open_loop)
    uniforms = rng.random(50_000)
    for spread, sd in ((overhead.spread, 0.4), (overhead.eager_spread, 2.0)):
        assert len(spread) == SPREAD_QUANTILES and (spread[0] + spread[-1] + 2 * sum(spread[1:-1])) == pytest.approx(0.0, abs=1e-9)
        draws = np.interp(uniforms, np.linspace(0, 1, SPREAD_QUANTILES), spread)
        assert draws.std() == pytest.approx(sd, rel=0.1)
    one_path = fit_overhead(serial, batches(1, False, 9.0, 0.0), None, open_loop)
    assert one_path.eager_spread is None and len(one_path.spread) == SPREAD_QUANTILES


@pytest.mark.parametrize("mode", ["none", "gpu"])
def test_the_service_adds_each_batch_its_own_draw_from_the_spread(mode: str) -> None:
    """Each batch's price is its plane's plus one draw from the spread; every STRATA batches draw once
    from each stratum of it, in a seeded random order: the same seed prices the same batches the same."""
    sizer = EntrySizer(CFG.kv_bytes_per_token(torch.float32), 32)
    workload = Workload.from_columns(_columns(2, n=4 * STRATA, users=40), sizer)
    cost = CostModel(static_token_ms=0.02, new_token_ms=0.01, request_overhead_ms=0.05)
    setting = CacheSetting(mode, "lru", 400 * int(workload.size.max()) if mode == "gpu" else 0)
    plane = BatchOverhead(2.0, pipelined=1.0, per_recompute=0.05, per_reuse=0.01)
    spread = BatchOverhead.spread_of(np.linspace(-1.0, 1.0, 50))  # uniform: a draw u deviates by 2u - 1
    noisy = BatchOverhead(2.0, pipelined=1.0, per_recompute=0.05, per_reuse=0.01, spread=spread)

    def prices(overhead: BatchOverhead, seed: int) -> np.ndarray:
        service = CacheService(workload, setting, cost, overhead, seed)
        return np.array([service(start, start + 4, False) for start in range(0, workload.n_requests, 4)])

    uniforms = (prices(noisy, 0) - prices(plane, 0) + 1.0) / 2
    assert sorted(np.floor(uniforms * STRATA).astype(int)) == list(range(STRATA))  # each stratum once
    assert abs(np.corrcoef(uniforms[:-1], uniforms[1:])[0, 1]) < 0.25  # in no particular order
    np.testing.assert_array_equal(prices(noisy, 0), prices(noisy, 0))
    assert not np.allclose(prices(noisy, 1), prices(noisy, 0))


def test_with_a_spread_each_rate_is_the_median_of_several_simulated_runs() -> None:
    """SPREAD_RUNS streams of draws on the same arrivals, the run with the median p99 reported, as the
    device reports its median run; without a spread, one run."""
    sizer = EntrySizer(CFG.kv_bytes_per_token(torch.float32), 32)
    workload = Workload.from_columns(_columns(3, n=600, users=40), sizer)
    cost = CostModel(static_token_ms=0.02, new_token_ms=0.01, request_overhead_ms=0.05)
    spread = BatchOverhead.spread_of(np.random.default_rng(1).gamma(2.0, 1.0, 500))
    question = CapacityQuestion(ServingOptions(ArrivalSpec("poisson", rate=1.0, seed=4), BatcherConfig(8, 2.0), 50.0))
    server = ModeServer(workload, CacheSetting("none"), ModeCost(cost, BatchOverhead(2.0, spread=spread)), question)
    rate = 0.7 * server.saturation_qps
    arrivals = arrival_times(workload.ts, question.arrivals_at(rate))
    runs = sorted(server._run(rate, arrivals, stream)["latency_at_percentile_ms"] for stream in range(SPREAD_RUNS))
    assert len(set(runs)) > 1 and server.at(rate)["latency_at_percentile_ms"] == runs[SPREAD_RUNS // 2]
    plain = ModeServer(workload, CacheSetting("none"), ModeCost(cost, BatchOverhead(2.0)), question)
    assert plain.at(rate) == plain._run(rate, arrivals, 0)


def test_cpus_are_parsed_as_lists_and_ranges() -> None:
    from mtbench.affinity import parse_cpus

    assert parse_cpus("0-2,5, 1") == [0, 1, 2, 5]
    for text in ("", "a", "3-1", "-1", "0,,1"):
        with pytest.raises(MtbenchError, match="--cpus"):
            parse_cpus(text)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_pin_cpus_pins_every_thread_of_the_process() -> None:
    from mtbench.affinity import pin_cpus

    before = os.sched_getaffinity(0)
    started = threading.Event()
    worker = threading.Thread(target=started.wait, daemon=True)
    worker.start()
    try:
        cpu = min(before)
        assert pin_cpus(str(cpu)) == [cpu]
        assert os.sched_getaffinity(0) == {cpu} and os.sched_getaffinity(worker.native_id) == {cpu}
    finally:
        started.set()
        worker.join()
        for thread in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread), before)
