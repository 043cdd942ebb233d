"""`bench refresh` / `mtbench.sim.refresh`: hit ratio and speedup against the feature-refresh period."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtbench.cli import app
from mtbench.errors import MtbenchError
from mtbench.model import get_config
from mtbench.sim.costmodel import CostModel
from mtbench.sim.refresh import RefreshSetup, refresh_rows
from mtbench.sim.simulator import TierSettings, Workload, simulate
from mtbench.sim.sizes import EntrySizer
from mtbench.trace.reversion import reversion

MOVIELENS = Path(__file__).resolve().parents[1] / "traces" / "movielens-small.parquet"
PERIODS = [("1h", 3600.0), ("1d", 86400.0), ("7d", 7 * 86400.0), ("never", None)]


def _slice(rows: int = 4000) -> dict[str, np.ndarray]:
    frame = pd.read_parquet(MOVIELENS).iloc[:rows]
    return {c: frame[c].to_numpy() for c in ("ts", "user_id", "static_version", "n_static", "n_rt", "n_cand")}


def _setup(policy: str = "lru", gpu: int = 256 << 20, host: int = 4 << 30) -> RefreshSetup:
    cfg = get_config("large")
    limits = cfg.limits()
    return RefreshSetup(policy, gpu, host, EntrySizer.for_model("large", "bf16"), CostModel.default(cfg, "bf16"),
                        limits.max_static, limits.max_rt)


def test_rows_are_the_simulator_on_the_reversioned_trace() -> None:
    columns, setup = _slice(), _setup()
    rows = refresh_rows(columns, PERIODS, setup)
    assert [(r["period"], r["history"]) for r in rows] == [(p, h) for p, _ in PERIODS for h in ("replace", "causal")]
    keys = [r["keys"] for r in rows[::2]]
    assert keys == sorted(keys, reverse=True) and keys[-1] == np.unique(columns["user_id"]).shape[0]
    for row, (label, period) in zip(rows[1::2], PERIODS):  # the causal rows, checked against a direct run
        w = Workload.from_columns(reversion(columns, period, "causal", setup.max_static, setup.max_rt), setup.sizer)
        result, _ = simulate(w, "lru", setup.gpu_capacity, setup.host_capacity, TierSettings(append=True), setup.cost,
                             1.0 / setup.sizer.bytes_per_token)
        assert (row["gpu_hits"], row["host_hits"], row["misses"], row["stale"]) == \
            (result.gpu_hits, result.host_hits, result.misses, result.stale), label
    for row in rows:
        assert row["est_speedup"] == pytest.approx(row["baseline_ms_per_request"] / row["est_ms_per_request"])


def test_cli_prints_the_table_and_writes_the_plot(tmp_path: Path) -> None:
    trace = tmp_path / "ml.parquet"
    pd.read_parquet(MOVIELENS).iloc[:3000].to_parquet(trace, index=False)
    plot = tmp_path / "refresh.png"
    done = CliRunner().invoke(app, ["bench", "refresh", str(trace), "--periods", "1d,never", "--policy", "lru",
                                    "--gpu-cache", "256MiB", "-o", str(plot)])
    assert done.exit_code == 0, (done.output, done.exception)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "causal" in done.output and "never" in done.output
    for bad in (["--periods", "1d,0"], ["--policy", "lru,arc"], ["--gpu-cache", "1MiB"]):
        failed = CliRunner().invoke(app, ["bench", "refresh", str(trace), *bad, "-o", str(tmp_path / "bad.png")])
        assert isinstance(failed.exception, MtbenchError), bad
        assert bad[0] in str(failed.exception) and not (tmp_path / "bad.png").exists()
