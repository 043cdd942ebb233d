"""`mtbench plot` and `mtbench report`: look at report directories again, alone or side by side."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mtbench.errors import MtbenchError
from mtbench.paths import check_output_dir
from mtbench.report import default_report_dir, load_report, print_summary, render_markdown
from mtbench.report.compare import comparison_json, comparison_markdown, compare_reports, print_comparison
from mtbench.report.plots import draw_plots
from mtbench.report.plots import FLEET_PLOTS
from mtbench.report.serving_plots import plots_for


class OutputFormat(str, Enum):
    table = "table"
    md = "md"
    json = "json"


def plot(
    report_dirs: list[Path] = typer.Argument(..., help="One or more report directories (overlaid when several)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Where to write the PNGs (default: DIR/plots, or a new reports/plots/overlay-* dir)."),
) -> None:
    """Draw hit-ratio curves, outcome bars, latency CDFs, speedups, bytes moved and tier occupancy.

    Examples:

      mtbench plot runs/policies

      mtbench plot runs/policies runs/policies-wt -o runs/overlay
    """
    reports = [load_report(path) for path in report_dirs]
    for report in reports:
        report.record_columns()  # a corrupt records.parquet stops here, before anything is drawn
    if out is None:
        out = reports[0].path / "plots" if len(reports) == 1 else default_report_dir("overlay", Path("reports/plots"))
    check_output_dir(out, "--out")
    console = Console()
    plots = plots_for(reports)
    with console.status(f"drawing {len(plots)} plots from {len(reports)} report(s)"):
        outcome = draw_plots(reports, out, plots=plots)
    table = Table(title=f"Plots in {out}", title_justify="left")
    table.add_column("plot", style="bold")
    table.add_column("result", overflow="fold")
    for name in (*plots, *FLEET_PLOTS):  # fleet reports draw FLEET_PLOTS instead
        file = f"{name}.png"
        if file in outcome.written or name in outcome.skipped:
            table.add_row(name, str(out / file) if file in outcome.written else f"skipped: {outcome.skipped[name]}")
    console.print(table)


def report(
    report_dirs: list[Path] = typer.Argument(..., help="A report directory, or two to compare side by side."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f",
                                               help=f"{', '.join(f.value for f in OutputFormat)}."),
    all_fields: bool = typer.Option(False, "--all-fields", help="When comparing, show every numeric field, not only the headline ones."),
) -> None:
    """Print a report's summary again, or compare two reports (rows matched by policy/capacity or run).

    Examples:

      mtbench report runs/replay

      mtbench report runs/policies runs/policies-wt --format md
    """
    if len(report_dirs) > 2:
        raise MtbenchError(f"report takes one directory, or two to compare; got {len(report_dirs)}")
    reports = [load_report(path) for path in report_dirs]
    console = Console()
    if len(reports) == 2:
        comparison = compare_reports(*reports)
        if output_format is OutputFormat.table:
            print_comparison(comparison, console, all_fields)
        elif output_format is OutputFormat.md:
            typer.echo(comparison_markdown(comparison, all_fields), nl=False)
        else:
            typer.echo(json.dumps(comparison_json(comparison), indent=2))
        return
    (single,) = reports
    if output_format is OutputFormat.table:
        print_summary(single.summary, console)
    elif output_format is OutputFormat.md:
        stored = single.path / "summary.md"
        plots = sorted(p.name for p in (single.path / "plots").glob("*.png"))
        typer.echo(stored.read_text() if stored.is_file() else render_markdown(single.summary, plots), nl=False)
    else:
        typer.echo(json.dumps(single.summary, indent=2))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `mtbench plot` and `mtbench report`."""
    app.command("plot")(plot)
    app.command("report")(report)
