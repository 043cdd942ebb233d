"""Bad input, command by command: exit code 2, exactly one line on stderr, nothing on stdout (no progress
drawn first) and nothing left where the output would have gone (no file, no hidden temporary file, no
report directory, no DIR.partial). The CLI runs in this process (`mtbench.cli.main`, argv patched)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtbench.cli import main
from mtbench.device import available_host_memory
from mtbench.report import write_report
from test_report_synthetic import compare_policies_result, replay_result

ROOT = Path(__file__).resolve().parents[1]
SYNTH = str(ROOT / "traces" / "synth-small.parquet")
MOVIELENS = str(ROOT / "traces" / "movielens-small.parquet")
REPLAY = ["--model", "mini", "--device", "cpu", "--gpu-cache", "8MiB", "--host-cache", "64MiB"]


def _unwritable(tmp: Path) -> Path:
    """A directory this process cannot create files in (root ignores permission bits: use /sys)."""
    if os.geteuid() == 0:
        return Path("/sys/mtbench-no-such-dir")
    locked = tmp / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)
    return locked


def _trace(tmp: Path, name: str, **changes: Callable[[pd.DataFrame], pd.Series]) -> str:
    """A small valid trace (the synthetic sample's first 200 rows) with some columns replaced."""
    frame = pd.read_parquet(SYNTH).iloc[:200].reset_index(drop=True)
    frame = frame.assign(**{column: change(frame) for column, change in changes.items()})
    path = tmp / name
    frame.to_parquet(path, index=False)
    return str(path)


TEMPLATES: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_templates(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One complete report directory of each kind, written once and copied by `_report`."""
    root, rng = tmp_path_factory.mktemp("templates"), np.random.default_rng(3)
    TEMPLATES["compare-policies"] = write_report(root / "cp", *compare_policies_result(rng, capacities_gib=[1, 2]),
                                                 "compare-policies")
    TEMPLATES["replay"] = write_report(root / "rp", *replay_result(rng, requests=100, gpu_gib=4), "replay")


def _report(tmp: Path, kind: str) -> Path:
    """A complete report directory of `kind` at tmp/existing-KIND."""
    return Path(shutil.copytree(TEMPLATES[kind], tmp / f"existing-{kind}"))


def _movielens_csv(tmp: Path, lines: list[str]) -> str:
    path = tmp / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(line + "\n" for line in lines))
    return str(path)


@dataclass
class Case:
    """`args(tmp)` is the command line; `out(tmp)` where its output would go; `message` a fragment of the line."""

    name: str
    args: Callable[[Path], list[str]]
    message: str
    out: Callable[[Path], Path] = lambda tmp: tmp / "out"


CASES = [
    # the earlier bad-input cases
    Case("malformed trace", lambda t: ["replay", str(ROOT / "README.md"), *REPLAY, "-o", str(t / "out")], "not a parquet file"),
    Case("unknown policy", lambda t: ["compare-policies", SYNTH, "--policies", "lru,belady2", "-o", str(t / "out")],
         "unknown policy 'belady2'"),
    Case("bad size", lambda t: ["compare-policies", SYNTH, "--gpu-cache", "4XB", "-o", str(t / "out")], "cannot read '4XB'"),
    Case("too-small capacity", lambda t: ["replay", SYNTH, *REPLAY[:4], "--gpu-cache", "1KiB", "-o", str(t / "out")],
         "cannot hold one entry"),
    # -o an existing directory where a file goes
    Case("trace import -o DIR", lambda t: ["trace", "import", "movielens", str(ROOT / "traces" / "movielens-ratings-sample.csv"),
                                           "-o", str(t)], "is a directory", out=lambda t: t / "ml.parquet"),
    Case("trace synth -o DIR", lambda t: ["trace", "synth", "--users", "10", "--requests", "100", "--duration", "1d",
                                          "-o", str(t)], "is a directory", out=lambda t: t / "synth.parquet"),
    Case("trace fit -o DIR", lambda t: ["trace", "fit", SYNTH, "-o", str(t)], "is a directory", out=lambda t: t / "profile.json"),
    # -o in a directory without write permission, refused before the work
    *[Case(f"{name} -o unwritable", (lambda make: lambda t: make(_unwritable(t) / "out"))(make), "cannot write in",
           out=lambda t: _unwritable(t) / "out") for name, make in (
        ("compare-policies", lambda o: ["compare-policies", SYNTH, "--gpu-cache", "1GiB", "--host-cache", "8GiB", "-o", str(o)]),
        ("replay", lambda o: ["replay", SYNTH, *REPLAY, "-o", str(o)]),
        ("trace import", lambda o: ["trace", "import", "movielens", str(ROOT / "traces" / "movielens-ratings-sample.csv"), "-o", str(o)]),
        ("trace synth", lambda o: ["trace", "synth", "--users", "10", "--requests", "100", "--duration", "1d", "-o", str(o)]),
        ("trace fit", lambda o: ["trace", "fit", SYNTH, "-o", str(o)]),
        ("calibrate", lambda o: ["calibrate", "--model", "tiny", "--device", "cpu", "-o", str(o)]),
    )],
    Case("plot -o unwritable", lambda t: ["plot", str(_report(t, "replay")), "-o", str(_unwritable(t) / "out")],
         "cannot write in", out=lambda t: _unwritable(t) / "out"),
    # report directories that are not
    Case("report . (not a report)", lambda t: ["report", "."], "not a report directory"),
    Case("plot . (not a report)", lambda t: ["plot", "."], "not a report directory"),
    Case("plot corrupt records", lambda t: ["plot", str(_corrupt_records(t))], "records.parquet: unreadable or corrupt",
         out=lambda t: t / "existing-replay" / "plots" / "outcomes.png"),
    # weak checks, now refused before any progress line
    Case("--batch-size 0", lambda t: ["replay", SYNTH, *REPLAY, "--batch-size", "0", "-o", str(t / "out")], "--batch-size must be >= 1"),
    Case("--window -1", lambda t: ["replay", SYNTH, *REPLAY, "--window", "-1", "-o", str(t / "out")], "--window must be >= 0"),
    Case("replay --max-requests 0", lambda t: ["replay", SYNTH, *REPLAY, "--max-requests", "0", "-o", str(t / "out")],
         "--max-requests must be >= 1"),
    Case("compare-policies --max-requests 0", lambda t: ["compare-policies", SYNTH, "--max-requests", "0", "-o", str(t / "out")],
         "--max-requests must be >= 1"),
    Case("warm-up covers every request", lambda t: ["replay", SYNTH, *REPLAY, "--max-requests", "32", "--warmup", "32",
                                                    "-o", str(t / "out")], "covers all 32 replayed requests"),
    Case("unsorted trace (replay)", lambda t: ["replay", _trace(t, "unsorted.parquet", ts=lambda f: f["ts"][::-1].to_numpy()),
                                               *REPLAY, "-o", str(t / "out")], "pass --sort"),
    Case("unsorted trace (compare-policies)", lambda t: ["compare-policies", _trace(t, "unsorted.parquet", ts=lambda f: f["ts"][::-1].to_numpy()),
                                                         "-o", str(t / "out")], "pass --sort"),
    Case("-o an existing report (replay over compare-policies)",
         lambda t: ["replay", SYNTH, *REPLAY, "-o", str(_report(t, "compare-policies"))], "pass --force",
         out=lambda t: t / "existing-compare-policies" / "INCOMPLETE"),
    Case("-o an existing report (compare-policies)",
         lambda t: ["compare-policies", SYNTH, "-o", str(_report(t, "compare-policies"))], "pass --force",
         out=lambda t: t / "existing-compare-policies.partial"),
    Case("NaN in n_rt", lambda t: ["replay", _trace(t, "nan.parquet", n_rt=lambda f: f["n_rt"].astype(float).where(f.index != 3)),
                                   *REPLAY, "-o", str(t / "out")], "column 'n_rt', row 3: is null/NaN"),
    Case("host cache beyond memory", lambda t: ["replay", SYNTH, *REPLAY[:6], "--host-cache", str(2 * (available_host_memory() or 1 << 50)),
                                                "-o", str(t / "out")], "does not fit"),
    Case("date before 1970", lambda t: ["trace", "import", "movielens", _movielens_csv(t, ["1,10,4.0,964982703", "1,11,3.0,-86400"]),
                                        "-o", str(t / "out")], "line 3: a time before 1970"),
    Case("replay --kv-dtype fp4", lambda t: ["replay", SYNTH, *REPLAY, "--kv-dtype", "fp4", "-o", str(t / "out")],
         "--kv-dtype 'fp4'"),
    Case("replay --kv-dtype fp8 --layout paged", lambda t: ["replay", SYNTH, *REPLAY, "--kv-dtype", "fp8", "--layout",
                                                            "paged", "-o", str(t / "out")], "--layout paged has no fp8"),
    Case("replay --kv-dtype fp8 --cache gpu", lambda t: ["replay", SYNTH, *REPLAY, "--kv-dtype", "fp8", "--cache", "gpu",
                                                         "-o", str(t / "out")], "needs --cache tiered"),
    Case("compare-policies --kv-dtype fp4", lambda t: ["compare-policies", SYNTH, "--kv-dtype", "fp4", "-o",
                                                       str(t / "out")], "--kv-dtype 'fp4'"),
]


def _corrupt_records(tmp: Path) -> Path:
    report = _report(tmp, "replay")
    records = report / "records.parquet"
    records.write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    for png in (report / "plots").glob("*.png"):
        png.unlink()
    return report


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gives_one_line_and_exit_2(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = case.args(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(sys, "argv", ["mtbench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, captured.err
    assert len(lines) == 1 and case.message in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    out = case.out(tmp_path)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not list(work.iterdir())
    hidden = [p.name for p in out.parent.glob(".*")] if out.parent.is_dir() and out.parent != Path("/sys") else []
    assert not hidden, hidden


def _run(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["mtbench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


def test_bench_kernels_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = _run(monkeypatch, "bench", "kernels")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "CUDA GPU" in err


def test_a_report_directory_is_read_from_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    report = _report(tmp_path, "replay")
    monkeypatch.chdir(report)
    assert _run(monkeypatch, "report", ".", "--format", "json") == 0
    assert '"kind": "replay"' in capsys.readouterr().out


def test_force_replaces_an_existing_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    target = _report(tmp_path, "replay")
    assert _run(monkeypatch, "compare-policies", SYNTH, "--policies", "lru", "--gpu-cache", "1GiB", "--host-cache", "0",
                "--max-requests", "2000", "--workers", "1", "-o", str(target), "--force") == 0
    assert '"kind": "compare-policies"' in (target / "summary.json").read_text()


def test_drop_invalid_imports_the_rest_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ratings = _movielens_csv(tmp_path, ["1,10,4.0,964982703", "1,11,3.0,-86400", "2,12,5.0,not-a-time", "2,13,1.0,964990000"])
    out = tmp_path / "ml.parquet"
    assert _run(monkeypatch, "trace", "import", "movielens", ratings, "--drop-invalid", "-o", str(out)) == 0
    assert pd.read_parquet(out)["item_id"].tolist() == [10, 13]
    assert "invalid rows dropped" in capsys.readouterr().out


@pytest.mark.parametrize("command", [
    ["capacity", SYNTH, "--model", "mini", "--dtype", "fp32", "--cache", "none", "--gpu-cache", "64MiB",
     "--host-cache", "1GiB", "--max-requests", "300", "--slo-ms", "50"],
    ["fleet", SYNTH, "--replicas", "1", "--router", "round-robin", "--gpu-cache", "256MiB", "--host-cache", "1GiB",
     "--max-requests", "300", "--workers", "1"],
], ids=["capacity", "fleet"])
def test_capacity_and_fleet_replace_a_report_only_with_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    target = _report(tmp_path, "replay")
    assert _run(monkeypatch, *command, "-o", str(target)) == 2
    assert "pass --force" in capsys.readouterr().err
    assert '"kind": "replay"' in (target / "summary.json").read_text()
    assert _run(monkeypatch, *command, "-o", str(target), "--force") == 0
    assert f'"kind": "{command[0]}"' in (target / "summary.json").read_text()
