"""Turning a summary dict into the terminal table and summary.md, with the same numbers in both.

A summary (the content of summary.json, layout in FORMAT.md) holds run metadata plus `rows`: one dict
per (policy, capacity) for compare-policies or per run for replay. Rows are shown as a few column
groups (outcomes, cost, latency, ...) so a table fits a terminal; each group repeats the key columns
that identify a row. Every field of every row appears in exactly one group (unknown fields go to
"Other fields"), and every cell is produced by `format_value`, so the terminal, the markdown and
summary.json carry the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mtbench.errors import MtbenchError

MISSING = "—"
SHA256_CHUNK_BYTES = 1 << 20

CAPACITY_COLUMNS = ("gpu_capacity", "host_capacity")
TRANSPOSE_MAX_ROWS = 6
_GROUPS_BY_KIND: dict[str, list[tuple[str, list[str]]]] = {
    "compare-policies": [
        ("Request outcomes", ["requests", "gpu_hits", "host_hits", "misses", "stale"]),
        ("Hit ratios and estimated cost", ["hit_ratio", "gpu_hit_ratio", "token_hit_ratio",
                                           "est_ms_per_request", "est_speedup"]),
        ("Traffic between tiers", ["bytes_h2d", "bytes_d2h", "gpu_evictions", "host_evictions"]),
    ],
    "replay": [
        ("Setup and outcomes", ["policy", "cache_mode", "layout", "sync", "requests", "gpu_hits", "host_hits",
                                "misses", "stale", "hit_ratio", "gpu_hit_ratio", "token_hit_ratio"]),
        ("Latency and throughput", ["p50_ms", "p99_ms", "batch_p50_ms", "batch_p99_ms", "requests_per_s",
                                    "candidates_per_s", "est_ms_per_request"]),
        ("Time breakdown and transfers", ["compute_ms", "transfer_wait_ms", "bookkeeping_ms",
                                          "pipeline_efficiency", "bytes_h2d", "bytes_d2h", "h2d_GBps",
                                          "d2h_GBps", "gpu_evictions", "host_evictions",
                                          "transfer_fallbacks", "host_fragmentation"]),
        ("Speedups and checks", ["speedup_vs_none", "speedup_vs_gpu", "speedup_vs_sync", "est_speedup",
                                 "verify_max_rel_err"]),
    ],
    "fleet": [
        ("Hit ratios by tier", ["hit_ratio", "gpu_hit_ratio", "host_hit_ratio"]),
        ("Misses", ["miss_ratio", "stale_ratio", "token_hit_ratio"]),
        ("Load balance (max / mean over replicas)", ["imbalance_req", "imbalance_busy", "busy_max_ms"]),
        ("Closed-loop throughput, latency at the offered rate", ["throughput_rps", "p50_ms", "p99_ms"]),
        ("Offered load", ["offered_qps", "utilization", "overloaded"]),
    ],
}
_IDENTITY_COLUMNS_BY_KIND = {"compare-policies": ("policy",), "replay": ("run",), "fleet": ("router", "replicas")}
_TEXT_COLUMNS = ("policy", "run", "cache_mode", "layout", "sync", "router")
_HEADER_FIELDS = ("kind", "trace", "model", "dtype", "config", "rows")
_VERSION_FIELDS = ("mtbench_version", "torch_version", "created_utc")


@dataclass(frozen=True)
class ColumnGroup:
    """One table of the summary: a title and the row fields it shows, key columns first."""

    title: str
    columns: list[str]


@dataclass(frozen=True)
class TableSpec:
    """A rendered-to-text table shared by the terminal and markdown: header cells and body rows.

    `transposed` tables (few rows) have one line per field: header ["field", row label, ...].
    """

    title: str
    header: list[str]
    body: list[list[str]]
    transposed: bool = False


def trace_fingerprint(path: Path | str, rows: int) -> dict[str, Any]:
    """{"path", "rows", "sha256"} of a trace file; the hash is streamed, so any file size is fine."""
    path = Path(path)
    if not path.is_file():
        raise MtbenchError(f"trace fingerprint: {path} is not a file")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(SHA256_CHUNK_BYTES):
            digest.update(chunk)
    return {"path": str(path), "rows": int(rows), "sha256": digest.hexdigest()}


def capacity_unit(summary: dict[str, Any]) -> str:
    """"bytes" (default) or "entries" (unit mode), read from summary["config"]["capacity_unit"]."""
    unit = (summary.get("config") or {}).get("capacity_unit", "bytes")
    return "entries" if str(unit).lower() in ("entries", "entry", "units", "unit") else "bytes"


def format_bytes_precise(n: float) -> str:
    """Binary size with three significant digits: 1536 -> '1.50 KiB', 8 GiB -> '8.00 GiB'."""
    value = float(n)
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            break
        value /= 1024
    if unit == "B":
        return f"{value:.0f} B"
    return f"{_format_significant(value, 3)} {unit}"


def format_value(column: str, value: Any, unit: str = "bytes") -> str:
    """The one text form of a row field used by the terminal, markdown and comparison tables."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if not isinstance(value, (int, float)):
        return json.dumps(value, default=str)
    if _is_bytes_column(column):
        if column in CAPACITY_COLUMNS and unit == "entries":
            return f"{int(value):,}"
        return format_bytes_precise(value)
    if "speedup" in column:
        return f"{value:.2f}x"
    if column.endswith("_ratio") or column in ("pipeline_efficiency", "host_fragmentation"):
        return f"{value:.4f}"
    if column.endswith("_err"):
        return f"{value:.2e}"
    if column.endswith("_GBps"):
        return f"{value:.2f}"
    if isinstance(value, int) or float(value).is_integer() and not column.endswith("_ms"):
        return f"{int(value):,}"
    return _format_significant(float(value), 4)


def _is_bytes_column(column: str) -> bool:
    return column in CAPACITY_COLUMNS or column.startswith("bytes_") or column.endswith("_bytes")


def _format_significant(value: float, digits: int) -> str:
    """Fixed-point text with at least `digits` significant digits (never scientific notation)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.{digits - 1}f}" if value == 0 else str(value)
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def column_groups(summary: dict[str, Any]) -> list[ColumnGroup]:
    """The tables to show for this summary; only columns that occur in some row are kept.

    Key columns (policy or run, plus each capacity that differs between rows) open every group; a
    capacity that is the same in every row is shown once, in the first group.
    """
    rows: list[dict[str, Any]] = summary.get("rows") or []
    present = list(dict.fromkeys(name for row in rows for name in row))
    kind = summary.get("kind", "")
    keys = [c for c in _IDENTITY_COLUMNS_BY_KIND.get(kind, ()) if c in present]
    keys += [c for c in CAPACITY_COLUMNS if c in present and len({_hashable(r.get(c)) for r in rows}) > 1]
    constant = [c for c in CAPACITY_COLUMNS if c in present and c not in keys]
    groups: list[ColumnGroup] = []
    placed = set(keys)
    for title, wanted in _GROUPS_BY_KIND.get(kind, []):
        columns = ([] if groups else constant) + [c for c in wanted if c in present and c not in placed]
        placed.update(columns)
        if columns:
            groups.append(ColumnGroup(title, keys + columns))
    other = [c for c in present if c not in placed]
    if other:
        groups.append(ColumnGroup("Other fields" if groups else "Results", keys + other))
    return groups


def _key_columns(groups: list[ColumnGroup]) -> set[str]:
    """Columns that open every group (the row identity)."""
    if not groups:
        return set()
    shared = set(groups[0].columns)
    for group in groups[1:]:
        shared &= set(group.columns)
    return shared if len(groups) > 1 else set()


def row_labels(summary: dict[str, Any]) -> list[str]:
    """Names of the rows as headers of transposed tables: the run, or 'policy @ capacity'."""
    rows: list[dict[str, Any]] = summary.get("rows") or []
    unit = capacity_unit(summary)
    labels = []
    for index, row in enumerate(rows):
        if row.get("run") is not None:
            label = str(row["run"])
        elif row.get("router") is not None:
            label = f"{row['router']} x{row.get('replicas')}"
        else:
            label = " @ ".join(format_value(c, row.get(c), unit) for c in ("policy", "gpu_capacity") if c in row)
        labels.append(label or f"row {index}")
    duplicated = {label for label in labels if labels.count(label) > 1}
    return [f"{label} #{i}" if label in duplicated else label for i, label in enumerate(labels)]


def table_specs(summary: dict[str, Any]) -> list[TableSpec]:
    """Every result table of the summary as text cells; summaries of few rows are transposed."""
    rows = summary.get("rows") or []
    unit = capacity_unit(summary)
    specs = []
    transposed = 0 < len(rows) <= TRANSPOSE_MAX_ROWS
    labels = row_labels(summary)
    groups = column_groups(summary)
    keys = _key_columns(groups)
    for index, group in enumerate(groups):
        if transposed:
            # runs name the header cells; the other key fields are shown once, in the first table
            columns = [c for c in group.columns if c != "run" and (index == 0 or c not in keys)]
            body = [[column, *(format_value(column, row.get(column), unit) for row in rows)] for column in columns]
            specs.append(TableSpec(group.title, ["field", *labels], body, transposed=True))
        else:
            body = [[format_value(c, row.get(c), unit) for c in group.columns] for row in rows]
            specs.append(TableSpec(group.title, list(group.columns), body))
    return specs


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str)


def header_items(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs describing the run: kind, trace fingerprint, model, versions, time."""
    trace = summary.get("trace") or {}
    items = [("kind", str(summary.get("kind", MISSING)))]
    if trace:
        rows = trace.get("rows")
        items.append(("trace", str(trace.get("path", MISSING))))
        items.append(("trace rows", f"{rows:,}" if isinstance(rows, int) else MISSING))
        items.append(("trace sha256", str(trace.get("sha256", MISSING))))
    for key in ("model", "dtype", *_VERSION_FIELDS):
        if key in summary:
            items.append((key, str(summary[key])))
    for key, value in summary.items():
        if key not in _HEADER_FIELDS and key not in _VERSION_FIELDS:
            items.append((key, _plain(value)))
    return items


def config_items(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(option, value) pairs of summary["config"]: compact JSON, byte sizes also in binary units."""
    entries = capacity_unit(summary) == "entries"
    items = []
    for key, value in (summary.get("config") or {}).items():
        text = _plain(value)
        sizes = value if isinstance(value, list) else [value]
        is_size = any(word in key for word in ("capacity", "capacities", "bytes")) and not entries
        if is_size and sizes and all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
            text += " (" + ", ".join(format_bytes_precise(v) for v in sizes) + ")"
        items.append((str(key), text))
    return items


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def summary_tables(summary: dict[str, Any]) -> list[Table]:
    """Rich tables: the run header, the configuration, then one table per column group."""
    header = Table(title=f"mtbench {summary.get('kind', '')} report", show_header=False, title_justify="left")
    header.add_column("field", style="bold")
    header.add_column("value", overflow="fold")
    for label, text in header_items(summary):
        header.add_row(label, text)
    tables = [header]
    config = config_items(summary)
    if config:
        tables.append(_rich_table(TableSpec("Configuration", ["option", "value"], [list(i) for i in config],
                                            transposed=True)))
    tables += [_rich_table(spec) for spec in table_specs(summary)]
    return tables


def _rich_table(spec: TableSpec) -> Table:
    table = Table(title=spec.title, title_justify="left")
    for index, name in enumerate(spec.header):
        text = name in _TEXT_COLUMNS or (spec.transposed and index == 0)
        first_of_transposed = spec.transposed and index == 0
        table.add_column(name, justify="left" if text else "right", overflow="fold",
                         style="bold" if first_of_transposed else None, no_wrap=first_of_transposed)
    for cells in spec.body:
        table.add_row(*cells)
    return table


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print the run header, configuration and result tables of a summary to `console`."""
    console = console or Console()
    for table in summary_tables(summary):
        console.print(table)


def render_markdown(summary: dict[str, Any], plot_files: list[str] | None = None,
                    skipped_plots: dict[str, str] | None = None) -> str:
    """summary.md: the same header, configuration and tables as `print_summary`, plus plot links."""
    lines = [f"# mtbench {summary.get('kind', '')} report", "",
             markdown_table(["field", "value"], [list(item) for item in header_items(summary)])]
    config = config_items(summary)
    if config:
        lines += ["", "## Configuration", "", markdown_table(["option", "value"], [list(i) for i in config])]
    for spec in table_specs(summary):
        lines += ["", f"## {spec.title}", "", markdown_table(spec.header, spec.body)]
    if plot_files or skipped_plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(name).stem}](plots/{name})" for name in plot_files or []]
        for name, reason in (skipped_plots or {}).items():
            lines.append(f"- skipped {name}: {_md(reason)}")
    return "\n".join(lines) + "\n"


def markdown_table(columns: list[str], cells: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (pipes inside cells escaped)."""
    lines = ["| " + " | ".join(_md(c) for c in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in cells]
    return "\n".join(lines)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
