"""PNG plots of serving under load: latency and SLO attainment vs offered load (capacity reports,
simulated curves with measured points on top), GPUs needed per cache mode, and the request queue
over time of an open-loop replay. Same conventions as `mtbench.report.plots` (which they extend:
`plots_for`): figures without pyplot, `PlotSkipped` when the data cannot support a plot. A cache mode
always gets the colour of `MODE_COLORS`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mtbench.report.directory import Report
from mtbench.report.plots import PLOTS, LINESTYLES, PlotSkipped, _figure, _legend_below, _rows, log_axis

MODE_COLORS = {"none": "#7f7f7f", "gpu": "#1f77b4", "tiered": "#2ca02c"}
CURVE_COLUMNS = ["source", "cache_mode", "rate", "p50_ms", "p99_ms", "slo_attainment", "overloaded"]


def _mode_color(mode: str) -> str:
    return MODE_COLORS.get(str(mode), "#d62728")


def _curves(reports: list[Report]) -> list[tuple[Report, pd.DataFrame]]:
    found = [(r, r.records(CURVE_COLUMNS)) for r in reports
             if r.kind == "capacity" and set(CURVE_COLUMNS) <= set(r.record_columns())]
    if not found:
        raise PlotSkipped("needs a capacity report (latency per cache mode and load level)")
    return found


def _slo(reports: list[Report]) -> float | None:
    values = {(r.summary.get("config") or {}).get("slo_ms") for r in reports} - {None}
    return values.pop() if len(values) == 1 else None


def _label(reports: list[Report], report: Report, text: str) -> str:
    return f"{text} [{report.label}]" if len(reports) > 1 else text


def plot_latency_vs_load(reports: list[Report]) -> Figure:
    """p50 (dashed) and p99 (solid) latency vs offered rate per cache mode; measured points as markers;
    overloaded levels are left out (their percentiles mean nothing); the SLO as a grey line."""
    curves = _curves(reports)
    measured_any = any((frame["source"] == "measured").any() for _, frame in curves)
    title = "Latency vs load (simulated lines, measured markers)" if measured_any else "Latency vs load (simulated)"
    figure = _figure(reports, title, (9, 5))
    ax = figure.subplots()
    for variant, (report, frame) in enumerate(curves):
        for mode, part in frame.groupby("cache_mode", sort=False):
            color = _mode_color(mode)
            simulated = part[(part["source"] == "simulated") & ~part["overloaded"].astype(bool)].sort_values("rate")
            for column, style, name in (("p99_ms", LINESTYLES[variant % len(LINESTYLES)], "p99"), ("p50_ms", "--", "p50")):
                ax.plot(simulated["rate"], simulated[column], color=color, linestyle=style, linewidth=1.6,
                        label=_label(reports, report, f"{mode} {name}"))
            measured = part[(part["source"] == "measured") & ~part["overloaded"].astype(bool)]
            for column, marker, name in (("p99_ms", "o", "p99"), ("p50_ms", "^", "p50")):
                if len(measured):
                    ax.scatter(measured["rate"], measured[column], color=color, marker=marker, s=30, zorder=3,
                               edgecolors="black", linewidths=0.5, label=_label(reports, report, f"{mode} {name} measured"))
    slo = _slo(reports)
    if slo is not None:
        ax.axhline(slo, color="#555555", linestyle=":", linewidth=1.2, label=f"SLO {slo:g} ms")
    log_axis(ax, "y", [y for line in ax.get_lines() for y in line.get_ydata()]
             + [y for points in ax.collections for _, y in points.get_offsets()])
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency, arrival to scores (ms, log scale)")
    ax.grid(True, alpha=0.3)
    _legend_below(figure, ax)
    return figure


def plot_slo_attainment(reports: list[Report]) -> Figure:
    """Share of requests within the SLO vs offered rate per cache mode (simulated lines, measured markers)."""
    figure = _figure(reports, "SLO attainment vs load", (9, 5))
    ax = figure.subplots()
    for variant, (report, frame) in enumerate(_curves(reports)):
        for mode, part in frame.groupby("cache_mode", sort=False):
            simulated = part[part["source"] == "simulated"].sort_values("rate")
            ax.plot(simulated["rate"], 100 * simulated["slo_attainment"].astype(float), color=_mode_color(mode),
                    linestyle=LINESTYLES[variant % len(LINESTYLES)], linewidth=1.6, label=_label(reports, report, mode))
            measured = part[part["source"] == "measured"]
            if len(measured):
                ax.scatter(measured["rate"], 100 * measured["slo_attainment"].astype(float), color=_mode_color(mode),
                           marker="o", s=30, zorder=3, edgecolors="black", linewidths=0.5,
                           label=_label(reports, report, f"{mode} measured"))
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("requests within the SLO (%)")
    ax.set_ylim(0, 101)
    ax.grid(True, alpha=0.3)
    _legend_below(figure, ax)
    return figure


def plot_gpu_count(reports: list[Report]) -> Figure:
    """GPUs needed for the target rate per cache mode (with the max rate per GPU on each bar)."""
    bars = [(report, row) for report in reports if report.kind == "capacity" for row in _rows(report)
            if isinstance(row.get("gpus_needed"), int)]
    if not bars:
        raise PlotSkipped("needs a capacity report run with --target-qps")
    targets = sorted({row["target_qps"] for _, row in bars})
    figure = _figure(reports, f"GPUs needed for {', '.join(f'{t:,.0f}' for t in targets)} requests/s "
                              "(even split by user hash)", (max(5.0, 1.1 * len(bars) + 2), 4.5))
    ax = figure.subplots()
    names = [_label(reports, report, str(row["cache_mode"])) for report, row in bars]
    counts = [row["gpus_needed"] for _, row in bars]
    drawn = ax.bar(range(len(bars)), counts, color=[_mode_color(row["cache_mode"]) for _, row in bars], width=0.6)
    for bar, (_, row) in zip(drawn, bars):
        ax.annotate(f"{row['gpus_needed']} GPUs\n{row['max_qps']:,.0f}/s each", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), names, fontsize=9)
    ax.set_ylabel("GPUs")
    ax.set_ylim(0, max(counts) * 1.3)
    ax.grid(True, axis="y", alpha=0.3)
    return figure


def plot_queue_over_time(reports: list[Report]) -> Figure:
    """Requests waiting (arrived, batch not started) over the run, per open-loop replay run."""
    lines = []
    for report in reports:
        if report.kind != "replay" or not {"arrival_s", "start_s"} <= set(report.record_columns()):
            continue
        frame = report.records(["run", "arrival_s", "start_s"])
        for run, part in frame.groupby("run", sort=False):
            arrival, start = np.sort(part["arrival_s"].to_numpy(float)), np.sort(part["start_s"].to_numpy(float))
            times = np.linspace(arrival[0], arrival[-1], 400)
            waiting = np.searchsorted(arrival, times, side="right") - np.searchsorted(start, times, side="right")
            lines.append((_label(reports, report, str(run)), times - arrival[0], waiting))
    if not lines:
        raise PlotSkipped("needs an open-loop replay report (records with arrival_s and start_s)")
    figure = _figure(reports, "Queue length over time (open-loop replay)", (9, 4.5))
    ax = figure.subplots()
    for index, (label, times, waiting) in enumerate(lines):
        ax.plot(times, waiting, label=label, linewidth=1.3, linestyle=LINESTYLES[index % len(LINESTYLES)])
    ax.set_xlabel("time since the first arrival (s)")
    ax.set_ylabel("requests waiting")
    ax.grid(True, alpha=0.3)
    _legend_below(figure, ax)
    return figure


SERVING_PLOTS: dict[str, Callable[[list[Report]], Figure]] = {
    "latency_vs_load": plot_latency_vs_load,
    "slo_attainment": plot_slo_attainment,
    "gpu_count": plot_gpu_count,
    "queue_over_time": plot_queue_over_time,
}
ALL_PLOTS = {**PLOTS, **SERVING_PLOTS}


def plots_for(reports: list[Report]) -> dict[str, Callable[[list[Report]], Figure]]:
    """The plots to draw: the serving ones join only when a report serves under load (a capacity report,
    or an open-loop replay), so other reports do not list them as skipped."""
    serving = any(r.kind == "capacity" or "arrival_s" in r.record_columns() for r in reports)
    return ALL_PLOTS if serving else PLOTS
