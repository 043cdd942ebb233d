"""Trace loader: every validation error (one line, file/column/row), sorting, streaming, round trips."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtbench.cli import main
from mtbench.errors import MtbenchError
from mtbench.trace import REQUIRED_COLUMNS, TraceLimits, open_trace
from mtbench.trace.writer import TraceWriter, write_trace


def random_trace(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    return {
        "ts": np.sort(rng.uniform(0, 1e5, rows)),
        "user_id": rng.integers(0, 50, rows),
        "static_version": rng.integers(0, 3, rows),
        "n_static": rng.integers(1, 1033, rows),
        "n_rt": rng.integers(0, 101, rows),
        "n_cand": rng.integers(1, 200, rows),
        "item_id": rng.integers(0, 10**9, rows),
    }


def write_frame(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_parquet(path, index=False)
    return path


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["mtbench", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0)


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_keeps_values_dtypes_and_optional_columns(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    columns = random_trace(rng, int(rng.integers(1, 5000)))
    path = write_trace(columns, tmp_path / "t.parquet")
    trace = open_trace(path)
    assert trace.num_rows == columns["ts"].shape[0]
    frame = trace.read()
    assert list(frame.columns) == [*REQUIRED_COLUMNS, "item_id"]
    for name, values in columns.items():
        np.testing.assert_array_equal(frame[name].to_numpy(), values)
    streamed = pd.concat(list(trace.iter_frames(batch_rows=int(rng.integers(1, 700)))), ignore_index=True)
    pd.testing.assert_frame_equal(streamed, frame)
    arrays = trace.arrays(["user_id", "ts"])
    np.testing.assert_array_equal(arrays["user_id"], columns["user_id"])
    assert arrays["ts"].dtype == np.float64 and arrays["user_id"].dtype == np.int64
    fingerprint = trace.fingerprint()
    assert fingerprint["rows"] == trace.num_rows and len(fingerprint["sha256"]) == 64


def test_narrow_integer_types_are_read_as_int64(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    columns = random_trace(rng, 100)
    table = pa.table({name: pa.array(values.astype(np.int32 if name != "ts" else np.float32)) for name, values in columns.items()})
    pq.write_table(table, tmp_path / "narrow.parquet")
    frame = open_trace(tmp_path / "narrow.parquet").read()
    assert all(frame[c].dtype == np.int64 for c in REQUIRED_COLUMNS[1:]) and frame["ts"].dtype == np.float64


def bad_cases() -> list[tuple[str, object, str]]:
    """(name, mutation of a valid frame, expected fragment of the message)."""
    return [
        ("missing", lambda f: f.drop(columns=["n_rt"]), "column 'n_rt' is missing"),
        ("dtype", lambda f: f.assign(user_id=f["user_id"].astype(str)), "column 'user_id' has dtype"),
        ("fraction", lambda f: f.assign(n_cand=f["n_cand"].astype(float).where(f.index != 6, 2.5)), "column 'n_cand', row 6: value 2.5 is not an integer"),
        ("nan_int", lambda f: f.assign(n_rt=f["n_rt"].astype(float).where(f.index != 8, np.nan)), "column 'n_rt', row 8: is null/NaN"),
        ("nan", lambda f: f.assign(ts=f["ts"].where(f.index != 7, np.nan)), "column 'ts', row 7: is null/NaN"),
        ("null", lambda f: f.assign(n_static=f["n_static"].astype("Int64").mask(f.index == 9)), "column 'n_static', row 9: is null/NaN"),
        ("negative_len", lambda f: f.assign(n_rt=f["n_rt"].where(f.index != 11, -3)), "column 'n_rt', row 11: value -3 is below"),
        ("zero_cand", lambda f: f.assign(n_cand=f["n_cand"].where(f.index != 4, 0)), "column 'n_cand', row 4: value 0 is below"),
        ("negative_ts", lambda f: f.assign(ts=f["ts"] - f["ts"].iloc[5] - 1), "column 'ts', row 0: negative time"),
        ("unsorted", lambda f: f.assign(ts=f["ts"].where(f.index != 13, 0.0)), "column 'ts', row 13: not sorted"),
        ("too_long", lambda f: f.assign(n_static=f["n_static"].where(f.index != 15, 1033)), "column 'n_static', row 15: value 1033 exceeds the model limit 1032"),
        ("too_many_rt", lambda f: f.assign(n_rt=f["n_rt"].where(f.index != 16, 101)), "column 'n_rt', row 16: value 101 exceeds"),
        ("empty", lambda f: f.iloc[:0], "trace has no rows"),
    ]


@pytest.mark.parametrize("name,mutate,message", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_every_validation_error_names_file_column_and_row(tmp_path: Path, name: str, mutate, message: str) -> None:
    frame = pd.DataFrame(random_trace(np.random.default_rng(0), 40))
    frame["ts"] = frame["ts"] + 10.0
    path = write_frame(tmp_path / f"{name}.parquet", mutate(frame))
    with pytest.raises(MtbenchError) as err:
        open_trace(path, TraceLimits(max_static=1032, max_rt=100, max_cand=1024))
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text


def test_integer_columns_stored_as_whole_floats_are_read_as_int64(tmp_path: Path) -> None:
    columns = random_trace(np.random.default_rng(5), 30)
    frame = pd.DataFrame(columns).assign(n_rt=lambda f: f["n_rt"].astype(float), n_cand=lambda f: f["n_cand"].astype(np.float32))
    arrays = open_trace(write_frame(tmp_path / "floats.parquet", frame)).arrays(list(REQUIRED_COLUMNS))
    assert arrays["n_rt"].dtype == np.int64 and arrays["n_cand"].dtype == np.int64
    np.testing.assert_array_equal(arrays["n_rt"], columns["n_rt"])
    np.testing.assert_array_equal(arrays["n_cand"], columns["n_cand"])


def test_unsorted_error_in_a_later_batch_reports_the_global_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mtbench.trace.loader as loader

    monkeypatch.setattr(loader, "VALIDATION_BATCH_ROWS", 7)
    columns = random_trace(np.random.default_rng(3), 50)
    columns["ts"][21] = columns["ts"][20] - 1.0  # row 21 is the first row of batch 3 -> checks the carried last ts
    path = write_trace(columns, tmp_path / "t.parquet")
    with pytest.raises(MtbenchError, match="row 21: not sorted"):
        open_trace(path)


@pytest.mark.parametrize("seed", range(4))
def test_sort_option_sorts_stably(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    columns = random_trace(rng, 300)
    columns["ts"] = np.round(rng.uniform(0, 20, 300))  # many ties, unsorted
    path = tmp_path / "t.parquet"
    pd.DataFrame(columns).to_parquet(path, index=False)
    trace = open_trace(path, sort=True)
    order = np.argsort(columns["ts"], kind="stable")
    frame = trace.read()
    np.testing.assert_array_equal(frame["item_id"].to_numpy(), columns["item_id"][order])
    assert trace.was_sorted_in_memory
    np.testing.assert_array_equal(pd.concat(trace.iter_frames(batch_rows=37))["item_id"].to_numpy(), columns["item_id"][order])


@pytest.mark.parametrize("content", [b"", b"not a parquet file at all", b"PAR1" + b"\0" * 50 + b"PAR1"], ids=["zero_bytes", "text", "corrupt"])
def test_not_parquet_or_corrupt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(MtbenchError, match=str(path)):
        open_trace(path)


def test_truncated_parquet_is_reported(tmp_path: Path) -> None:
    path = write_trace(random_trace(np.random.default_rng(0), 5000), tmp_path / "t.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MtbenchError, match="not a parquet file or corrupt"):
        open_trace(path)


def test_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with TraceWriter(out) as writer:
            writer.write(random_trace(np.random.default_rng(0), 10))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_cli_validate_exits_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    frame = pd.DataFrame(random_trace(np.random.default_rng(0), 30))
    frame.loc[12, "n_rt"] = 500
    path = write_frame(tmp_path / "t.parquet", frame)
    assert run_cli(["trace", "validate", str(path), "--model", "large"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert "column 'n_rt', row 12" in err and "Traceback" not in err
    frame.loc[12, "n_rt"] = 5
    write_frame(path, frame)
    assert run_cli(["trace", "validate", str(path), "--model", "large"], monkeypatch) == 0
    assert "30 requests" in " ".join(capsys.readouterr().out.split())


def test_cli_stats_on_unsorted_trace_fails_then_sorts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    frame = pd.DataFrame(random_trace(np.random.default_rng(2), 200)).iloc[::-1]
    path = write_frame(tmp_path / "t.parquet", frame)
    assert run_cli(["trace", "stats", str(path)], monkeypatch) == 2
    assert "pass --sort" in capsys.readouterr().err
    assert run_cli(["trace", "stats", str(path), "--sort"], monkeypatch) == 0
    assert "reuse distance p50" in capsys.readouterr().out
