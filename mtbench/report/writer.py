"""Atomic report directories: a run writes into DIR.partial/ and renames it to DIR only when complete.

If the run is interrupted (Ctrl-C, an error), the partial directory stays, carrying an INCOMPLETE
marker file that says why, and DIR itself is never created half-written.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtbench.errors import Interrupted, MtbenchError

INCOMPLETE_MARKER = "INCOMPLETE"
SUMMARY_FILE = "summary.json"
RECORDS_FILE = "records.parquet"
MARKDOWN_FILE = "summary.md"


def default_report_dir(kind: str, root: Path = Path("reports/runs")) -> Path:
    """A fresh timestamped directory name under reports/runs/ for a run of `kind`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{kind}-{stamp}"
    suffix = 1
    while candidate.exists() or candidate.with_name(candidate.name + ".partial").exists():
        suffix += 1
        candidate = root / f"{kind}-{stamp}-{suffix}"
    return candidate


class ReportWriter:
    """Writes records.parquet, summary.json, summary.md and plots/ into a staging dir, then renames it.

    Invariant: `final_dir` exists only if every file was written and the run finished.
    """

    def __init__(self, final_dir: Path, overwrite: bool = True) -> None:
        self.final_dir = Path(final_dir)
        self.staging = self.final_dir.with_name(self.final_dir.name + ".partial")
        if self.final_dir.exists() and not overwrite:
            raise MtbenchError(f"report directory {self.final_dir} already exists")

    @property
    def plots_dir(self) -> Path:
        return self.staging / "plots"

    def __enter__(self) -> "ReportWriter":
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.plots_dir.mkdir(parents=True)
        (self.staging / INCOMPLETE_MARKER).write_text("run in progress\n")
        return self

    def write_records(self, records: pd.DataFrame | pa.Table) -> Path:
        path = self.staging / RECORDS_FILE
        if isinstance(records, pa.Table):
            pq.write_table(records, path)
        else:
            records.to_parquet(path, index=False)
        return path

    def write_table(self, name: str, table: pa.Table) -> Path:
        """Another record table, as NAME.parquet (e.g. a capacity run's measured requests)."""
        path = self.staging / f"{name}.parquet"
        pq.write_table(table, path)
        return path

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.staging / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2, sort_keys=False, default=_json_default) + "\n")
        return path

    def write_markdown(self, text: str) -> Path:
        path = self.staging / MARKDOWN_FILE
        path.write_text(text)
        return path

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            (self.staging / INCOMPLETE_MARKER).unlink()
            if self.final_dir.exists():
                shutil.rmtree(self.final_dir)
            self.staging.rename(self.final_dir)
            return
        interrupted = issubclass(exc_type, (KeyboardInterrupt, Interrupted))
        reason = "interrupted (Ctrl-C)" if interrupted else f"failed: {exc_type.__name__}: {exc}"
        (self.staging / INCOMPLETE_MARKER).write_text(f"run {reason}\n")
        if interrupted:
            exc.partial = self.staging  # type: ignore[union-attr]  # main() says where it is


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
