"""Writing a report directory: records, summary, markdown and plots, atomically (`ReportWriter`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mtbench.report.directory import Report, complete_summary, records_table, validate_out_dir
from mtbench.report.summary import render_markdown
from mtbench.report.writer import ReportWriter


def write_report(out_dir: Path | None, summary: dict[str, Any], records: pd.DataFrame, kind: str,
                 force: bool = False, tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write records.parquet, summary.json, summary.md and plots/*.png atomically; return the directory.

    Fills in `kind`, `mtbench_version`, `torch_version` and `created_utc`. Everything is validated
    (JSON-able summary, parquet-able records and `tables`, a usable directory) before anything is
    written; an existing report at `out_dir` is replaced only with `force`. `tables`: more record
    tables, each written as NAME.parquet beside records.parquet.
    """
    from mtbench.report.plots import draw_plots  # matplotlib only when a report is written
    from mtbench.report.serving_plots import plots_for

    full_summary = complete_summary(summary, kind)
    table = records_table(records)
    extra = {name: records_table(frame) for name, frame in (tables or {}).items()}
    target = validate_out_dir(out_dir, force, kind)
    with ReportWriter(target) as writer:
        writer.write_records(table)
        for name, frame in extra.items():
            writer.write_table(name, frame)
        writer.write_summary(full_summary)
        report = Report(None, full_summary, records)
        outcome = draw_plots([report], writer.plots_dir, strict=False, plots=plots_for([report]))
        writer.write_markdown(render_markdown(full_summary, outcome.written, outcome.skipped))
    return target
