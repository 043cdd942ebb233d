"""Open-loop replay on the CPU (tiny model): requests arrive in real time, the dynamic batcher forms
batches, latency runs from arrival to scores; bad serving options exit 2 without a report."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

import mtbench.replay.engine as engine
from mtbench.cli import app
from mtbench.errors import MtbenchError
from mtbench.model import get_config

CFG = get_config("tiny")
REPO = Path(__file__).resolve().parents[1]


def make_trace(path: Path, seed: int, requests: int = 48, users: int = 10, equal_ts: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, requests).astype(np.int64)
    pd.DataFrame({
        "ts": np.full(requests, 5.0) if equal_ts else np.sort(rng.random(requests) * 20.0),
        "user_id": user, "static_version": np.zeros(requests, dtype=np.int64),
        "n_static": (CFG.n_user_tokens + 3 + (user * 7) % 40).astype(np.int64),
        "n_rt": rng.integers(0, 6, requests).astype(np.int64), "n_cand": rng.integers(1, 5, requests).astype(np.int64),
    }).to_parquet(path, index=False)
    return path


def small_open_loop_replay(trace: Path, out: Path) -> Result:
    """48 requests, 8 of them warm-up, Poisson at 200/s through the GPU tier, batches of up to 4."""
    return CliRunner().invoke(app, [
        "replay", str(trace), "--model", "tiny", "--device", "cpu", "--dtype", "fp32", "--cache", "gpu",
        "--gpu-cache", "64KiB", "--max-batch", "4", "--max-wait-ms", "1", "--warmup", "8",
        "--arrivals", "poisson", "--rate", "200", "-o", str(out)])


def test_open_loop_replay_end_to_end(tmp_path: Path) -> None:
    arrivals = ["--arrivals", "poisson", "--rate", "150"]
    trace = make_trace(tmp_path / "t.parquet", 2)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "replay", str(trace), "--model", "tiny", "--device", "cpu", "--dtype", "fp32", "--cache", "tiered",
        "--gpu-cache", "64KiB", "--host-cache", "1MiB", "--max-batch", "4", "--max-wait-ms", "3", "--slo-ms", "40",
        *arrivals, "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    row = summary["rows"][0]
    assert summary["config"]["arrivals"] == arrivals[1] and summary["config"]["slo_ms"] == 40
    for field in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "slo_attainment", "goodput", "overloaded", "queue_max"):
        assert field in row
    records = pd.read_parquet(out / "records.parquet").sort_values("request_index")
    assert len(records) == 48
    arrival, start, finish = (records[c].to_numpy() for c in ("arrival_s", "start_s", "finish_s"))
    assert np.all(np.diff(arrival) >= 0) and np.all(np.diff(start) >= 0)  # FIFO: served in arrival order
    assert np.all(start >= arrival - 1e-9)  # a batch never starts before its requests arrive
    assert np.all(records["latency_ms"] >= records["service_ms"] - 1e-6)  # latency covers queueing + service
    assert np.all(finish > arrival)
    sizes = records.groupby("batch_index").size()
    assert sizes.max() <= 4 and sizes.sum() == 48
    within = float(np.mean(records["latency_ms"] <= 40))
    assert row["slo_attainment"] == pytest.approx(within)


def test_bad_serving_options_exit_2_without_a_report(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "t.parquet", 1, requests=12)
    flat = make_trace(tmp_path / "flat.parquet", 1, requests=12, equal_ts=True)
    cases = [
        ([str(trace), "--arrivals", "poisson", "--rate", "0"], "--rate"),
        ([str(trace), "--arrivals", "trace", "--speed", "-2"], "--speed"),
        ([str(trace), "--arrivals", "poisson", "--rate", "5", "--slo-ms", "0"], "--slo-ms"),
        ([str(flat), "--arrivals", "trace"], "same ts"),
    ]
    for index, (args, needle) in enumerate(cases):
        out = tmp_path / f"out{index}"
        result = CliRunner().invoke(app, ["replay", *args, "--model", "tiny", "--device", "cpu", "-o", str(out)])
        assert isinstance(result.exception, MtbenchError) and needle in str(result.exception), result.output
        assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    # through the real entry point: one line on stderr, exit code 2
    done = subprocess.run([sys.executable, "-m", "mtbench", "replay", str(flat), "--model", "tiny", "--arrivals", "trace"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "same ts" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("seed", range(3))
def test_driver_serves_the_warmup_before_starting_the_clock(seed: int) -> None:
    """Warm-up batches are full (the last may be partial), never cross into the timed requests, all finish
    before the clock starts (time 0), and then the timed requests are batched from their own arrivals."""
    import time

    from mtbench.replay.batching import BATCH_COLUMNS
    from mtbench.serve.batcher import BatcherConfig
    from mtbench.serve.openloop import OpenLoopDriver

    rng = np.random.default_rng(seed)
    n, warmup, size = 40, int(rng.integers(1, 20)), 4
    columns = {name: rng.integers(1, 9, n).astype(np.int64) for name in BATCH_COLUMNS}
    driver = OpenLoopDriver(columns, np.zeros(n), BatcherConfig(max_batch=size, max_wait_ms=0.0), 50.0, "test",
                            warmup=warmup)
    served: list[tuple[int, int, bool]] = []
    batch, early = driver.after(None, None), False
    while batch is not None:
        served.append((int(batch.request_index[0]), int(batch.request_index[-1]) + 1, early))
        early = driver.ahead() is not None
        batch = driver.after(batch, time.perf_counter())
    cold = [(s, e) for s, e, _ in served if s < warmup]
    expected = [(s, min(s + size, warmup)) for s in range(0, warmup, size)]
    expected += [(s, min(s + size, n)) for s in range(warmup, n, size)]
    assert [(s, e) for s, e, _ in served] == expected
    assert cold and all(e - s == size for s, e in cold[:-1])
    assert [flag for *_, flag in served] == [False] + [e - s == size and s != warmup for s, e, _ in served[1:]]
    assert np.all(driver.finish_s[:warmup] <= 0) and np.all(driver.start_s[warmup:] >= 0)
    assert np.all(driver.arrival_s[:warmup] <= driver.start_s[:warmup]) and np.all(driver.arrival_s[warmup:] == 0)


def test_the_timed_phase_starts_before_its_first_batch_is_handed_out(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay snapshots the warm-up's statistics (and waits for the device) when the last warm-up
    batch is done, so that bookkeeping never counts in the first timed batch's time (start to finish)."""
    slow_ms = 300.0
    real = engine._device_mallocs

    def slow_snapshot(device):
        time.sleep(slow_ms / 1e3)
        return real(device)

    monkeypatch.setattr(engine, "_device_mallocs", slow_snapshot)
    out = tmp_path / "report"
    result = small_open_loop_replay(make_trace(tmp_path / "t.parquet", 5), out)
    assert result.exit_code == 0, result.output
    records = pd.read_parquet(out / "records.parquet")
    timed = records[~records["warmup"]]
    first = timed[timed["batch_index"] == timed["batch_index"].min()]
    assert len(timed) == 40 and ((first["finish_s"] - first["start_s"]) * 1e3 < slow_ms).all()


def test_the_timed_seconds_start_when_the_feed_starts_its_clock(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The load generator's full garbage collection at the warm-up's end (its clock starts after it) is
    not in the run's measured seconds: they span the timed batches, so a saturated run's requests/s is
    the server's (on the H200 a 120-185 ms collection had cut it by 5-18%)."""
    slow_ms = 300.0
    real = gc.collect

    def slow_collect(*args):
        time.sleep(slow_ms / 1e3)
        return real(*args)

    monkeypatch.setattr(gc, "collect", slow_collect)
    out = tmp_path / "report"
    result = small_open_loop_replay(make_trace(tmp_path / "t.parquet", 6), out)
    assert result.exit_code == 0, result.output
    row = json.loads((out / "summary.json").read_text())["rows"][0]
    timed = pd.read_parquet(out / "records.parquet").query("not warmup")
    span_ms = (timed["finish_s"].max() - timed["start_s"].min()) * 1e3  # the timed batches, on the feed's clock
    assert span_ms <= row["measured_ms"] < span_ms + slow_ms / 2


def test_load_generator_quiets_the_interpreter_only_while_it_runs() -> None:
    """The collector is off while requests are released; the switch interval is never touched (a short
    one makes each release a forced GIL hand-over inside the server's host work)."""
    from mtbench.serve.openloop import LoadGenerator

    switch_s = sys.getswitchinterval()
    assert gc.isenabled()
    generator = LoadGenerator(np.array([0.0, 0.002, 0.004]))
    t0 = generator.start()
    assert t0 == generator.t0 and not gc.isenabled() and sys.getswitchinterval() == switch_s
    generator.wait(3, 0.0)
    generator.stop()
    generator.stop()  # idempotent
    assert generator.released == 3 and (generator.lag_s >= 0).all()
    assert gc.isenabled() and sys.getswitchinterval() == switch_s and gc.get_freeze_count() == 0


def test_a_run_that_fails_in_its_timed_phase_restores_the_interpreter(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mtbench.serve.openloop import OpenLoopDriver

    real_after = OpenLoopDriver.after

    def failing_after(self, done, end):
        if self.generator.started and self.head > self.warmup + 4:
            raise MtbenchError("device lost")
        return real_after(self, done, end)

    monkeypatch.setattr(OpenLoopDriver, "after", failing_after)
    switch_s = sys.getswitchinterval()
    out = tmp_path / "report"
    result = small_open_loop_replay(make_trace(tmp_path / "t.parquet", 6), out)
    assert isinstance(result.exception, MtbenchError) and "device lost" in str(result.exception)
    assert gc.isenabled() and sys.getswitchinterval() == switch_s and gc.get_freeze_count() == 0
    assert not out.exists()


@pytest.mark.parametrize("device,env,expected", [("cuda", None, [1]), ("cuda", "4", []), ("cpu", None, [])])
def test_a_cuda_server_keeps_torch_cpu_pool_to_one_thread(monkeypatch: pytest.MonkeyPatch, device: str,
                                                          env: str | None, expected: list[int]) -> None:
    """On CUDA the serving process cuts torch's CPU pool to one thread (its spinning threads slowed the
    serving thread on the H200 host), unless OMP_NUM_THREADS asks otherwise; the CPU keeps its pool."""
    import torch

    from mtbench.device import serve_from_one_host_thread

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    serve_from_one_host_thread(torch.device(device))
    assert calls == expected
