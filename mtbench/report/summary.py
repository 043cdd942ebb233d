"""Turning a summary dict into the terminal table and summary.md, with the same numbers in both.

A summary (the content of summary.json, layout in FORMAT.md) holds run metadata plus `rows`: one dict
per (policy, capacity) for compare-policies or per run for replay. Rows are shown as a few column
groups (outcomes, cost, latency, ...) so a table fits a terminal; each group repeats the key columns
that identify a row. Every field of every row appears in exactly one group (unknown fields go to
"Other fields"), and every cell is produced by `format_value`, so the terminal, the markdown and
summary.json carry the same numbers.

In a terminal narrower than a group's table, its headers wrap after underscores and, if that is not
enough, the group is cut into several tables of its columns (each repeating the key columns), so no
cell is ever folded or cut: `fit_to_width`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtbench.errors import MtbenchError
from mtbench.units import format_capacity

MISSING = "—"
SHA256_CHUNK_BYTES = 1 << 20

CAPACITY_COLUMNS = ("gpu_capacity", "host_capacity")
RATIO_COLUMNS = ("pipeline_efficiency", "host_fragmentation", "cold_miss_limit", "unlimited_host_gain")  # besides *_ratio
TRANSPOSE_MAX_ROWS = 6
HEADER_SLACK = 2  # terminal columns a header may add to its cells' width before it is wrapped
MISS_CAUSES = ("Why requests missed", ["misses_compulsory", "misses_stale", "misses_capacity", "unlimited_host_gain"])
_GROUPS_BY_KIND: dict[str, list[tuple[str, list[str]]]] = {  # a group shows only the fields some row has
    "compare-policies": [
        ("Request outcomes", ["requests", "gpu_hits", "host_hits", "partial_hits", "misses", "stale"]),
        ("Hit ratios and estimated cost", ["hit_ratio", "cold_miss_limit", "gpu_hit_ratio", "token_hit_ratio",
                                           "reused_tokens", "computed_tokens", "est_ms_per_request", "est_speedup"]),
        MISS_CAUSES,
        ("Traffic between tiers", ["bytes_h2d", "bytes_d2h", "gpu_evictions", "host_evictions",
                                   "est_transfer_exposed_ms"]),
    ],
    "replay": [
        ("Setup and outcomes", ["policy", "cache_mode", "layout", "sync", "kv_dtype", "lossy", "requests", "gpu_hits",
                                "host_hits", "partial_hits", "host_recomputes", "misses", "stale", "hit_ratio",
                                "cold_miss_limit", "lookup_hit_ratio", "gpu_hit_ratio", "token_hit_ratio",
                                "reused_tokens", "computed_tokens"]),
        MISS_CAUSES,
        ("Latency and throughput", ["p50_ms", "p99_ms", "gpu_hit_p50_ms", "host_hit_p50_ms", "partial_hit_p50_ms",
                                    "miss_p50_ms",
                                    "batch_p50_ms", "batch_p99_ms", "ms_per_request", "measured_ms", "requests_per_s",
                                    "candidates_per_s", "est_ms_per_request"]),
        ("Time breakdown and transfers", ["compute_ms", "transfer_wait_ms", "bookkeeping_ms", "forward_host_ms",
                                          "pipeline_efficiency", "bytes_h2d", "bytes_d2h", "h2d_GBps", "d2h_GBps",
                                          "gpu_evictions", "host_evictions"]),
        ("Fallbacks, memory and graphs", ["transfer_fallbacks", "writeback_failures", "gpu_admission_failures",
                                          "host_admission_failures", "host_fragmentation", "scratch_bytes",
                                          "device_mallocs", "graph_captures", "graphed_batches"]),
        ("Speedups and checks", ["speedup_vs_none", "speedup_vs_gpu", "speedup_vs_sync", "est_speedup",
                                 "verify_max_rel_err", "verify_model_rel_err", "verify_top10_agreement"]),
        ("Serving under load", ["arrivals", "p90_ms", "p999_ms", "slo_ms", "slo_attainment", "goodput",
                                "offered_rate", "served_rate", "overloaded", "utilization", "queue_mean", "queue_max",
                                "queueing_ms_mean", "formation_ms_mean", "service_ms_mean", "gpu_hit_p99_ms",
                                "host_hit_p99_ms", "miss_p99_ms", "arrival_lag_ms_max"]),
    ],
    "capacity": [
        ("Capacity per GPU within the SLO", ["policy", "requests", "hit_ratio", "gpu_hit_ratio", "saturation_qps",
                                             "max_qps", "capacity_speedup", "throughput_speedup", "target_qps",
                                             "gpus_needed"]),
        ("Latency at the highest rate within the SLO", ["p50_ms", "p99_ms", "latency_at_percentile_ms",
                                                        "slo_attainment", "goodput", "measured_p50_ms",
                                                        "measured_p99_ms", "measured_latency_at_percentile_ms",
                                                        "measured_slo_attainment", "measured_meets_slo",
                                                        "measured_hit_ratio"]),
    ],
    "fleet": [
        ("Hit ratios by tier", ["hit_ratio", "gpu_hit_ratio", "host_hit_ratio"]),
        ("Misses", ["miss_ratio", "stale_ratio", "token_hit_ratio"]),
        ("Load balance (max / mean over replicas)", ["imbalance_req", "imbalance_busy", "busy_max_ms"]),
        ("Closed-loop throughput, latency at the offered rate", ["throughput_rps", "p50_ms", "p99_ms"]),
        ("Offered load", ["offered_qps", "utilization", "overloaded"]),
    ],
}
# Row identity: the first column always opens every table, the others only when they differ between rows.
_IDENTITY_COLUMNS_BY_KIND = {"compare-policies": ("policy", *CAPACITY_COLUMNS), "replay": ("run",), "capacity": ("run",),
                             "fleet": ("router", "replicas")}
_TEXT_COLUMNS = ("policy", "run", "cache_mode", "layout", "sync", "kv_dtype", "lossy", "router")
_HEADER_FIELDS = ("kind", "trace", "model", "dtype", "config", "rows", "note")  # note: a caveat line of its own
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
    """"bytes" (default) or "entries" (unit mode): summary["config"]["capacity_unit"], or the
    compare-policies option `object_size` ("unit": every entry counts 1, capacities are entry counts)."""
    config = summary.get("config") or {}
    unit = config.get("capacity_unit", config.get("object_size", "bytes"))
    return "entries" if str(unit).lower() in ("entries", "entry", "units", "unit") else "bytes"


def format_capacity_cell(value: float, unit: str, with_unit: bool = False) -> str:
    """A tier capacity: '256 MiB', '1.5 GiB' (bytes, three significant digits, no trailing zeros), or an
    entry count ('10,000'; '10,000 entries' with `with_unit`, for labels that stand alone)."""
    if unit == "entries":
        return format_capacity(value, "unit") if with_unit else f"{int(value):,}"
    number, _, suffix = format_bytes_precise(value).partition(" ")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return f"{number} {suffix}"


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
        if column in CAPACITY_COLUMNS:
            return format_capacity_cell(value, unit)
        return format_bytes_precise(value)
    if "speedup" in column:
        return f"{value:.2f}x"
    if column.endswith("_ratio") or column in RATIO_COLUMNS:
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

    Key columns (policy, plus each capacity that differs between rows; or the replay run) open every
    group; the other capacities are shown once, in the first group.
    """
    rows: list[dict[str, Any]] = summary.get("rows") or []
    present = list(dict.fromkeys(name for row in rows for name in row))
    kind = summary.get("kind", "")
    identity = _IDENTITY_COLUMNS_BY_KIND.get(kind, ())
    keys = [c for i, c in enumerate(identity) if c in present
            and (i == 0 or len({_hashable(r.get(c)) for r in rows}) > 1)]
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


def table_specs(summary: dict[str, Any], width: int | None = None) -> list[TableSpec]:
    """Every result table of the summary as text cells; summaries of few rows are transposed.

    With a `width` (terminal columns) every table fits it: see `fit_to_width`.
    """
    rows = summary.get("rows") or []
    unit = capacity_unit(summary)
    specs = []
    transposed = 0 < len(rows) <= TRANSPOSE_MAX_ROWS
    labels = row_labels(summary)
    groups = column_groups(summary)
    keys = _key_columns(groups)
    for index, group in enumerate(groups):
        if index == 0 and unit == "entries":
            group = ColumnGroup(f"{group.title} (capacities in entries: unit object size)", group.columns)
        row_wise = TableSpec(group.title, list(group.columns),
                             [[format_value(c, row.get(c), unit) for c in group.columns] for row in rows])
        if transposed:
            # runs name the header cells; the other key fields are shown once, in the first table
            columns = [c for c in group.columns if c != "run" and (index == 0 or c not in keys)]
            body = [[column, *(format_value(column, row.get(column), unit) for row in rows)] for column in columns]
            spec = TableSpec(group.title, ["field", *labels], body, transposed=True)
            if width is None or table_width(spec.header, spec.body) <= width:
                specs.append(spec)
                continue
        if width is None:
            specs.append(row_wise)
        else:
            specs += fit_to_width(row_wise, len([c for c in group.columns if c in keys]), width)
    return specs


def table_width(header: list[str], body: list[list[str]]) -> int:
    """Terminal columns a rich table (box, one space of padding) needs without folding any line."""
    widths = [max(len(line) for line in name.split("\n")) for name in header]
    for cells in body:
        widths = [max(w, max(len(line) for line in cell.split("\n"))) for w, cell in zip(widths, cells)]
    return sum(widths) + 3 * len(widths) + 1


def wrap_header(name: str, width: int) -> str:
    """A column name broken after underscores into lines of at most `width` (longer pieces stay whole)."""
    pieces = [piece + "_" for piece in name.split("_")]
    pieces[-1] = pieces[-1][:-1]
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _narrow_headers(spec: TableSpec) -> TableSpec:
    """The same table with each header wrapped to about the width of its column's cells (a name at most
    HEADER_SLACK longer stays whole), in two lines at most where its pieces allow."""
    header = []
    for index, name in enumerate(spec.header):
        cell_width = max((len(cells[index]) for cells in spec.body), default=0)
        header.append(wrap_header(name, max(cell_width, -(-len(name) // 2), min(len(name), cell_width + HEADER_SLACK))))
    return TableSpec(spec.title, header, spec.body, spec.transposed)


def _split_columns(widths: list[int], target: int, limit: int | None = None) -> list[list[int]]:
    """Consecutive runs of column indices: a run is closed once it reaches `target` columns of width, and
    never exceeds `limit` (default: `target`); a column wider than that gets a run of its own."""
    limit = target if limit is None else limit
    chunks: list[list[int]] = [[]]
    used = 0
    for index, width in enumerate(widths):
        if chunks[-1] and (used >= target or used + width > limit):
            chunks.append([])
            used = 0
        chunks[-1].append(index)
        used += width
    return chunks


def fit_to_width(spec: TableSpec, n_keys: int, width: int) -> list[TableSpec]:
    """A row-wise table made to fit `width` terminal columns without folding a cell: as it is; with
    headers wrapped after underscores; or cut into consecutive tables of its columns, each opening with
    the first `n_keys` (key) columns and titled "title (i/n)"."""
    if table_width(spec.header, spec.body) <= width:
        return [spec]
    narrow = _narrow_headers(spec)
    if table_width(narrow.header, narrow.body) <= width:
        return [narrow]
    key_width = table_width(narrow.header[:n_keys], [cells[:n_keys] for cells in narrow.body]) - 1
    needed = [table_width([narrow.header[i]], [[cells[i]] for cells in narrow.body]) - 1
              for i in range(n_keys, len(narrow.header))]
    chunks = _split_columns(needed, width - 1 - key_width)
    chunks = _split_columns(needed, -(-sum(needed) // len(chunks)), width - 1 - key_width)  # even out the tables
    chunks = [[n_keys + i for i in chunk] for chunk in chunks]
    keys = list(range(n_keys))
    return [TableSpec(f"{spec.title} ({number}/{len(chunks)})" if len(chunks) > 1 else spec.title,
                      [narrow.header[i] for i in keys + chunk], [[cells[i] for i in keys + chunk] for cells in narrow.body])
            for number, chunk in enumerate(chunks, start=1)]


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
        is_size = any(word in key for word in ("capacity", "capacities", "bytes", "_cache")) and not entries
        if is_size and sizes and all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
            text += " (" + ", ".join(format_bytes_precise(v) for v in sizes) + ")"
        items.append((str(key), text))
    return items


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def summary_tables(summary: dict[str, Any], width: int | None = None) -> list[Table]:
    """Rich tables: the run header, the configuration, then the column groups (fitted to `width`)."""
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
    tables += [_rich_table(spec) for spec in table_specs(summary, width)]
    return tables


def _rich_table(spec: TableSpec) -> Table:
    table = Table(title=spec.title, title_justify="left")
    for index, name in enumerate(spec.header):
        text = name.replace("\n", "") in _TEXT_COLUMNS or (spec.transposed and index == 0)
        first_of_transposed = spec.transposed and index == 0
        table.add_column(name, justify="left" if text else "right", overflow="fold",
                         style="bold" if first_of_transposed else None, no_wrap=first_of_transposed)
    for cells in spec.body:
        table.add_row(*cells)
    return table


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print the run header, configuration and result tables of a summary to `console`."""
    console = console or Console()
    tables = summary_tables(summary, console.width)
    console.print(tables[0])
    if summary.get("note"):
        console.print(f"[bold]note:[/] {escape(str(summary['note']))}")
    for table in tables[1:]:
        console.print(table)
    note = cold_limit_note(summary)
    if note:
        console.print(note)


def cold_limit_note(summary: dict[str, Any]) -> str | None:
    """One line naming the rows whose hit ratio reached the trace's cold-miss limit (no cache can do
    better: every miss left is the first request of its key), or None."""
    identity = _IDENTITY_COLUMNS_BY_KIND.get(str(summary.get("kind")), ("policy",))[0]
    unit = capacity_unit(summary)
    at_limit = [row for row in summary.get("rows", []) if isinstance(row.get("hit_ratio"), (int, float))
                and isinstance(row.get("cold_miss_limit"), (int, float)) and row["requests"]
                and row["hit_ratio"] >= row["cold_miss_limit"] - 0.5 / row["requests"]]
    if not at_limit:
        return None
    names = ", ".join(f"{row.get(identity)}" + (f" @ {format_value('gpu_capacity', row['gpu_capacity'], unit)}"
                                                 if identity == "policy" else "") for row in at_limit)
    limit = at_limit[0]["cold_miss_limit"]
    return (f"At the cold-miss limit (hit ratio {limit:.4f}; every miss left is a key's first request): {names}")


def render_markdown(summary: dict[str, Any], plot_files: list[str] | None = None,
                    skipped_plots: dict[str, str] | None = None) -> str:
    """summary.md: the same header, configuration and tables as `print_summary`, plus plot links."""
    lines = [f"# mtbench {summary.get('kind', '')} report", "",
             markdown_table(["field", "value"], [list(item) for item in header_items(summary)])]
    if summary.get("note"):
        lines += ["", f"> note: {_md(summary['note'])}"]
    config = config_items(summary)
    if config:
        lines += ["", "## Configuration", "", markdown_table(["option", "value"], [list(i) for i in config])]
    for spec in table_specs(summary):
        lines += ["", f"## {spec.title}", "", markdown_table(spec.header, spec.body)]
    note = cold_limit_note(summary)
    if note:
        lines += ["", _md(note)]
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
