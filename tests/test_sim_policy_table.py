"""The policy table of reports/POLICIES.md (`mtbench bench policies`): rows, markdown and the gap row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mtbench.cli import app
from mtbench.errors import MtbenchError
from mtbench.sim.costmodel import CostModel
from mtbench.sim.policy_table import TableCase, best_classic_gap, case_markdown, run_case
from mtbench.sim.simulator import Workload, simulate


@pytest.mark.parametrize("seed", range(3))
def test_rows_markdown_and_gap_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    keys = np.minimum(rng.pareto(0.8, size=3000).astype(np.int64), 400)
    case = TableCase("random keys", Workload.from_keys(keys), (20, 60, 150), CostModel(1e-3, 1e-3))
    policies = ("lru", "s3fifo", "mtserve", "opt")
    rows = run_case(case, policies)
    hits = {(r["policy"], r["gpu_capacity"]): r["gpu_hits"] for r in rows}
    for (policy, capacity), count in hits.items():
        assert count == simulate(case.workload, policy, capacity)[0].gpu_hits
    gap = best_classic_gap(rows, "hit_ratio", case.capacities)
    n = case.workload.n_requests
    assert gap == pytest.approx([(hits["mtserve", c] - max(hits["lru", c], hits["s3fifo", c])) / n
                                 for c in case.capacities])
    text = case_markdown(case, rows)
    assert text.count("\n| ") == len(policies) + 3  # header, separator, one row per policy, the gap row
    assert f"| opt | {hits['opt', 20] / n:.4f} |" in text
    assert best_classic_gap([r for r in rows if r["policy"] != "mtserve"], "hit_ratio", case.capacities) is None


def test_cli_refuses_missing_data_and_unwritable_output(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["bench", "policies", "--data", str(tmp_path / "nowhere")])
    assert isinstance(missing.exception, MtbenchError) and "no such file" in str(missing.exception)
    unwritable = CliRunner().invoke(app, ["bench", "policies", "-o", str(tmp_path / "no" / "table.md")])
    assert isinstance(unwritable.exception, MtbenchError) and "cannot write" in str(unwritable.exception)
