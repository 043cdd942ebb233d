"""`mtbench plot` and `mtbench report` on real report directories, including bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_report_synthetic import compare_policies_result, replay_result
from typer.testing import CliRunner

from mtbench.cli import app, main
from mtbench.report import write_report
from mtbench.report.plots import PLOTS

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def report_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    rng = np.random.default_rng(11)
    made = {}
    for name, capacities in (("cp_a", [1, 2, 4]), ("cp_b", [2, 4, 8])):
        summary, records = compare_policies_result(rng, policies=["lru", "sieve", "opt"], capacities_gib=capacities)
        made[name] = write_report(root / name, summary, records, "compare-policies")
    for name, gpu in (("rp_a", 4), ("rp_b", 8)):
        summary, records = replay_result(rng, requests=300, gpu_gib=gpu)
        made[name] = write_report(root / name, summary, records, "replay")
    return made


def _invoke(*args: str) -> str:
    result = RUNNER.invoke(app, list(args), env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def test_plot_one_directory_writes_into_its_plots_folder(report_dirs: dict[str, Path]) -> None:
    target = report_dirs["rp_a"] / "plots"
    for png in target.glob("*.png"):
        png.unlink()
    output = _invoke("plot", str(report_dirs["rp_a"]))
    assert {p.name for p in target.glob("*.png")} == {"outcomes.png", "latency_cdf.png", "speedup.png",
                                                      "bytes_moved.png", "occupancy.png"}
    assert "hit_ratio_curve" in output and "skipped" in output


def test_plot_several_directories_overlaid(report_dirs: dict[str, Path], tmp_path: Path) -> None:
    output = _invoke("plot", *(str(report_dirs[n]) for n in ("cp_a", "cp_b", "rp_a")), "-o", str(tmp_path / "overlay"))
    assert {p.stem for p in (tmp_path / "overlay").glob("*.png")} == set(PLOTS)
    skipped = [line for line in output.splitlines() if "skipped" in line]
    assert not any(f" {name} " in line for line in skipped for name in PLOTS)  # only the serving plots


def test_report_prints_table_markdown_and_json(report_dirs: dict[str, Path]) -> None:
    directory = report_dirs["cp_a"]
    stored = json.loads((directory / "summary.json").read_text())
    assert json.loads(_invoke("report", str(directory), "--format", "json")) == stored
    markdown = _invoke("report", str(directory), "--format", "md")
    assert markdown == (directory / "summary.md").read_text()
    table = _invoke("report", str(directory))
    assert "Hit ratios and estimated cost" in table and stored["trace"]["sha256"] in table


def test_report_compares_two_directories(report_dirs: dict[str, Path]) -> None:
    a, b = report_dirs["cp_a"], report_dirs["cp_b"]
    comparison = json.loads(_invoke("report", str(a), str(b), "--format", "json"))
    rows_a = {(r["policy"], r["gpu_capacity"]): r for r in json.loads((a / "summary.json").read_text())["rows"]}
    rows_b = {(r["policy"], r["gpu_capacity"]): r for r in json.loads((b / "summary.json").read_text())["rows"]}
    matched = [row for row in comparison["rows"] if row["a"] and row["b"]]
    assert len(matched) == len(rows_a.keys() & rows_b.keys()) == 6
    for row in matched:
        key = (row["a"]["policy"], row["a"]["gpu_capacity"])
        assert row["delta"]["hit_ratio"] == pytest.approx(rows_b[key]["hit_ratio"] - rows_a[key]["hit_ratio"])
    assert sum(1 for row in comparison["rows"] if row["b"] is None) == 3
    assert "gpu_capacities" in comparison["config_differences"]
    table = _invoke("report", str(report_dirs["rp_a"]), str(report_dirs["rp_b"]))
    assert "tiered/hybrid/sync" in table and "p99_ms" in table and "delta %" in table
    markdown = _invoke("report", str(a), str(b), "--format", "md", "--all-fields")
    assert "only in A" in markdown and "gpu_evictions" in markdown


def test_bad_report_directories_give_one_line_errors(report_dirs: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    partial = tmp_path / "interrupted.partial"
    partial.mkdir()
    (partial / "INCOMPLETE").write_text("run interrupted (Ctrl-C)\n")
    cases = [
        (("report", str(tmp_path / "interrupted")), "incomplete"),
        (("report", str(partial)), "incomplete"),
        (("plot", str(tmp_path / "nowhere")), "no report directory"),
        (("report", str(report_dirs["cp_a"]), str(report_dirs["rp_a"])), "cannot compare"),
        (("report", *(str(p) for p in report_dirs.values())), "two to compare"),
    ]
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["mtbench", *args])
        with pytest.raises(SystemExit) as stopped:
            main()
        stderr = capsys.readouterr().err
        assert stopped.value.code == 2, (args, stderr)
        assert stderr.startswith("error:") and message in stderr
    process = subprocess.run([sys.executable, "-m", "mtbench", *cases[0][0]], capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and process.stderr.startswith("error:") and "Traceback" not in process.stderr
