"""Terminal tables at 80 columns: nothing folded or cut, every number whole, every field still shown.

Summaries are random synthetic compare-policies results (many policies x capacities, with and without
the miss-classification columns) and replays of seven runs; each is printed to an 80-column rich
console and parsed back: no line is wider than the console, no cell is folded onto a second line or
cut with an ellipsis, and every cell equals `format_value` of summary.json (test_report's check).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rich.console import Console
from test_report import check_result_tables
from test_report_plot_axes import SEVEN_RUNS
from test_report_synthetic import compare_policies_result, replay_result

from mtbench.report import Report, print_summary
from mtbench.report.compare import compare_reports, print_comparison
from mtbench.report.summary import capacity_unit, format_value, table_specs, wrap_header

WIDTH = 80


def render(print_fn: Any, *args: Any, width: int = WIDTH) -> str:
    console = Console(record=True, width=width, color_system=None)
    print_fn(*args, console)
    return console.export_text()


def parse_tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, body) of every box table; a header wrapped over several lines is joined again
    (headers break after underscores, so the pieces concatenate to the field name)."""
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    title, header_lines, body = "", [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] in "┏┌":
            header_lines, body = [], []
        elif stripped[0] == "┃":
            header_lines.append([c.strip() for c in stripped.strip("┃").split("┃")])
        elif stripped[0] == "│":
            body.append([c.strip() for c in stripped.strip("│").split("│")])
        elif stripped[0] == "└":
            tables.append((title, ["".join(parts) for parts in zip(*header_lines)] if header_lines else [], body))
        elif stripped[0] not in "┡├━─":
            title = stripped
    return tables


def assert_fits(text: str) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert "…" not in text


def _compare_summary(seed: int, miss_columns: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    capacities = sorted(float(c) for c in rng.choice([0.25, 0.5, 1, 2, 4, 8, 16, 32], size=int(rng.integers(3, 7)),
                                                     replace=False))
    summary, _ = compare_policies_result(rng, capacities_gib=capacities)
    if miss_columns:
        for row in summary["rows"]:
            compulsory, stale = int(rng.integers(0, row["misses"] + 1)), row["stale"]
            row.update(misses_compulsory=compulsory, misses_stale=stale, misses_capacity=row["misses"] - compulsory,
                       cold_miss_limit=1 - (compulsory + stale) / row["requests"],
                       unlimited_host_gain=(row["misses"] - compulsory) / row["requests"])
    return summary


def _replay_summary(seed: int, runs: tuple[str, ...] = tuple(SEVEN_RUNS)) -> dict[str, Any]:
    summary, _ = replay_result(np.random.default_rng(seed), requests=120, runs={run: SEVEN_RUNS[run] for run in runs})
    summary["note"] = "timings measured on the CPU say nothing about GPU speed"
    for row in summary["rows"]:  # the wider fields real replays add
        row.update(measured_ms=row["compute_ms"] * 1.01, ms_per_request=row["p50_ms"], graph_captures=0,
                   gpu_admission_failures=int(seed), scratch_bytes=123_456_789, device_mallocs=3)
    return summary


@pytest.mark.parametrize("seed", range(3))
def test_compare_policies_tables_fit_80_columns(seed: int) -> None:
    summary = _compare_summary(seed, miss_columns=seed > 0)
    text = render(print_summary, summary)
    assert_fits(text)
    tables = parse_tables(text)
    check_result_tables(summary, tables)
    shown = {column for _, header, _ in tables for column in header}
    assert ("cold_miss_limit" in shown) == (seed > 0)
    hit_tables = [header for title, header, _ in tables if title.startswith("Hit ratios")]
    assert seed == 0 or any("cold_miss_limit" in header for header in hit_tables)


@pytest.mark.parametrize("seed", range(3))
def test_seven_replay_runs_are_rows_that_fit_80_columns(seed: int) -> None:
    summary = _replay_summary(seed)
    text = render(print_summary, summary)
    assert_fits(text)
    tables = parse_tables(text)
    check_result_tables(summary, tables)
    result_tables = [t for t in tables if t[1] and t[1][0] == "run"]
    assert result_tables and all([line[0] for line in body] == list(SEVEN_RUNS) for _, _, body in result_tables)
    assert text.count("say nothing about GPU speed") == 1


def test_few_runs_stay_transposed_when_they_fit() -> None:
    summary = _replay_summary(4, runs=("tiered/hybrid", "gpu"))
    text = render(print_summary, summary)
    assert_fits(text)
    tables = parse_tables(text)
    check_result_tables(summary, tables)
    assert any(header[:1] == ["field"] and header[1:] == ["tiered/hybrid", "gpu"] for _, header, _ in tables)


def test_wide_consoles_and_markdown_keep_whole_groups() -> None:
    """Splitting is only for narrow terminals: the markdown (no width) has one table per group."""
    summary = _replay_summary(5)
    narrow, whole = table_specs(summary, WIDTH), table_specs(summary)
    assert len(narrow) > len(whole)
    assert {spec.title.split(" (")[0] for spec in narrow} == {spec.title for spec in whole}
    assert table_specs(summary, 10_000) == whole


@pytest.mark.parametrize("seed", range(3))
def test_wrapped_headers_rejoin_to_the_field_name(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(50):
        name = "_".join("".join(rng.choice(list("abcdefgh"), size=int(rng.integers(1, 9)))) for _ in range(rng.integers(1, 5)))
        width = int(rng.integers(1, 12))
        lines = wrap_header(name, width).split("\n")
        assert "".join(lines) == name
        assert all(len(line) <= width or "_" not in line[:-1] for line in lines)


@pytest.mark.parametrize("kind", ["compare-policies", "replay"])
def test_two_report_comparison_fits_80_columns(kind: str) -> None:
    if kind == "replay":
        a, b = Report(None, _replay_summary(6)), Report(None, _replay_summary(7))
    else:
        a, b = Report(None, _compare_summary(8, True)), Report(None, _compare_summary(8, True))
        b.summary["rows"] = b.summary["rows"][3:]  # some rows only in A
    comparison = compare_reports(a, b)
    text = render(lambda c, console: print_comparison(c, console, all_fields=True), comparison)
    assert_fits(text)
    unit = capacity_unit(a.summary)
    lines = text.splitlines()
    for pair in comparison.pairs:
        assert any(pair.label in line for line in lines), pair.label
        if pair.a is None or pair.b is None:
            continue
        for field in comparison.numeric_fields(True)[:8]:
            cells = [format_value(field, pair.a.get(field), unit), format_value(field, pair.b.get(field), unit)]
            assert any(f" {field} " in line and all(f" {cell} " in line for cell in cells) for line in lines), (field, cells)
    assert text.count("only in A") == (3 if kind == "compare-policies" else 0)
