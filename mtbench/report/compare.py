"""Side-by-side comparison of two report directories of the same kind.

Rows are matched by (policy, GPU capacity, host capacity) for compare-policies and by run for
replay; each matched pair yields, per numeric field, A, B, the delta B - A and the relative change.
Rows found in one report only are listed as such. Cells use `format_value`, like every other table.
In the terminal each matched row is a heading line followed by its fields, so the table keeps to
five narrow columns (80-column terminals); markdown keeps one line per (row, field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtbench.errors import MtbenchError
from mtbench.report.directory import Report
from mtbench.report.plots import policy_key, row_policy
from mtbench.report.summary import MISSING, capacity_unit, format_value, markdown_table

HEADLINE_FIELDS = {
    "compare-policies": ["hit_ratio", "gpu_hit_ratio", "token_hit_ratio", "bytes_h2d", "est_ms_per_request",
                         "est_speedup"],
    "replay": ["hit_ratio", "p50_ms", "p99_ms", "requests_per_s", "pipeline_efficiency", "speedup_vs_none",
               "speedup_vs_gpu", "speedup_vs_sync"],
    "capacity": ["hit_ratio", "saturation_qps", "max_qps", "capacity_speedup", "throughput_speedup", "gpus_needed"],
}
_KEY_FIELDS = {"compare-policies": ("policy", "gpu_capacity", "host_capacity"), "replay": ("run",), "capacity": ("run",)}


@dataclass(frozen=True)
class RowPair:
    """One row of report A matched with one of report B (either may be None: unmatched)."""

    label: str
    a: dict[str, Any] | None
    b: dict[str, Any] | None


@dataclass(frozen=True)
class Comparison:
    """Two reports of one kind, their matched rows and the config options that differ."""

    a: Report
    b: Report
    pairs: list[RowPair]
    config_differences: dict[str, tuple[Any, Any]]

    @property
    def kind(self) -> str:
        return self.a.kind

    @property
    def same_trace(self) -> bool:
        return (self.a.summary.get("trace") or {}).get("sha256") == (self.b.summary.get("trace") or {}).get("sha256")

    def numeric_fields(self, all_fields: bool) -> list[str]:
        """Fields to compare: the headline ones, or every numeric field of any matched row."""
        seen = [name for pair in self.pairs if pair.a and pair.b for row in (pair.a, pair.b) for name, value in row.items()
                if _is_number(value) and name not in _KEY_FIELDS.get(self.kind, ())]
        seen = list(dict.fromkeys(seen))
        if all_fields:
            return seen
        return [name for name in HEADLINE_FIELDS.get(self.kind, seen) if name in seen]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_reports(a: Report, b: Report) -> Comparison:
    """Match the rows of two reports of the same kind; different kinds raise MtbenchError."""
    if a.kind != b.kind:
        raise MtbenchError(f"cannot compare a {a.kind} report ({a.path}) with a {b.kind} report ({b.path})")
    keys_a = {_row_key(a, row): row for row in a.summary.get("rows") or []}
    keys_b = {_row_key(b, row): row for row in b.summary.get("rows") or []}
    keys = list(dict.fromkeys([*keys_a, *keys_b]))
    with_host = _KEY_FIELDS.get(a.kind) != ("run",) and len({key[2] for key in keys}) > 1
    pairs = [RowPair(_key_label(a, key, with_host), keys_a.get(key), keys_b.get(key)) for key in keys]
    config_a, config_b = a.summary.get("config") or {}, b.summary.get("config") or {}
    differences = {k: (config_a.get(k), config_b.get(k)) for k in dict.fromkeys([*config_a, *config_b])
                   if config_a.get(k) != config_b.get(k)}
    return Comparison(a, b, pairs, differences)


def _row_key(report: Report, row: dict[str, Any]) -> tuple[Any, ...]:
    if _KEY_FIELDS.get(report.kind) == ("run",):
        return (str(row.get("run")),)
    return (policy_key(row_policy(row)), row.get("gpu_capacity"), row.get("host_capacity"))


def _key_label(report: Report, key: tuple[Any, ...], with_host: bool) -> str:
    """'run', or 'policy @ GPU capacity' (with '/ host capacity' when rows differ in it)."""
    if _KEY_FIELDS.get(report.kind) == ("run",):
        return str(key[0])
    unit = capacity_unit(report.summary)
    host = f" / host {format_value('host_capacity', key[2], unit)}" if with_host else ""
    return f"{key[0]} @ {format_value('gpu_capacity', key[1], unit)}{host}"


def delta_cells(field: str, a: Any, b: Any, unit: str) -> list[str]:
    """[A, B, B - A, relative change] as text for one field of a matched pair."""
    if not (_is_number(a) and _is_number(b)):
        return [format_value(field, a, unit), format_value(field, b, unit), MISSING, MISSING]
    delta = b - a
    sign = "+" if delta > 0 else ""
    relative = f"{100 * delta / abs(a):+.1f}%" if a else MISSING
    return [format_value(field, a, unit), format_value(field, b, unit), sign + format_value(field, delta, unit), relative]


def comparison_rows(comparison: Comparison, all_fields: bool) -> list[list[str]]:
    """Long-format cells: [row, field, A, B, delta, delta %], unmatched rows as 'only in A/B'."""
    unit = capacity_unit(comparison.a.summary)
    fields = comparison.numeric_fields(all_fields)
    cells = []
    for pair in comparison.pairs:
        if pair.a is None or pair.b is None:
            cells.append([pair.label, "only in " + ("A" if pair.b is None else "B"), "", "", "", ""])
            continue
        cells += [[pair.label, field, *delta_cells(field, pair.a.get(field), pair.b.get(field), unit)] for field in fields]
    return cells


_COLUMNS = ["row", "field", "A", "B", "delta (B - A)", "delta %"]


def _header_lines(comparison: Comparison) -> list[tuple[str, str]]:
    trace_a = (comparison.a.summary.get("trace") or {}).get("path", MISSING)
    trace_b = (comparison.b.summary.get("trace") or {}).get("path", MISSING)
    lines = [("A", str(comparison.a.path)), ("B", str(comparison.b.path)), ("kind", comparison.kind),
             ("trace", f"{trace_a} vs {trace_b} ({'same' if comparison.same_trace else 'different'} sha256)")]
    for key in ("model", "dtype"):
        lines.append((key, f"{comparison.a.summary.get(key, MISSING)} vs {comparison.b.summary.get(key, MISSING)}"))
    lines += [(f"config {k}", f"{_text(a)} vs {_text(b)}") for k, (a, b) in comparison.config_differences.items()]
    return lines


def _text(value: Any) -> str:
    return MISSING if value is None else str(value)


def print_comparison(comparison: Comparison, console: Console, all_fields: bool = False) -> None:
    """Rich tables: what differs between the two runs, then A, B and deltas per matched row."""
    header = Table(title="mtbench report comparison", show_header=False, title_justify="left")
    header.add_column("field", style="bold")
    header.add_column("value", overflow="fold")
    for label, text in _header_lines(comparison):
        header.add_row(label, text)
    console.print(header)
    table = Table(title="Rows matched by " + ", ".join(_KEY_FIELDS.get(comparison.kind, ("row",))), title_justify="left")
    table.add_column("row\n  field", justify="left", overflow="fold")
    for name in _COLUMNS[2:]:
        table.add_column(name, justify="right", overflow="fold")
    previous = None
    for label, field, *cells in comparison_rows(comparison, all_fields):
        unmatched = not any(cells)  # "only in A/B" stands on the row's heading line
        if label != previous:
            if previous is not None:
                table.add_section()
            table.add_row(f"[bold]{escape(label)}[/]", field if unmatched else "", "", "", "")
            previous = label
        if not unmatched:
            table.add_row(f"  {field}", *cells)
    console.print(table)


def comparison_markdown(comparison: Comparison, all_fields: bool = False) -> str:
    lines = ["# mtbench report comparison", "", markdown_table(["field", "value"], [list(x) for x in _header_lines(comparison)]),
             "", "## Matched rows", "", markdown_table(_COLUMNS, comparison_rows(comparison, all_fields))]
    return "\n".join(lines) + "\n"


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """Every numeric field of every matched row with A, B and delta; unmatched rows with one side null."""
    rows = []
    for pair in comparison.pairs:
        entry: dict[str, Any] = {"row": pair.label, "a": pair.a, "b": pair.b}
        if pair.a is not None and pair.b is not None:
            entry["delta"] = {k: pair.b[k] - pair.a[k] for k in pair.a
                              if k in pair.b and _is_number(pair.a[k]) and _is_number(pair.b[k])}
        rows.append(entry)
    return {"a": str(comparison.a.path), "b": str(comparison.b.path), "kind": comparison.kind,
            "same_trace": comparison.same_trace,
            "config_differences": {k: list(v) for k, v in comparison.config_differences.items()}, "rows": rows}
