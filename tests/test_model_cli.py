"""`mtbench model info|forward` and `mtbench bench model` on the CPU (small shapes)."""

import json
import re
import sys

import pytest
from typer.testing import CliRunner

from mtbench.bench.model import ModelBenchSettings, run_model_bench
from mtbench.cli import app, main

runner = CliRunner()


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mtbench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_model_info_large_reports_sizes_and_flops():
    result = runner.invoke(app, ["model", "info", "--preset", "large"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "75.21M" in result.output  # parameters
    assert "46,080 B" in result.output  # 15 layers x 2 x 768 x 2 bytes per static token
    assert "45.4 MiB" in result.output  # 1032 static tokens per user
    ratio = float(re.search(r"miss / hit FLOP ratio\s*│\s*([\d.]+)x", result.output).group(1))
    assert 4.0 < ratio < 5.0


def test_model_forward_prints_scores_and_exactness():
    result = runner.invoke(app, ["model", "forward", "--preset", "tiny", "--batch", "3", "--iters", "1"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "mean CTR" in result.output
    diffs = re.findall(r"max \|cached - full\| [^│]*│\s*([\d.e+-]+)", result.output)
    assert len(diffs) == 2 and all(float(d) < 1e-5 for d in diffs)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_bench_model_runs_on_cpu_and_passes_its_precision_check(dtype):
    settings = ModelBenchSettings(presets=("tiny",), batch=2, n_user=4, n_seq=40, n_rt=5, n_cand=6, dtype=dtype,
                                  device="cpu", iters=1, warmup=0)
    (row,) = run_model_bench(settings)
    assert row.precision_ok, row
    assert row.full_ms > 0 and row.cached_ms > 0 and row.flop_ratio > 1
    assert (row.plain_vs_fp32_err == 0) == (dtype == "fp32")


def test_bench_model_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "model", "--presets", "tiny", "--device", "cpu", "--dtype", "fp32",
                                 "--batch", "2", "--n-user", "4", "--n-seq", "20", "--n-rt", "2", "--n-cand", "3",
                                 "--iters", "1", "--warmup", "0", "--json", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "bench-model" and data["settings"]["presets"] == ["tiny"]
    assert [row["preset"] for row in data["rows"]] == ["tiny"] and data["rows"][0]["n_static"] == 24


@pytest.mark.parametrize(("args", "message"), [
    (["model", "info", "--preset", "huge"], "unknown model preset 'huge'"),
    (["model", "info", "--preset", "small", "--n-static", "5000"], "--n-static 5000 is outside"),
    (["model", "forward", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["bench", "model", "--presets", "tiny", "--device", "cpu", "--json", "/"], "is a directory"),
    (["bench", "model", "--presets", "tiny", "--device", "cpu", "--kernels", "magic"], "--kernels"),
])
def test_bad_options_exit_2_with_one_line(monkeypatch, capsys, args, message):
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert "error:" in err and message in err
    assert "Traceback" not in err
