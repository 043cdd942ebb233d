"""The simulator against the H200: the serving runs of BENCHMARKS.md section 16 (reports/serving-h200/),
priced again by today's simulator from their own calibration replays (`mtbench.serve.reprice`). This
pins what the README claims: with the server pinned to two CPUs, the simulated p99 is within 15% of the
measured median run at every measured rate below 80% of the simulated saturation."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtbench.cli import app
from mtbench.serve.reprice import reprice

RUNS = Path(__file__).resolve().parents[1] / "reports" / "serving-h200"
PINNED = ("call-b-none", "call-c-none", "call-c-gpu", "call-c-tiered", "call-d-tiered")


@pytest.fixture(scope="module")
def synthetic_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bench's step 1: the trace those runs replayed (its first 6,000 requests)."""
    path = tmp_path_factory.mktemp("h200") / "synth.parquet"
    result = CliRunner().invoke(app, ["trace", "synth", "--users", "400", "--requests", "60000", "--duration", "1d",
                                      "--model", "large", "--user-tokens", "32", "--seed", "7",
                                      "--history-dist", "uniform:800:1000", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("run", PINNED)
def test_the_simulated_p99_is_within_15_percent_below_80_percent_load(run: str, synthetic_trace: Path) -> None:
    priced = reprice(RUNS / run, synthetic_trace)
    below = priced.points[priced.points["load"] < 0.8]
    assert len(below) >= 3 and below["measured_p99_ms"].notna().all()
    gaps = (below["refit_p99_ms"] - below["measured_p99_ms"]).abs() / below["measured_p99_ms"]
    assert (gaps <= 0.15).all(), below.assign(gap=gaps).round(3).to_string()
    assert (priced.max_qps["refit"] > 0).all()
