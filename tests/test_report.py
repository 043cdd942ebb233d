"""Report directories: atomic writes, summary.json content, and the same numbers in every view."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from test_report_synthetic import compare_policies_result, replay_result

from mtbench.errors import MtbenchError
from mtbench.report import load_report, print_summary, render_markdown, trace_fingerprint, validate_out_dir, write_report
from mtbench.report.summary import MISSING, capacity_unit, format_value
from mtbench.report.writer import INCOMPLETE_MARKER, ReportWriter
from mtbench.units import parse_size

BOX_CHARS = "│┃"


# --------------------------------------------------------------------------------------------- parsing
def parse_markdown_tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(section title, header, body) for every table of a markdown document."""
    tables, title, lines = [], "", text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            title = line.lstrip("# ").strip()
        if line.startswith("| ") and index + 1 < len(lines) and lines[index + 1].startswith("| ---"):
            header = _split_md(line)
            index += 2
            body = []
            while index < len(lines) and lines[index].startswith("| "):
                body.append(_split_md(lines[index]))
                index += 1
            tables.append((title, header, body))
            continue
        index += 1
    return tables


def _split_md(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in cells]


def parse_terminal_tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, body) for every rich box table in recorded console text (wide console, no folds)."""
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    title, header, body = "", None, []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] in "┏┌":
            header, body = None, []
        elif stripped[0] == "┃":
            header = [c.strip() for c in stripped.strip("┃").split("┃")]
        elif stripped[0] == "│":
            body.append([c.strip() for c in stripped.strip("│").split("│")])
        elif stripped[0] in "└":
            tables.append((title, header or [], body))
        elif stripped[0] not in "┡├━─":
            title = stripped
    return tables


def parse_number(text: str) -> tuple[float, float]:
    """(value, half of the last shown digit): '1.50 GiB', '2.35x', '12,345', '3.10e-06', '+0.5'."""
    text = text.replace(",", "").removesuffix("x").strip()
    if re.fullmatch(r"[-+]?\d+(\.\d+)?e[-+]\d+", text):
        mantissa, exponent = text.split("e")
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return float(text), 0.5 * 10.0 ** (int(exponent) - decimals)
    match = re.fullmatch(r"([-+]?\d+(?:\.(\d+))?)\s*([A-Za-z]*)", text)
    assert match, f"not a number: {text!r}"
    multiplier = parse_size(f"1{match.group(3)}") if match.group(3) else 1
    decimals = len(match.group(2) or "")
    return float(match.group(1)) * multiplier, 0.5 * 10.0**-decimals * multiplier


def assert_cell_matches(column: str, cell: str, value: Any, unit: str) -> None:
    """A table cell shows the summary.json value: same text as format_value and, read back, the same number."""
    assert cell == format_value(column, value, unit), (column, cell, value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        assert cell == MISSING
    elif isinstance(value, bool):
        assert cell == ("yes" if value else "no")
    elif isinstance(value, str):
        assert cell == value
    else:
        number, tolerance = parse_number(cell)
        assert abs(number - value) <= tolerance * 1.0001 + 1e-12, (column, cell, value)


def check_result_tables(summary: dict[str, Any], tables: list[tuple[str, list[str], list[list[str]]]]) -> None:
    """Every field of every summary row is shown, and every shown cell matches summary.json."""
    rows = summary["rows"]
    unit = capacity_unit(summary)
    shown: set[tuple[int, str]] = set()
    result_tables = [t for t in tables if t[1] and t[1][0] not in ("option",) and t[0] != "Configuration"
                     and not t[0].startswith("mtbench")]
    assert result_tables
    for _title, header, body in result_tables:
        if header[0] == "field":  # transposed: one line per field, one column per row
            assert len(header) == len(rows) + 1
            for line in body:
                column = line[0]
                for index, cell in enumerate(line[1:]):
                    assert_cell_matches(column, cell, rows[index].get(column), unit)
                    shown.add((index, column))
            for index, label in enumerate(header[1:]):
                if "run" in rows[index]:
                    assert label == rows[index]["run"]
                    shown.add((index, "run"))
        else:
            assert len(body) == len(rows)
            for index, line in enumerate(body):
                for column, cell in zip(header, line, strict=True):
                    assert_cell_matches(column, cell, rows[index].get(column), unit)
                    shown.add((index, column))
    assert shown == {(index, column) for index, row in enumerate(rows) for column in row}


# --------------------------------------------------------------------------------------------- fixtures
def _cases() -> list[tuple[str, dict[str, Any], pd.DataFrame]]:
    cases = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        capacities = sorted(rng.choice([0.5, 1, 2, 4, 8, 16, 32, 64], size=int(rng.integers(1, 7)), replace=False))
        policies = list(rng.choice(["lru", "fifo", "arc", "s3fifo", "sieve", "gdsf", "locality"],
                                   size=int(rng.integers(1, 5)), replace=False)) + ["opt"]
        cases.append(("compare-policies", *compare_policies_result(rng, policies, capacities, requests=int(rng.integers(100, 10**6)))))
        cases.append(("replay", *replay_result(rng, requests=int(rng.integers(50, 400)))))
    return cases


CASES = _cases()


@pytest.fixture(scope="module", params=range(len(CASES)), ids=[f"{kind}-{i}" for i, (kind, _, _) in enumerate(CASES)])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            ) -> tuple[str, dict[str, Any], pd.DataFrame, Path]:
    """Each case written once (plots take a second): kind, summary, records, report directory."""
    kind, summary, records = CASES[request.param]
    parent = tmp_path_factory.mktemp("report")
    return kind, summary, records, write_report(parent / "run", summary, records, kind)


# ------------------------------------------------------------------------------------------------ tests
def test_write_report_creates_complete_directory(written: tuple[str, dict, pd.DataFrame, Path]) -> None:
    kind, summary, records, out = written
    assert out.name == "run" and not (out.parent / "run.partial").exists()
    assert {p.name for p in out.iterdir()} == {"records.parquet", "summary.json", "summary.md", "plots"}
    assert list((out / "plots").glob("*.png"))
    stored = json.loads((out / "summary.json").read_text())
    assert stored["kind"] == kind and stored["rows"] == summary["rows"]
    assert stored["trace"] == summary["trace"] and stored["config"] == summary["config"]
    assert {"mtbench_version", "torch_version", "created_utc"} <= set(stored)
    assert list(stored)[:6] == ["kind", "trace", "model", "dtype", "config", "rows"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "records.parquet"), records.reset_index(drop=True))
    assert load_report(out).summary == stored


def test_markdown_carries_the_same_numbers_as_summary_json(written: tuple[str, dict, pd.DataFrame, Path]) -> None:
    out = written[3]
    stored = json.loads((out / "summary.json").read_text())
    markdown = (out / "summary.md").read_text()
    check_result_tables(stored, parse_markdown_tables(markdown))
    assert stored["trace"]["sha256"] in markdown and stored["torch_version"] in markdown
    for png in (out / "plots").glob("*.png"):
        assert f"(plots/{png.name})" in markdown


def test_terminal_table_carries_the_same_numbers_as_summary_json(written: tuple[str, dict, pd.DataFrame, Path]) -> None:
    stored = json.loads((written[3] / "summary.json").read_text())
    console = Console(record=True, width=500, color_system=None)
    print_summary(stored, console)
    terminal = parse_terminal_tables(console.export_text())
    check_result_tables(stored, terminal)
    markdown = parse_markdown_tables(render_markdown(stored))
    assert [table for table in terminal if table[1]][-len(markdown) + 2:] == markdown[2:]


def test_interrupted_write_leaves_only_a_marked_partial_directory(tmp_path: Path) -> None:
    summary, records = replay_result(np.random.default_rng(3), requests=100)
    final = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with ReportWriter(final) as writer:
            writer.write_records(records)
            writer.write_summary(summary)
            raise KeyboardInterrupt
    assert not final.exists()
    marker = tmp_path / "run.partial" / INCOMPLETE_MARKER
    assert "Ctrl-C" in marker.read_text()
    with pytest.raises(MtbenchError, match="incomplete"):
        load_report(final)
    with pytest.raises(MtbenchError, match="incomplete"):
        load_report(tmp_path / "run.partial")


def test_interrupt_during_plotting_keeps_previous_report_and_marks_partial(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    summary, records = compare_policies_result(np.random.default_rng(4), capacities_gib=[1, 2])
    final = write_report(tmp_path / "run", summary, records, "compare-policies")
    before = (final / "summary.json").read_text()

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(MtbenchError, match="pass --force"):
        write_report(final, summary, records, "compare-policies")
    monkeypatch.setattr("mtbench.report.plots.draw_plots", interrupted)
    with pytest.raises(KeyboardInterrupt) as interruption:
        write_report(final, summary, records, "compare-policies", force=True)
    assert interruption.value.partial == tmp_path / "run.partial"  # main() names it in its one line
    assert (final / "summary.json").read_text() == before
    assert (tmp_path / "run.partial" / INCOMPLETE_MARKER).is_file()


def test_load_report_rejects_bad_directories(tmp_path: Path) -> None:
    with pytest.raises(MtbenchError, match="no report directory"):
        load_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtbenchError, match="no summary.json"):
        load_report(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    with pytest.raises(MtbenchError, match="not valid JSON"):
        load_report(broken)
    (broken / "summary.json").write_text(json.dumps({"kind": "replay", "rows": [1]}))
    with pytest.raises(MtbenchError, match=r"rows\[0\]"):
        load_report(broken)
    (broken / "summary.json").write_text(json.dumps({"kind": "replay", "rows": []}))
    with pytest.raises(MtbenchError, match="records.parquet"):
        load_report(broken)
    (tmp_path / "only.partial").mkdir()
    with pytest.raises(MtbenchError, match="interrupted"):
        load_report(tmp_path / "only")


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    summary, records = compare_policies_result(np.random.default_rng(5), capacities_gib=[1, 2])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(MtbenchError, match="not a report"):
        write_report(occupied, summary, records, "compare-policies")
    assert (occupied / "notes.txt").read_text() == "mine"
    with pytest.raises(MtbenchError, match="kind"):
        write_report(tmp_path / "a", summary, records, "replay")
    with pytest.raises(MtbenchError, match="JSON"):
        write_report(tmp_path / "b", {**summary, "config": {"when": object()}}, records, "compare-policies")
    with pytest.raises(MtbenchError, match="parquet"):
        write_report(tmp_path / "c", summary, records.assign(policy=[object()] * len(records)), "compare-policies")
    with pytest.raises(MtbenchError, match="DataFrame"):
        write_report(tmp_path / "d", summary, summary["rows"], "compare-policies")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    with pytest.raises(MtbenchError, match="partial"):
        validate_out_dir(tmp_path / "x.partial")


def test_summary_json_is_clean_json(tmp_path: Path) -> None:
    summary, records = compare_policies_result(np.random.default_rng(6), capacities_gib=[1, 2])
    summary["rows"][0]["est_speedup"] = float("nan")
    summary["rows"][1]["requests"] = np.int64(summary["rows"][1]["requests"])
    summary["config"]["trace_dir"] = Path("traces")
    out = write_report(tmp_path / "run", summary, records, "compare-policies")
    stored = json.loads((out / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert stored["rows"][0]["est_speedup"] is None
    assert type(stored["rows"][1]["requests"]) is int and stored["config"]["trace_dir"] == "traces"


def test_trace_fingerprint_streams_the_file_hash(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    for size in (0, 1, (1 << 20) - 1, (1 << 20) + 7, 3 * (1 << 20) + 5):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path = tmp_path / f"trace-{size}.parquet"
        path.write_bytes(data)
        assert trace_fingerprint(path, 42) == {"path": str(path), "rows": 42, "sha256": hashlib.sha256(data).hexdigest()}
    with pytest.raises(MtbenchError, match="not a file"):
        trace_fingerprint(tmp_path / "absent.parquet", 1)


def test_unit_mode_capacities_are_entry_counts() -> None:
    summary, _ = compare_policies_result(np.random.default_rng(9), capacities_gib=[1, 2])
    for row in summary["rows"]:
        row["gpu_capacity"], row["host_capacity"] = 1000 * len(row["policy"]), 50_000
    summary["config"]["capacity_unit"] = "entries"
    console = Console(record=True, width=500, color_system=None)
    print_summary(summary, console)
    check_result_tables(summary, parse_terminal_tables(console.export_text()))
    assert "GiB" not in format_value("gpu_capacity", 2048, "entries")
