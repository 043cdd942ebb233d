"""Writing and reading report directories (layout in FORMAT.md).

A report directory holds records.parquet, summary.json, summary.md and plots/*.png. It is written
through `ReportWriter`, so it exists only when complete; an interrupted write leaves DIR.partial/ with
an INCOMPLETE marker, which `load_report` refuses with a clear message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import mtbench
from mtbench.errors import MtbenchError
from mtbench.report.summary import render_markdown
from mtbench.report.writer import INCOMPLETE_MARKER, RECORDS_FILE, SUMMARY_FILE, ReportWriter, default_report_dir

SUMMARY_KEY_ORDER = ("kind", "trace", "model", "dtype", "config", "rows")


@dataclass
class Report:
    """One report: its summary dict and its records, read from disk lazily (column by column).

    `path` is None for a report still being written (records then live in `frame`).
    """

    path: Path | None
    summary: dict[str, Any]
    frame: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return str(self.summary.get("kind", ""))

    @property
    def label(self) -> str:
        """Short name for legends: the directory name, or the trace file name for an unsaved report."""
        if self.path is not None:
            return self.path.name
        return Path(str((self.summary.get("trace") or {}).get("path", self.kind))).name

    def record_columns(self) -> list[str]:
        if self.frame is not None:
            return [str(c) for c in self.frame.columns]
        return list(pq.read_schema(self.path / RECORDS_FILE).names)

    def records(self, columns: list[str] | None = None) -> pd.DataFrame:
        """records.parquet (only `columns` that exist, when given)."""
        available = self.record_columns()
        wanted = available if columns is None else [c for c in columns if c in available]
        if self.frame is not None:
            return self.frame[wanted]
        return pq.read_table(self.path / RECORDS_FILE, columns=wanted).to_pandas()


def write_report(out_dir: Path | None, summary: dict[str, Any], records: pd.DataFrame, kind: str) -> Path:
    """Write records.parquet, summary.json, summary.md and plots/*.png atomically; return the directory.

    Fills in `kind`, `mtbench_version`, `torch_version` and `created_utc`. Everything is validated
    (JSON-able summary, parquet-able records, a usable directory) before anything is written.
    """
    from mtbench.report.plots import draw_plots
    from mtbench.report.serving_plots import plots_for

    full_summary = complete_summary(summary, kind)
    table = _records_table(records)
    target = default_report_dir(kind) if out_dir is None else validate_out_dir(out_dir)
    with ReportWriter(target) as writer:
        writer.write_records(table)
        writer.write_summary(full_summary)
        report = Report(None, full_summary, records)
        outcome = draw_plots([report], writer.plots_dir, strict=False, plots=plots_for([report]))
        writer.write_markdown(render_markdown(full_summary, outcome.written, outcome.skipped))
    return target


def complete_summary(summary: dict[str, Any], kind: str) -> dict[str, Any]:
    """A JSON-clean copy of `summary` with kind, versions and creation time filled in, keys in order."""
    if not isinstance(summary, dict):
        raise MtbenchError(f"report summary must be a dict, got {type(summary).__name__}")
    if not kind:
        raise MtbenchError("report kind is empty")
    if summary.get("kind", kind) != kind:
        raise MtbenchError(f"report summary says kind {summary['kind']!r} but it is written as {kind!r}")
    rows = summary.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise MtbenchError("report summary 'rows' must be a list of dicts (one per policy/capacity or run)")
    import torch  # only for its version; imported here so summaries can be rendered without it

    filled = {**summary, "kind": kind, "rows": rows, "mtbench_version": mtbench.__version__,
              "torch_version": torch.__version__,
              "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    ordered = {k: filled[k] for k in SUMMARY_KEY_ORDER if k in filled}
    ordered.update({k: v for k, v in filled.items() if k not in ordered})
    return _json_clean(ordered)


def _json_clean(value: Any, where: str = "summary") -> Any:
    """Plain JSON types only: numpy scalars unwrapped, NaN/inf -> None, Paths -> str."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _json_clean(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise MtbenchError(f"report summary: {where} is a {type(value).__name__}, which JSON cannot hold")


def _records_table(records: pd.DataFrame) -> pa.Table:
    if not isinstance(records, pd.DataFrame):
        raise MtbenchError(f"report records must be a pandas DataFrame, got {type(records).__name__}")
    try:
        return pa.Table.from_pandas(records, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise MtbenchError(f"report records cannot be stored as parquet: {err}") from err


def validate_out_dir(out_dir: Path | str) -> Path:
    """Check that `out_dir` may become a report directory; call it before a long run starts.

    Allowed: a path that does not exist, an empty directory, or an earlier complete report directory
    (replaced). Refused: a file, a `.partial` staging name, or a non-empty directory that is not a report.
    """
    out_dir = Path(out_dir)
    if out_dir.name.endswith(".partial"):
        raise MtbenchError(f"report directory {out_dir}: names ending in .partial are reserved for unfinished runs")
    if out_dir.exists() and not out_dir.is_dir():
        raise MtbenchError(f"report directory {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SUMMARY_FILE).is_file():
        raise MtbenchError(f"report directory {out_dir} exists, is not empty and is not a report; pick another --out")
    return out_dir


def load_report(path: Path | str) -> Report:
    """Read a complete report directory; incomplete, missing or malformed ones raise MtbenchError."""
    path = Path(path)
    staging = path.with_name(path.name + ".partial")
    if path.name.endswith(".partial") or (path / INCOMPLETE_MARKER).exists():
        marker = path / INCOMPLETE_MARKER
        reason = marker.read_text().strip() if marker.is_file() else "no completion"
        raise MtbenchError(f"report directory {path} is incomplete ({reason}); rerun to get a complete report")
    if not path.exists():
        hint = f"; only an incomplete {staging.name} exists (run interrupted)" if staging.exists() else ""
        raise MtbenchError(f"no report directory at {path}{hint}")
    if not path.is_dir():
        raise MtbenchError(f"{path} is not a directory (expected a report directory)")
    summary = _read_summary(path / SUMMARY_FILE)
    if not (path / RECORDS_FILE).is_file():
        raise MtbenchError(f"report directory {path} has no {RECORDS_FILE}")
    return Report(path, summary)


def _read_summary(summary_path: Path) -> dict[str, Any]:
    if not summary_path.is_file():
        raise MtbenchError(f"{summary_path.parent} is not a report directory (no {SUMMARY_FILE})")
    try:
        summary = json.loads(summary_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MtbenchError(f"{summary_path}: not valid JSON ({err})") from err
    if not isinstance(summary, dict) or "kind" not in summary or not isinstance(summary.get("rows"), list):
        raise MtbenchError(f"{summary_path}: expected an object with 'kind' and a 'rows' list")
    bad = [i for i, row in enumerate(summary["rows"]) if not isinstance(row, dict)]
    if bad:
        raise MtbenchError(f"{summary_path}: rows[{bad[0]}] is not an object")
    return summary
