"""PNG plots of one or several report directories, overlaid.

Each plot function takes the reports and returns a matplotlib Figure, or raises `PlotSkipped` with the
reason when the data cannot support it (e.g. one GPU capacity only, no per-request records). Figures
are built without pyplot (Agg canvas, no display, no global state). Colours: a policy always gets the
colour of `policy_color`; in per-outcome plots the outcome colours of `OUTCOME_COLORS` are used.
Several reports (or runs of one replay) are told apart by line style, marker and hatch.

Every figure keeps its text readable and inside the image: the title names the data (wrapped to the
figure width), the legend sits below the axes, log axes label every tick they show (each capacity of a
capacity axis), and replay records of warm-up requests are left out as in the tables.
"""

from __future__ import annotations

import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter, NullLocator

from mtbench.report.directory import Report
from mtbench.report.summary import capacity_unit, format_capacity_cell

POLICY_COLORS = {
    "lru": "#1f77b4", "fifo": "#ff7f0e", "lfu": "#2ca02c", "arc": "#d62728", "s3fifo": "#9467bd",
    "sieve": "#8c564b", "gdsf": "#e377c2", "locality": "#17becf", "opt": "#000000", "none": "#7f7f7f",
}
_FALLBACK_COLORS = ("#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
                    "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
OPT_NAMES = {"opt", "belady"}
OUTCOME_COLUMNS = {"gpu_hit": "gpu_hits", "host_hit": "host_hits", "partial_hit": "partial_hits",
                   "host_recompute": "host_recomputes", "miss": "misses", "stale": "stale"}
OUTCOME_COLORS = {"gpu_hit": "#1b9e77", "host_hit": "#7570b3", "partial_hit": "#e6ab02", "host_recompute": "#e7298a",
                  "miss": "#d95f02", "stale": "#a6a6a6"}
OUTCOME_LABELS = {"gpu_hit": "GPU hit", "host_hit": "host hit", "partial_hit": "partial hit (appended)",
                  "host_recompute": "host, recomputed", "miss": "miss", "stale": "stale"}
OPTIONAL_OUTCOMES = ("partial_hit", "host_recompute")  # shown only where some bar has them
LINESTYLES = ("-", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo")
MAX_LINE_POINTS = 2000
DPI = 110
TITLE_FONT_SIZE = 10
TITLE_CHARS_PER_INCH = 12  # characters of a 10 pt title line that fit in one inch of figure width
LEGEND_CHARS_PER_INCH = 14  # the same for 8 pt legend labels (plus the handle), to choose legend columns


class PlotSkipped(Exception):
    """The data of these reports cannot support this plot; the message says why."""


@dataclass
class PlotOutcome:
    """File names written (relative to the output dir) and skipped plot names with reasons."""

    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def policy_key(name: Any) -> str:
    """Normalised policy name: 'S3-FIFO' and 's3_fifo' -> 's3fifo'."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def policy_color(name: Any) -> str:
    """The fixed colour of a policy, the same in every plot and every run (unknown names: stable hash)."""
    key = policy_key(name)
    if key in OPT_NAMES:
        return POLICY_COLORS["opt"]
    if key in POLICY_COLORS:
        return POLICY_COLORS[key]
    return _FALLBACK_COLORS[zlib.crc32(key.encode()) % len(_FALLBACK_COLORS)]


def is_opt(name: Any) -> bool:
    return policy_key(name) in OPT_NAMES


def row_policy(row: dict[str, Any]) -> str:
    """A row's policy; replay rows without a cache ('none' run or cache_mode) count as 'none'."""
    if row.get("policy"):
        return str(row["policy"])
    return "none" if row.get("cache_mode") in (None, "none") else str(row.get("cache_mode"))


# ----------------------------------------------------------------------------------------------- context
def _rows(report: Report) -> list[dict[str, Any]]:
    return [row for row in report.summary.get("rows") or [] if isinstance(row, dict)]


def _capacity_text(reports: list[Report], column: str) -> str:
    texts = []
    for unit in ("bytes", "entries"):
        values = sorted({row[column] for r in reports if capacity_unit(r.summary) == unit
                         for row in _rows(r) if isinstance(row.get(column), (int, float)) and row[column] > 0})
        if not values:
            continue
        show = (lambda v, unit=unit: format_capacity_cell(v, unit, with_unit=True))
        texts.append(show(values[0]) if len(values) == 1 else f"{show(values[0])}–{show(values[-1])} ({len(values)} sizes)")
    return ", ".join(texts) or "none"


def _has_column(reports: list[Report], column: str) -> bool:
    return any(column in row for r in reports for row in _rows(r))


def plot_context(reports: list[Report]) -> str:
    """'trace X · model M (dtype) · GPU a–b · host c': the title line naming the data of every plot."""
    traces = sorted({Path(str((r.summary.get("trace") or {}).get("path", "?"))).name for r in reports})
    models = sorted({f"{r.summary.get('model', '?')} ({r.summary.get('dtype', '?')})" for r in reports})
    devices = sorted({str(r.summary["device"]) for r in reports if r.summary.get("device")})
    parts = [f"trace {', '.join(traces)}", f"model {', '.join(models)}"] + ([f"device {', '.join(devices)}"] if devices else [])
    parts += [f"{tier} {_capacity_text(reports, column)}" for tier, column in (("GPU", "gpu_capacity"), ("host", "host_capacity"))
              if _has_column(reports, column)]
    return " · ".join(parts)


def _figure(reports: list[Report], what: str, size: tuple[float, float]) -> Figure:
    return titled_figure(what, [plot_context(reports)], size)


def titled_figure(what: str, contexts: list[str], size: tuple[float, float]) -> Figure:
    """A figure titled `what` and then each context line, every line wrapped to fit the figure's width."""
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    width = max(20, int(size[0] * TITLE_CHARS_PER_INCH))
    lines = [line for text in (what, *contexts) for line in textwrap.wrap(text, width, break_on_hyphens=False)]
    figure.suptitle("\n".join(lines), fontsize=TITLE_FONT_SIZE)
    return figure


def _source_prefix(reports: list[Report], report: Report) -> str:
    return f"{report.label}: " if len(reports) > 1 else ""


def _capacity(report: Report, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return format_capacity_cell(value, capacity_unit(report.summary), with_unit=True)


def _byte_scale(max_value: float) -> tuple[float, str]:
    for divisor, unit in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if max_value >= divisor:
            return float(divisor), unit
    return 1.0, "B"


# --------------------------------------------------------------------------------------- hit-ratio curve
def plot_hit_ratio_curve(reports: list[Report]) -> Figure:
    """Hit ratio (and GPU-tier hit ratio when a host tier exists) vs GPU capacity per policy.

    Each policy has its own open marker, of one of three sizes so that equal points nest: curves that
    coincide stay visible. OPT (the bound) is a wide translucent black dashed band drawn beneath them.
    The log x axis labels every capacity.
    """
    units = {capacity_unit(r.summary) for r in reports}
    if len(units) > 1:
        raise PlotSkipped("the reports mix byte and entry capacities")
    series: dict[tuple[str, str, str, Any], list[dict[str, Any]]] = {}
    for report in reports:
        hosts = {row.get("host_capacity") for row in _rows(report)}
        for row in _rows(report):
            if not (isinstance(row.get("gpu_capacity"), (int, float)) and row["gpu_capacity"] > 0
                    and isinstance(row.get("hit_ratio"), (int, float)) and row.get("requests")):
                continue
            run = str(row.get("run", "")) if report.kind == "replay" else ""
            host = row.get("host_capacity") if len(hosts) > 1 else None
            series.setdefault((report.label, row_policy(row), run, host), []).append(row)
    curves = {key: rows for key, rows in series.items() if len({r["gpu_capacity"] for r in rows}) >= 2}
    if not curves:
        raise PlotSkipped("needs hit ratios at two or more GPU capacities for one policy")
    with_host = any(r.get("host_hits") for rows in curves.values() for r in rows)
    unit = units.pop()
    figure = _figure(reports, "Hit ratio vs GPU capacity (higher is better)", (10.5 if with_host else 7.5, 5.5))
    axes = figure.subplots(1, 2 if with_host else 1, squeeze=False)[0]
    panels = [("hit_ratio", "hit ratio, GPU + host (%)" if with_host else "hit ratio (%)")]
    if with_host:
        panels.append(("gpu_hit_ratio", "GPU-tier hit ratio (%)"))
    variants = _variant_index([(k[0], k[2], k[3]) for k in curves])
    markers = _variant_index(sorted({policy_key(k[1]) for k in curves if not is_opt(k[1])}))
    capacities = sorted({float(r["gpu_capacity"]) for rows in curves.values() for r in rows})
    for ax, (column, ylabel) in zip(axes, panels):
        for (source, policy, run, host), rows in sorted(curves.items(), key=lambda kv: (is_opt(kv[0][1]), kv[0])):
            rows = sorted((r for r in rows if isinstance(r.get(column), (int, float))), key=lambda r: r["gpu_capacity"])
            variant = variants[(source, run, host)]
            label = " ".join(p for p in (policy + (" (bound)" if is_opt(policy) else ""), run,
                                         f"host {format_capacity_cell(host, unit, with_unit=True)}" if host is not None else "",
                                         f"[{source}]" if len(reports) > 1 else "") if p)
            x = [float(r["gpu_capacity"]) for r in rows]
            y = [100 * r[column] for r in rows]
            if is_opt(policy):
                ax.plot(x, y, color=policy_color(policy), label=label, linestyle="--", linewidth=5, alpha=0.3, zorder=1)
            else:
                marker = markers[policy_key(policy)]
                ax.plot(x, y, color=policy_color(policy), label=label, linewidth=1.4, zorder=2,
                        linestyle=LINESTYLES[variant % len(LINESTYLES)], marker=MARKERS[marker % len(MARKERS)],
                        markersize=11 - 2 * (marker % 3), fillstyle="none", markeredgewidth=1.3)  # nested when equal
        ax.set_xscale("log")
        _fixed_ticks(ax.xaxis, capacities, lambda v: format_capacity_cell(v, unit, with_unit=True))
        ax.set_xlabel("GPU capacity (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(_ratio_floor(curves, column), 100)
        ax.grid(True, alpha=0.3)
    _legend_below(figure, axes)
    return figure


def _ratio_floor(curves: dict[Any, list[dict[str, Any]]], column: str) -> float:
    """The y axis starts at the ten below the lowest ratio (%), so close curves are told apart."""
    lowest = min((100 * r[column] for rows in curves.values() for r in rows if _is_number(r.get(column))), default=0.0)
    return max(0.0, 10 * np.floor(lowest / 10 - 0.25))


def _legend_below(figure: Figure, axes: Any, title: str | None = None) -> None:
    """One legend for the figure, below the axes (clear of the title), each label once."""
    entries: dict[str, Any] = {}
    for ax in np.atleast_1d(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return
    widest = max(len(label) for label in entries) + 4
    columns = max(1, min(len(entries), int(figure.get_figwidth() * LEGEND_CHARS_PER_INCH) // widest))
    figure.legend(list(entries.values()), list(entries), loc="outside lower center", fontsize=8, title=title,
                  title_fontsize=8, ncols=columns)


def _fixed_ticks(axis: Any, values: list[float], text: Callable[[float], str], max_labels: int = 12) -> None:
    """Ticks (and labels) exactly at `values`, thinned evenly to at most `max_labels`; no minor labels."""
    values = sorted(set(values))
    if len(values) > max_labels:
        values = [values[i] for i in np.unique(np.linspace(0, len(values) - 1, max_labels).round().astype(int))]
    axis.set_major_locator(FixedLocator(values))
    axis.set_ticklabels([text(v) for v in values])
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
    if len(values) > 6 and axis is axis.axes.xaxis:
        for label in axis.get_ticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")


def log_axis(ax: Axes, which: str, values: list[float]) -> None:
    """The `which` ("x" or "y") axis of `ax` on a log scale over the positive `values`, labelled at
    `_log_ticks`: readable at any range, even within one decade."""
    positive = [v for v in values if v > 0] or [1.0]
    low, high = min(positive), max(positive)
    ticks = _log_ticks(low, high)
    getattr(ax, f"set_{which}scale")("log")
    _fixed_ticks(getattr(ax, f"{which}axis"), ticks, lambda value: f"{value:g}")
    getattr(ax, f"set_{which}lim")(min(low, ticks[0]) / 1.1, max(high, ticks[-1]) * 1.1)


def _log_ticks(low: float, high: float) -> list[float]:
    """Ticks for a log axis over [low, high]: the sparsest of 1, 1-3, 1-2-5 or 1..9 steps per decade
    that gives three ticks, so a range of many decades is not crowded and one within a decade is labelled."""
    low, high = max(low, 1e-9), max(high, low * 1.0001)
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    for steps in ((1,), (1, 3), (1, 2, 5), tuple(range(1, 10))):
        ticks = [float(f"{m * 10.0**d:.6g}") for d in decades for m in steps if low <= m * 10.0**d <= high]
        if len(ticks) >= 3:
            return ticks
    # a range narrower than one mantissa step: round linear steps (0.030, 0.0325, ...) within it
    ticks = [float(f"{t:.6g}") for t in MaxNLocator(nbins=4).tick_values(low, high) if low <= t <= high]
    return ticks if len(ticks) >= 2 else [low, high]


def _variant_index(keys: list[Any]) -> dict[Any, int]:
    return {key: i for i, key in enumerate(dict.fromkeys(keys))}


# ---------------------------------------------------------------------------------------- outcome bars
def plot_outcomes(reports: list[Report]) -> Figure:
    """Stacked bars of the share of requests served from GPU, from host, missed, stale.

    compare-policies: one panel per GPU capacity, a bar per policy; replay: one panel per report, a bar
    per run. At most MAX_PANELS panels (evenly spaced capacities when there are more).
    """
    panels: dict[tuple[Any, ...], list[tuple[str, str, dict[str, Any]]]] = {}
    for report in reports:
        hosts = {row.get("host_capacity") for row in _rows(report)}
        for row in _rows(report):
            if not (row.get("requests") and any(_is_number(row.get(c)) for c in OUTCOME_COLUMNS.values())):
                continue
            if report.kind == "replay":
                key: tuple[Any, ...] = (1, report.label, 0, f"replay runs of {report.label}")
                name = str(row.get("run", row_policy(row)))
            else:
                host = f" / host {_capacity(report, row.get('host_capacity'))}" if len(hosts) > 1 else ""
                key = (0, capacity_unit(report.summary), float(row.get("gpu_capacity") or 0),
                       f"GPU {_capacity(report, row.get('gpu_capacity'))}{host}")
                name = _source_prefix(reports, report) + row_policy(row)
            panels.setdefault(key, []).append((name, row_policy(row), row))
    if not panels:
        raise PlotSkipped("no row has request outcome counts (gpu_hits, host_hits, misses, stale)")
    keys = sorted(panels)
    shown = [keys[i] for i in np.unique(np.linspace(0, len(keys) - 1, min(len(keys), MAX_PANELS)).round().astype(int))]
    columns = min(3, len(shown))
    rows = -(-len(shown) // columns)
    widest = max(len(panels[k]) for k in shown)
    what = "Request outcomes per tier" + (f" ({len(shown)} of {len(keys)} panels)" if len(shown) < len(keys) else "")
    figure = _figure(reports, what, (max(3.0, 0.45 * widest + 1.6) * columns + 1.5, 3.6 * rows + 1.2))
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    for ax, key in zip(axes, shown):
        _outcome_panel(ax, panels[key])
        ax.set_title(key[3], fontsize=9)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    for ax in axes[: len(shown)]:
        ax.set_ylabel("share of requests (%)")
        ax.tick_params(labelleft=True)  # shared y, but every panel is read on its own
    _legend_below(figure, axes[: len(shown)], title="outcome")
    return figure


MAX_PANELS = 9


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _outcome_panel(ax: Axes, bars: list[tuple[str, str, dict[str, Any]]]) -> None:
    positions = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for outcome, column in OUTCOME_COLUMNS.items():
        shares = np.array([100 * float(row.get(column) or 0) / row["requests"] for _, _, row in bars])
        if outcome in OPTIONAL_OUTCOMES and not shares.any():
            continue  # bidirectional prefixes; simulator rows, and replays that loaded every host hit
        ax.bar(positions, shares, bottom=bottom, color=OUTCOME_COLORS[outcome], label=OUTCOME_LABELS[outcome],
               edgecolor="white", linewidth=0.5, width=0.75)
        bottom += shares
    ax.set_xticks(positions, [name for name, _, _ in bars], fontsize=8, rotation=45, ha="right")
    for tick, (_, policy, _) in zip(ax.get_xticklabels(), bars):
        tick.set_color(policy_color(policy))
    ax.set_ylim(0, 100)
    ax.grid(True, axis="y", alpha=0.3)


# ----------------------------------------------------------------------------------------- latency CDF
def plot_latency_cdf(reports: list[Report]) -> Figure:
    """Per run: the CDF of request latency, one line per outcome plus all requests (replay records).

    Warm-up requests are left out, as in the tables; every panel shares one labelled log x range.
    """
    panels: list[tuple[str, pd.DataFrame]] = []
    for report in reports:
        if not {"latency_ms", "outcome"} <= set(report.record_columns()):
            continue
        frame = _timed_records(report, ["run", "latency_ms", "outcome"])
        frame = frame[np.isfinite(frame["latency_ms"].to_numpy(dtype=float))]
        runs = frame.groupby("run", sort=False) if "run" in frame else [("", frame)]
        panels += [(_source_prefix(reports, report) + str(run), part) for run, part in runs if len(part)]
    if not panels:
        raise PlotSkipped("needs per-request records with latency_ms and outcome (replay reports)")
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure = _figure(reports, "Request latency CDF by outcome (warm-up excluded)", (4.2 * columns + 1, 3.4 * rows + 1))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    every_latency = np.concatenate([part["latency_ms"].to_numpy(dtype=float) for _, part in panels]).tolist()
    for ax, (title, part) in zip(axes, panels):
        _cdf_line(ax, part["latency_ms"].to_numpy(dtype=float), f"all ({len(part):,})", "black", "--")
        for outcome, color in OUTCOME_COLORS.items():
            latencies = part.loc[part["outcome"] == outcome, "latency_ms"].to_numpy(dtype=float)
            if len(latencies):
                _cdf_line(ax, latencies, f"{OUTCOME_LABELS[outcome]} ({len(latencies):,})", color, "-")
        ax.set_title(title, fontsize=9)
        log_axis(ax, "x", every_latency)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests ≤ latency")
        ax.set_ylim(0, 1.01)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return figure


def _timed_records(report: Report, columns: list[str]) -> pd.DataFrame:
    """The report's records without the warm-up requests (which no table counts either)."""
    frame = report.records([*columns, "warmup"])
    if "warmup" not in frame:
        return frame
    return frame.loc[~frame["warmup"].to_numpy(dtype=bool), [c for c in columns if c in frame]]


def _cdf_line(ax: Axes, values: np.ndarray, label: str, color: str, linestyle: str) -> None:
    values = np.sort(values[values > 0]) if (values > 0).any() else np.sort(values)
    fractions = np.arange(1, len(values) + 1) / len(values)
    if len(values) > MAX_LINE_POINTS:
        keep = np.unique(np.linspace(0, len(values) - 1, MAX_LINE_POINTS).astype(np.int64))
        values, fractions = values[keep], fractions[keep]
    ax.step(values, fractions, where="post", color=color, linestyle=linestyle, label=label, linewidth=1.4)


# ------------------------------------------------------------------------------------ grouped bar charts
@dataclass(frozen=True)
class Bar:
    """One bar of a grouped bar chart: its x group, its series (legend entry), colour and hatch keys."""

    group: str
    series: str
    policy: str
    variant: Any
    value: float


def _grouped_bars(ax: Axes, bars: list[Bar], scale: float = 1.0) -> None:
    """Bars side by side within each x group (only the series present there), colour = policy."""
    groups = list(dict.fromkeys(b.group for b in bars))
    series_order = {name: i for i, name in enumerate(dict.fromkeys(b.series for b in bars))}
    variants = _variant_index([b.variant for b in bars])
    for position, group in enumerate(groups):
        members = sorted((b for b in bars if b.group == group), key=lambda b: series_order[b.series])
        width = 0.8 / len(members)
        for index, bar in enumerate(members):
            variant = variants[bar.variant]
            ax.bar(position - 0.4 + width * (index + 0.5), bar.value / scale, width=width, label=bar.series,
                   color=policy_color(bar.policy), hatch=HATCHES[variant % len(HATCHES)],
                   edgecolor="white" if variant == 0 else "#333333", linewidth=0.5)
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=30 if len(groups) > 6 else 0)
    ax.grid(True, axis="y", alpha=0.3)


def _bar(reports: list[Report], report: Report, row: dict[str, Any], group: str, value: float) -> Bar:
    """A bar for one row: compare-policies series are policies, replay series are runs (hatched apart)."""
    prefix = _source_prefix(reports, report)
    if report.kind == "replay":
        run = str(row.get("run", row_policy(row)))
        return Bar(group, prefix + run, row_policy(row), (report.label, run), value)
    host = f" / host {_capacity(report, row.get('host_capacity'))}" if len(
        {r.get("host_capacity") for r in _rows(report)}) > 1 else ""
    return Bar(group, prefix + row_policy(row) + host, row_policy(row), (report.label, host), value)


def _bar_panels(figure: Figure, panels: list[tuple[list[Bar], str, str, str]], columns: int,
                scales: list[float] | None = None) -> list[Axes]:
    """Draw (bars, title, x label, y label) panels on a grid of `columns` with one legend outside."""
    rows = -(-len(panels) // columns)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for index, (ax, (bars, title, xlabel, ylabel)) in enumerate(zip(axes, panels)):
        _grouped_bars(ax, bars, scales[index] if scales else 1.0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    _legend_below(figure, axes[: len(panels)])
    return list(axes[: len(panels)])


def _panel_width(panels: list[tuple[list[Bar], str, str, str]]) -> float:
    return max(max(5.0, 0.16 * len(bars) + 2.5) for bars, *_ in panels)


def plot_speedup(reports: list[Report]) -> Figure:
    """Replay: measured speedup vs each baseline that ran, per run; compare-policies: estimated speedup."""
    ylabel = "speedup (×, higher is better)"
    measured = [_bar(reports, r, row, column.removeprefix("speedup_"), float(row[column]))
                for r in reports if r.kind == "replay" for row in _rows(r)
                for column in ("speedup_vs_none", "speedup_vs_gpu", "speedup_vs_sync") if _is_number(row.get(column))]
    estimated = [_bar(reports, r, row, _capacity(r, row.get("gpu_capacity")), float(row["est_speedup"]))
                 for r in reports if r.kind != "replay" for row in _rows(r) if _is_number(row.get("est_speedup"))]
    panels = [(bars, title, xlabel, ylabel) for bars, title, xlabel in (
        (measured, "measured (replay) speedup of each run vs baseline runs", "baseline"),
        (estimated, "estimated speedup vs no cache (cost model)", "GPU capacity"),
    ) if bars]
    if not panels:
        raise PlotSkipped("no row has speedup_vs_* (replay) or est_speedup (compare-policies)")
    figure = _figure(reports, "Speedup vs baselines", (_panel_width(panels) * len(panels) + 2.5, 5))
    for ax in _bar_panels(figure, panels, columns=len(panels)):
        ax.axhline(1.0, color="#555555", linestyle="--", linewidth=1)
    return figure


def _has_host_tier(row: dict[str, Any]) -> bool:
    """Rows of runs without a host tier (replay's none and gpu baselines) move no bytes between tiers."""
    return not (row.get("host_capacity") == 0 or row.get("cache_mode") in ("none", "gpu"))


def plot_bytes_moved(reports: list[Report]) -> Figure:
    """Bytes copied host->GPU (loads) and GPU->host (write-backs): per policy and capacity, or per run."""
    panels = []
    for column, direction in (("bytes_h2d", "host → GPU (loads)"), ("bytes_d2h", "GPU → host (write-backs)")):
        for replay, xlabel in ((False, "GPU capacity"), (True, "replay report")):
            bars = [_bar(reports, r, row, r.label if replay else _capacity(r, row.get("gpu_capacity")), float(row[column]))
                    for r in reports if (r.kind == "replay") == replay for row in _rows(r)
                    if _is_number(row.get(column)) and _has_host_tier(row)]
            if bars:
                panels.append((bars, direction, xlabel, ""))
    if not any(b.value for bars, *_ in panels for b in bars):
        raise PlotSkipped("no bytes moved between tiers (no bytes_h2d/bytes_d2h, or all zero)")
    scaled = [(_byte_scale(max(b.value for b in bars)), bars, title, xlabel) for bars, title, xlabel, _ in panels]
    panels = [(bars, title, xlabel, f"bytes moved ({unit})") for (_, unit), bars, title, xlabel in scaled]
    columns = len({xlabel for _, _, xlabel, _ in panels})  # a row per direction, a column per report kind
    figure = _figure(reports, "Bytes moved per direction", (_panel_width(panels) * columns + 2.5, 8))
    _bar_panels(figure, panels, columns, scales=[scale for (scale, _), *_ in scaled])
    return figure


# ------------------------------------------------------------------------------------------- occupancy
def plot_occupancy(reports: list[Report]) -> Figure:
    """GPU and host tier bytes in use over the trace, per run (replay records), capacities dashed.

    Runs that keep nothing in a tier are left out of its panel; runs whose lines coincide stay visible
    through their markers (spread along the line); the warm-up requests are shaded.
    """
    lines: list[tuple[Report, str, str, pd.DataFrame]] = []
    for report in reports:
        columns = set(report.record_columns())
        if "gpu_used_bytes" not in columns:
            continue
        frame = report.records(["run", "ts", "request_index", "gpu_used_bytes", "host_used_bytes", "warmup"])
        policies = {str(row.get("run")): row_policy(row) for row in _rows(report)}
        for run, part in (frame.groupby("run", sort=False) if "run" in frame else [("", frame)]):
            if len(part):
                lines.append((report, _source_prefix(reports, report) + str(run), policies.get(str(run), str(run)), part))
    if not lines:
        raise PlotSkipped("needs per-request records with gpu_used_bytes (replay reports)")
    with_host = any("host_used_bytes" in part and part["host_used_bytes"].fillna(0).any() for *_, part in lines)
    panels = [("gpu_used_bytes", "gpu_capacity", "GPU tier")] + (
        [("host_used_bytes", "host_capacity", "host tier")] if with_host else [])
    peak = max(float(part[c].max()) for *_, part in lines for c, _, _ in panels if c in part)
    capacities = [float(row[cap]) for r, *_ in lines for row in _rows(r) for _, cap, _ in panels
                  if isinstance(row.get(cap), (int, float))]
    scale, unit = _byte_scale(max([peak, *capacities]))
    figure = _figure(reports, "Tier occupancy over the trace", (10, 3.3 * len(panels) + 1))
    axes = figure.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    variants = _variant_index([label for _, label, _, _ in lines])
    use_ts = all("ts" in part and part["ts"].max() > part["ts"].min() for *_, part in lines)  # else by index
    warmup_end = _warmup_end(lines, use_ts)
    start = min(float(part["ts" if use_ts else "request_index"].min()) for *_, part in lines) \
        if (use_ts or all("request_index" in part for *_, part in lines)) else 0.0
    for ax, (column, capacity_column, title) in zip(axes, panels):
        for report, label, policy, part in lines:
            used = part[column].fillna(0).to_numpy(dtype=float) if column in part else np.zeros(len(part))
            if not used.any():
                continue
            x = part["ts" if use_ts else "request_index"].to_numpy(dtype=float) if (use_ts or "request_index" in part) \
                else np.arange(len(part), dtype=float)
            x, y = _binned_max(x, used / scale)
            variant = variants[label]
            ax.plot(x, y, color=policy_color(policy), linestyle=LINESTYLES[variant % len(LINESTYLES)], label=label,
                    linewidth=1.3, marker=MARKERS[variant % len(MARKERS)], fillstyle="none", markersize=6,
                    markevery=(variant * max(1, len(x) // (8 * len(lines))), max(1, len(x) // 8)))
        for value in sorted({c for c in _capacity_values(lines, capacity_column)}):
            ax.axhline(value / scale, color="#555555", linestyle="--", linewidth=1,
                       label=f"{title} capacity {format_capacity_cell(value, 'bytes')}")
        if warmup_end is not None:
            ax.axvspan(start, warmup_end, color="#dddddd", alpha=0.6, zorder=0,
                       label="warm-up (not in the tables)")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(f"bytes in use ({unit})")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelbottom=True)  # shared x, but every panel is read on its own
        ax.set_xlabel("trace time (s)" if use_ts else "request index")
    _legend_below(figure, axes)
    return figure


def _warmup_end(lines: list[tuple[Report, str, str, pd.DataFrame]], use_ts: bool) -> float | None:
    """Where on the x axis the first timed (non warm-up) request of any run is, if there was a warm-up."""
    ends = [float(part.loc[~part["warmup"].to_numpy(dtype=bool), "ts" if use_ts else "request_index"].min())
            for *_, part in lines if "warmup" in part and part["warmup"].any() and not part["warmup"].all()
            and (use_ts or "request_index" in part)]
    return min(ends) if ends else None


def _capacity_values(lines: list[tuple[Report, str, str, pd.DataFrame]], column: str) -> set[float]:
    return {float(row[column]) for report, *_ in lines if capacity_unit(report.summary) == "bytes"
            for row in _rows(report) if isinstance(row.get(column), (int, float)) and row[column] > 0}


def _binned_max(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_LINE_POINTS points: the max of y over equal-count bins keeps the peaks visible."""
    if len(x) <= MAX_LINE_POINTS:
        return x, y
    edges = np.linspace(0, len(x), MAX_LINE_POINTS + 1).astype(np.int64)
    return x[edges[:-1]], np.maximum.reduceat(y, edges[:-1])


# ------------------------------------------------------------------------------------------------ fleet
ROUTER_COLORS = {"round-robin": "#d95f02", "random": "#7570b3", "user-hash": "#1b9e77", "consistent-hash": "#e7298a",
                 "residency": "#000000"}
ROUTER_STYLES = {"round-robin": ("o", "-"), "random": ("s", "-."), "user-hash": ("^", "-"),
                 "consistent-hash": ("x", ":"), "residency": ("D", "-")}


def _fleet_series(reports: list[Report]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(report label, router) -> fleet rows sorted by replica count; skipped when no router has two counts."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for report in reports:
        if report.kind != "fleet":
            continue
        for row in _rows(report):
            series.setdefault((report.label, str(row.get("router"))), []).append(row)
    series = {key: sorted(rows, key=lambda r: r["replicas"]) for key, rows in series.items()
              if len({r.get("replicas") for r in rows}) >= 2}
    if not series:
        raise PlotSkipped("needs fleet reports with two or more replica counts for a router")
    return series


def _fleet_figure(reports: list[Report], what: str, size: tuple[float, float]) -> Figure:
    """A figure titled with the fleet's trace, model, policy and per-replica tiers."""
    contexts = []
    for report in reports:
        config = report.summary.get("config") or {}
        trace = Path(str((report.summary.get("trace") or {}).get("path", "?"))).name
        gpu, host = config.get("gpu_capacity"), config.get("host_capacity")
        contexts.append(f"trace {trace} · model {report.summary.get('model', '?')} ({report.summary.get('dtype', '?')}) · "
                        f"{config.get('policy', '?')} · per replica GPU "
                        f"{format_capacity_cell(gpu, 'bytes') if isinstance(gpu, int) else '?'}, host "
                        f"{format_capacity_cell(host, 'bytes') if isinstance(host, int) else '?'}")
    return titled_figure(what, list(dict.fromkeys(contexts)), size)


def _router_style(router: str, variant: int) -> dict[str, Any]:
    """A router's colour, marker and line style; reports after the first get another line style."""
    marker, linestyle = ROUTER_STYLES.get(router, ("o", "-"))
    return {"color": ROUTER_COLORS.get(router, policy_color(router)), "marker": marker, "markersize": 5,
            "linestyle": linestyle if variant == 0 else LINESTYLES[variant % len(LINESTYLES)], "linewidth": 1.6}


def _fleet_axes(ax: Axes, ylabel: str, replicas: list[float]) -> None:
    """Log-2 replica axis labelled at every replica count of the data."""
    ax.set_xscale("log", base=2)
    _fixed_ticks(ax.xaxis, replicas, lambda value: f"{value:g}")
    ax.set_xlabel("replicas (GPUs, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def plot_fleet_hit_ratio(reports: list[Report]) -> Figure:
    """Hit ratio (GPU + host, and GPU tier alone) against the number of replicas, one line per router."""
    series = _fleet_series(reports)
    figure = _fleet_figure(reports, "Hit ratio vs replicas", (10.5, 4.6))
    axes = figure.subplots(1, 2, squeeze=False)[0]
    variants = _variant_index([source for source, _ in series])
    for ax, (column, ylabel) in zip(axes, (("hit_ratio", "hit ratio, GPU + host (%)"),
                                           ("gpu_hit_ratio", "GPU-tier hit ratio (%)"))):
        for (source, router), rows in series.items():
            ax.plot([r["replicas"] for r in rows], [100 * r[column] for r in rows],
                    **_router_style(router, variants[source]), label=router + (f" [{source}]" if len(variants) > 1 else ""))
        _fleet_axes(ax, ylabel, [r["replicas"] for rows in series.values() for r in rows])
        ax.set_ylim(0, 100)
    _legend_below(figure, axes, "router")
    return figure


def plot_fleet_p99(reports: list[Report]) -> Figure:
    """Estimated p99 latency against the number of replicas at the offered rate; overloaded points omitted."""
    series = _fleet_series(reports)
    if not any(isinstance(r.get("p99_ms"), (int, float)) for rows in series.values() for r in rows):
        raise PlotSkipped("every fleet point is overloaded at the offered rate (no p99)")
    rates = sorted({r.get("offered_qps") for rows in series.values() for r in rows if r.get("offered_qps")})
    what = "Estimated p99 latency vs replicas" + (f" at {rates[0]:,.3g} requests/s" if len(rates) == 1 else "")
    figure = _fleet_figure(reports, what, (10.0, 4.6))
    ax = figure.subplots()
    variants = _variant_index([source for source, _ in series])
    for (source, router), rows in series.items():
        points = [(r["replicas"], r["p99_ms"]) for r in rows if isinstance(r.get("p99_ms"), (int, float))]
        if not points:
            continue
        ax.plot(*zip(*points), **_router_style(router, variants[source]),
                label=router + (f" [{source}]" if len(variants) > 1 else ""))
    _fleet_axes(ax, "p99 latency (ms, log scale; missing = overloaded)",
                [r["replicas"] for rows in series.values() for r in rows])
    log_axis(ax, "y", [r["p99_ms"] for rows in series.values() for r in rows if _is_number(r.get("p99_ms"))])
    _legend_below(figure, ax, "router")
    return figure


# ------------------------------------------------------------------------------------------------ driver
PLOTS: dict[str, Callable[[list[Report]], Figure]] = {
    "hit_ratio_curve": plot_hit_ratio_curve,
    "outcomes": plot_outcomes,
    "latency_cdf": plot_latency_cdf,
    "speedup": plot_speedup,
    "bytes_moved": plot_bytes_moved,
    "occupancy": plot_occupancy,
}
FLEET_PLOTS: dict[str, Callable[[list[Report]], Figure]] = {
    "fleet_hit_ratio": plot_fleet_hit_ratio,
    "fleet_p99": plot_fleet_p99,
}


def draw_plots(reports: list[Report], out_dir: Path, strict: bool = True,
               plots: dict[str, Callable[[list[Report]], Figure]] | None = None) -> PlotOutcome:
    """Write every plot the data supports as out_dir/<name>.png; the others are listed with the reason.

    `plots` defaults to PLOTS (callers add the serving plots: `mtbench.report.serving_plots.plots_for`);
    fleet reports (`mtbench fleet`) always get their own plots (`FLEET_PLOTS`).

    With strict=False an unexpected error in one plot is listed as a skip instead of raised, so a long
    run's report is never lost to a plotting problem.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome = PlotOutcome()
    if reports and all(r.kind == "fleet" for r in reports):
        plots = FLEET_PLOTS
    for name, plot in (PLOTS if plots is None else plots).items():
        try:
            figure = plot(reports)
        except PlotSkipped as skipped:
            outcome.skipped[name] = str(skipped)
            continue
        except Exception as err:  # noqa: BLE001 - only reached with strict=False, see docstring
            if strict:
                raise
            outcome.skipped[name] = f"failed: {type(err).__name__}: {err}"
            continue
        figure.savefig(out_dir / f"{name}.png", dpi=DPI)
        outcome.written.append(f"{name}.png")
    return outcome
