"""The fp8 host tier wired end to end (CPU): entry sizes, the simulator, `mtbench replay --kv-dtype fp8`.

Host entries and PCIe bytes are sized in fp8 (kernels/fp8_rows_ref.py's rows), GPU entries in the pool
dtype, through the one sizer; a replay records the run as lossy and reports its verify errors and
top-10 agreement. (Manager-vs-simulator equality with fp8: tests/test_control.py.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtbench.cache.control import ControlPlane, TierSettings, run_batches
from mtbench.cache.pool import KVShape
from mtbench.cli import app
from mtbench.model import PRESET_NAMES, get_config
from mtbench.model.config import kv_bytes_per_token
from mtbench.replay.verify import top_k_agreement
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import Workload, control_config, request_batches, simulate
from test_replay import make_trace

CFG = get_config("tiny")


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_fp8_host_entries_take_the_fp8_row_bytes(preset: str) -> None:
    cfg = get_config(preset)
    rng = np.random.default_rng(len(preset))
    for dtype in (torch.bfloat16, torch.float32):
        shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, dtype, int(rng.choice([8, 32])))
        exact, fp8 = shape.sizer_for(None), shape.sizer_for("fp8")
        assert exact == shape.sizer and exact.host_token_bytes == exact.bytes_per_token
        assert fp8.bytes_per_token == shape.bytes_per_token  # GPU entries stay in the pool dtype
        assert fp8.host_token_bytes == kv_bytes_per_token(cfg, "fp8") == shape.host_bytes_per_token("fp8")
        n = rng.integers(1, 2000, 50)
        padded = -(-n // shape.page_tokens) * shape.page_tokens
        assert (fp8.entry_bytes(n, host=True) == padded * fp8.host_token_bytes).all()
        assert (fp8.entry_bytes(n) == exact.entry_bytes(n)).all()
        assert [fp8.host_size_of(int(k)) for k in n] == (padded * fp8.host_token_bytes).tolist()
        assert [fp8.moved_bytes(int(k)) for k in n] == (n * fp8.host_token_bytes).tolist()
    if cfg.head_dim >= 64:  # one scale byte per head of D codes: just over half of bf16
        assert 0.5 < kv_bytes_per_token(cfg, "fp8") / kv_bytes_per_token(cfg, "bf16") < 0.52


def _workload(seed: int, sizer) -> Workload:
    rng = np.random.default_rng(seed)
    n = 300
    user = rng.integers(0, 25, n)
    columns = {"ts": np.sort(rng.random(n) * 100), "user_id": user, "static_version": np.zeros(n, dtype=np.int64),
               "n_static": 5 + (user * 37) % 200, "n_rt": np.ones(n, dtype=np.int64), "n_cand": np.ones(n, dtype=np.int64)}
    return Workload.from_columns(columns, sizer)


@pytest.mark.parametrize("seed", range(3))
def test_simulator_sizes_host_entries_and_pcie_bytes_in_fp8(seed: int) -> None:
    shape = KVShape(CFG.n_layers, CFG.n_heads, CFG.head_dim, torch.bfloat16, 8)
    exact, fp8 = shape.sizer_for(None), shape.sizer_for("fp8")
    cost = CostModel.default(CFG, "bf16")
    gpu = 4 * exact.size_of(220)
    roomy = int(exact.entry_bytes(np.arange(1, 400)).sum())  # never evicts
    runs = {}
    for name, sizer in (("exact", exact), ("fp8", fp8)):
        workload = _workload(seed, sizer)
        geometry = shape.host_geometry("hybrid", None if sizer is exact else "fp8", roomy)
        runs[name] = simulate(workload, "lru", gpu, roomy, TierSettings(), cost, keep_outcomes=True,
                              host_geometry=geometry)[0]
    assert (runs["exact"].outcomes == runs["fp8"].outcomes).all() and runs["fp8"].host_hits > 0
    ratio = fp8.host_token_bytes / exact.bytes_per_token
    assert runs["fp8"].bytes_h2d == pytest.approx(runs["exact"].bytes_h2d * ratio, rel=1e-12)
    assert runs["fp8"].bytes_d2h == pytest.approx(runs["exact"].bytes_d2h * ratio, rel=1e-12)

    # A small host tier: it holds fp8 entries by their fp8 size, placed as fp8 rows.
    workload = _workload(seed, fp8)
    host = 6 * fp8.host_size_of(200)
    geometry = shape.host_geometry("zerocopy", "fp8", host)
    plane = ControlPlane(control_config(workload, "lru", gpu, host, TierSettings(), cost, geometry))

    def check(plan) -> None:
        assert plane.host.used == sum(fp8.host_size_of(t) for t in plane.host_tokens.values())
        rows = sum(geometry.alignment * -(-2 * t // geometry.alignment) * shape.layers for t in plane.host_tokens.values())
        assert plane.extents.used_total == rows

    run_batches(plane, request_batches(workload, 4), check)
    assert plane.stats.host_evictions > 0 and len(plane.host_tokens) > 6 * fp8.host_size_of(200) // exact.host_size_of(200)


def test_top_k_agreement_counts_requests_with_the_same_top_candidates() -> None:
    rng = np.random.default_rng(0)
    full = [torch.tensor(rng.random(int(n))) for n in rng.integers(1, 30, 40)]
    assert top_k_agreement(full, full) == 1.0
    reversed_order = [-scores for scores in full]
    expected = np.mean([scores.numel() <= 10 for scores in full])  # all candidates: the same set
    assert top_k_agreement(reversed_order, full) == pytest.approx(expected)


def _replay(tmp_path: Path, trace: Path, kv_dtype: str) -> tuple[dict, str, str]:
    page_bytes = 32 * kv_bytes_per_token(CFG, "bf16")
    out = tmp_path / f"report-{kv_dtype}"
    result = CliRunner().invoke(app, [
        "replay", str(trace), "--model", "tiny", "--device", "cpu", "--dtype", "bf16", "--kv-dtype", kv_dtype,
        "--gpu-cache", str(6 * page_bytes), "--host-cache", "4MiB", "--batch-size", "6", "--verify", "8",
        "--warmup", "6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text(), result.output


def test_fp8_replay_is_marked_lossy_moves_half_the_bytes_and_verifies(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "t.parquet", 11, requests=42, users=10)
    exact, exact_md, exact_out = _replay(tmp_path, trace, "bf16")
    fp8, fp8_md, fp8_out = _replay(tmp_path, trace, "fp8")
    row, base = fp8["rows"][0], exact["rows"][0]

    assert (fp8["config"]["kv_dtype"], fp8["config"]["lossy"], row["kv_dtype"], row["lossy"]) == ("fp8", True, "fp8", True)
    assert (exact["config"]["kv_dtype"], exact["config"]["lossy"], base["lossy"]) == ("bf16", False, False)
    assert "LOSSY" in fp8["note"] and "LOSSY" in fp8_md and "LOSSY" in fp8_out
    assert "LOSSY" not in exact.get("note", "") and "LOSSY" not in exact_md

    # A host tier that never evicts: the same outcomes, each copy in fp8 rows instead of bf16.
    assert [row[k] for k in ("gpu_hits", "host_hits", "misses")] == [base[k] for k in ("gpu_hits", "host_hits", "misses")]
    assert row["host_hits"] > 0
    ratio = kv_bytes_per_token(CFG, "fp8") / kv_bytes_per_token(CFG, "bf16")
    assert row["bytes_h2d"] == pytest.approx(base["bytes_h2d"] * ratio) and 0.45 < ratio < 0.55
    assert row["bytes_d2h"] == pytest.approx(base["bytes_d2h"] * ratio)

    assert row["verify_lossy"] is True and row["verify_checked"] == 8
    assert 0.0 <= row["verify_top10_agreement"] <= 1.0
    for error in (row["verify_max_rel_err"], row["verify_model_rel_err"]):
        assert math.isfinite(error) and 0.0 <= error < 0.1
    assert "verify (lossy fp8 host KV)" in fp8_out and "BROKEN" not in fp8_out
    assert base["verify_lossy"] is False and base["verify_top10_agreement"] is None


def test_fp8_verify_samples_host_hits_first(tmp_path: Path) -> None:
    """Every verified request of an fp8 run read its prefix through the fp8 copy when enough host hits exist."""
    from mtbench.cache.manager import CacheConfig
    from mtbench.model import MTGR
    from mtbench.replay.engine import ReplayOptions, replay_run
    from mtbench.trace import open_trace

    trace = open_trace(make_trace(tmp_path / "t.parquet", 12, requests=42, users=10), CFG.limits())
    torch.manual_seed(0)
    model = MTGR(CFG).eval()
    page_bytes = 32 * kv_bytes_per_token(CFG, "fp32")
    config = CacheConfig(mode="tiered", gpu_capacity=4 * page_bytes, host_capacity=1 << 20, host_kv="fp8")
    result = replay_run(model, trace, config, ReplayOptions(batch_size=6, verify_sample=4), "tiered/hybrid")
    assert result.row["host_hits"] >= 4 and result.row["lossy"] is True
    assert len(result.samples) == 4 and {s.outcome for s in result.samples.values()} == {"host_hit"}
