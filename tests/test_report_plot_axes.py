"""Every figure the reports draw reads well, checked through matplotlib's API after a full draw.

For each plot kind, on compare-policies, replay (seven runs, a warm-up, an
open-loop queue), capacity and fleet reports built from random synthetic results, alone and overlaid: both axes of every panel carry
non-empty tick labels, every text (title, axis titles, tick labels) lies inside the figure, the
figure legend lies inside the figure and clear of the title and of every panel, and panel legends
lie inside their panel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from test_report_synthetic import compare_policies_result, replay_result

from mtbench.report import Report
from mtbench.report.plots import FLEET_PLOTS, PlotSkipped, _log_ticks, is_opt, plot_hit_ratio_curve, plot_latency_cdf
from mtbench.report.serving_plots import ALL_PLOTS
from mtbench.report.summary import format_capacity_cell

SEVEN_RUNS = {  # run -> (policy, cache_mode, sync): four layouts and the three baselines of `replay --baseline`
    "tiered/paged": ("lru", "tiered", False), "tiered/user": ("lru", "tiered", False),
    "tiered/hybrid": ("lru", "tiered", False), "tiered/zerocopy": ("lru", "tiered", False),
    "none": (None, "none", False), "gpu": ("lru", "gpu", False), "tiered/paged/sync": ("lru", "tiered", True),
}
SLACK_PX = 1.0  # rounding of text extents


def _compare(seed: int, unit: bool = False, **kwargs: Any) -> Report:
    summary, records = compare_policies_result(np.random.default_rng(seed), **kwargs)
    if unit:  # --object-size unit: capacities are entry counts, recorded as the CLI records them
        summary["config"].pop("capacity_unit")
        summary["config"]["object_size"] = "unit"
        for row in summary["rows"]:
            row["gpu_capacity"] = int(row["gpu_capacity"] // 2**20)
            row["host_capacity"] = int(row["host_capacity"] // 2**20)
    return Report(None, summary, records)


def _replay(seed: int, warmup: int = 0, requests: int = 300, runs: tuple[str, ...] = tuple(SEVEN_RUNS)) -> Report:
    rng = np.random.default_rng(seed)
    summary, records = replay_result(rng, requests=requests, runs={run: SEVEN_RUNS[run] for run in runs})
    summary["device"] = "cpu"
    records["warmup"] = records["request_index"] < warmup
    records["arrival_s"] = records["ts"]  # open-loop replay: batches start after a growing queue
    records["start_s"] = records["ts"] + rng.exponential(0.05, len(records)).cumsum() / len(records)
    return Report(None, summary, records)


def _capacity(seed: int) -> Report:
    """A `mtbench capacity` report: latency and SLO attainment per cache mode and load, GPUs needed."""
    rng = np.random.default_rng(seed)
    points, rows = [], []
    for mode, service_ms in (("none", 4.0), ("gpu", 2.0), ("tiered", 1.5)):
        saturation = 1000 / service_ms * rng.uniform(0.9, 1.1)
        for source in ("simulated", "measured"):
            for rate in saturation * np.linspace(0.1, 1.1, 9 if source == "simulated" else 3):
                load = min(rate / saturation, 0.999)
                p50 = service_ms * (1 + load / (1 - load) / 2)
                points.append({"source": source, "cache_mode": mode, "rate": rate, "p50_ms": p50,
                               "p99_ms": p50 * rng.uniform(2, 4), "slo_attainment": max(0.0, 1 - load**4),
                               "overloaded": rate >= saturation})
        rows.append({"run": mode, "cache_mode": mode, "max_qps": 0.8 * saturation, "saturation_qps": saturation,
                     "target_qps": 20_000.0, "gpus_needed": int(np.ceil(20_000 / (0.8 * saturation)))})
    summary = {"kind": "capacity", "trace": {"path": "traces/t.parquet", "rows": 1000, "sha256": "cd" * 32},
               "model": "large", "dtype": "bf16", "config": {"slo_ms": 10.0, "capacity_unit": "bytes"}, "rows": rows}
    return Report(None, summary, pd.DataFrame(points))


def _fleet(seed: int) -> Report:
    """A `mtbench fleet` report: hit ratio and p99 per router and replica count (overloaded: no p99)."""
    rng = np.random.default_rng(seed)
    rows = []
    for router in ("round-robin", "user-hash", "residency"):
        for replicas in (1, 2, 4, 8, 16):
            hit = min(0.95, 0.3 + 0.1 * np.log2(replicas) * (1 if router == "round-robin" else 1.6) + rng.uniform(0, 0.05))
            rows.append({"router": router, "replicas": replicas, "hit_ratio": hit, "gpu_hit_ratio": hit * 0.7,
                         "offered_qps": 3000.0, "p99_ms": None if replicas == 1 else 40 / replicas * rng.uniform(0.8, 1.2)})
    summary = {"kind": "fleet", "trace": {"path": "traces/t.parquet", "rows": 1000, "sha256": "ef" * 32},
               "model": "tiny", "dtype": "fp32", "rows": rows,
               "config": {"policy": "lru", "gpu_capacity": 2 << 20, "host_capacity": 16 << 20}}
    return Report(None, summary, pd.DataFrame(rows))


def _report_sets(seed: int) -> dict[str, list[Report]]:
    rng = np.random.default_rng(seed)
    capacities = sorted(float(c) for c in rng.choice([0.25, 0.5, 1, 2, 4, 8, 16, 32, 64], size=5, replace=False))
    policies = ["lru", "arc", "s3fifo", "sieve", "gdsf", "mtserve", "opt"]
    return {
        "compare": [_compare(seed, policies=policies, capacities_gib=capacities)],
        "compare-overlay": [_compare(seed + 2, capacities_gib=capacities[:3]), _compare(seed + 3, capacities_gib=capacities[1:3])],
        "replay": [_replay(seed + 4, warmup=int(rng.integers(16, 64)))],
        "replay-overlay": [_replay(seed + 5, runs=("tiered/hybrid", "gpu")),
                           _replay(seed + 6, warmup=32, runs=("tiered/hybrid", "none", "tiered/paged/sync"))],
        "capacity": [_capacity(seed + 7)],
        "fleet": [_fleet(seed + 10)],
    }


def _visible_tick_labels(axis: Any, limits: tuple[float, float]) -> list[Any]:
    """The major tick labels matplotlib draws: visible, at a tick inside the view limits."""
    low, high = sorted(limits)
    return [label for tick, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if label.get_visible() and low - 1e-9 * abs(low) <= tick <= high + 1e-9 * abs(high)]


def _visible_tick_texts(axis: Any, limits: tuple[float, float]) -> list[str]:
    return [label.get_text() for label in _visible_tick_labels(axis, limits)]


def _inside(inner: Bbox, outer: Bbox) -> bool:
    return (inner.x0 >= outer.x0 - SLACK_PX and inner.y0 >= outer.y0 - SLACK_PX
            and inner.x1 <= outer.x1 + SLACK_PX and inner.y1 <= outer.y1 + SLACK_PX)


def _draw(figure: Figure) -> Any:
    """Lay out and draw the figure as savefig does (Agg canvas); return the renderer."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def check_figure_reads_well(figure: Figure, name: str) -> None:
    renderer = _draw(figure)
    frame = figure.bbox
    title = figure._suptitle  # the Text (Figure.get_suptitle gives only its string)
    assert title is not None and title.get_text().strip(), f"{name}: no title"
    title_box = title.get_window_extent(renderer)
    assert _inside(title_box, frame), f"{name}: title clipped {title_box} vs {frame}"
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert panels, name
    occupied = [ax.get_window_extent(renderer) for ax in panels]  # frames and every text of the panels
    for ax in panels:
        for axis, limits, what in ((ax.xaxis, ax.get_xlim(), "x"), (ax.yaxis, ax.get_ylim(), "y")):
            texts = _visible_tick_texts(axis, limits)
            assert len(texts) >= 1 and all(t.strip() for t in texts), f"{name}: {what} tick labels {texts}"
            if axis.get_scale() == "log" or what == "y":
                assert len(texts) >= 2, f"{name}: {what} axis has one labelled tick only: {texts}"
            for label in _visible_tick_labels(axis, limits):
                if label.get_text():
                    occupied.append(label.get_window_extent(renderer))
                    assert _inside(occupied[-1], frame), f"{name}: tick {label.get_text()!r} cut off"
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
            if text.get_text():
                occupied.append(text.get_window_extent(renderer))
                assert _inside(occupied[-1], frame), f"{name}: {text.get_text()!r} cut off"
                assert not occupied[-1].overlaps(title_box), f"{name}: {text.get_text()!r} under the title"
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        for line in ax.get_lines():  # every drawn line shows inside its panel
            xs, ys = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
            if len(xs) and line.get_label() and not line.get_label().startswith("_"):
                assert ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).any(), f"{name}: {line.get_label()} not in view"
        legend = ax.get_legend()
        if legend is not None:
            assert _inside(legend.get_window_extent(renderer), ax.get_window_extent(renderer)), f"{name}: panel legend"
    for legend in figure.legends:
        box = legend.get_window_extent(renderer)
        assert _inside(box, frame), f"{name}: legend {box} outside the figure {frame}"
        assert not box.overlaps(title_box), f"{name}: legend overlaps the title"
        assert not any(box.overlaps(other) for other in occupied), f"{name}: legend overlaps a panel or its labels"


def test_every_plot_of_every_report_kind_reads_well() -> None:
    drawn = set()
    for label, reports in _report_sets(int(np.random.default_rng(2026).integers(1000))).items():
        for name, plot in {**ALL_PLOTS, **FLEET_PLOTS}.items():
            try:
                figure = plot(reports)
            except PlotSkipped:
                continue
            check_figure_reads_well(figure, f"{label}/{name}")
            drawn.add(name)
    assert drawn == set(ALL_PLOTS) | set(FLEET_PLOTS)


def test_capacity_axis_labels_every_capacity_in_its_unit() -> None:
    """Bytes and unit-size (entry) capacities: one label per capacity, in the report's unit."""
    rng = np.random.default_rng(11)
    capacities = sorted(float(c) for c in rng.choice([0.25, 0.5, 1, 2, 4, 8, 16], size=4, replace=False))
    for unit in (False, True):
        report = _compare(12, unit=unit, capacities_gib=capacities)
        figure = plot_hit_ratio_curve([report])
        check_figure_reads_well(figure, f"hit_ratio_curve, unit={unit}")
        values = sorted({row["gpu_capacity"] for row in report.summary["rows"]})
        expected = [format_capacity_cell(v, "entries" if unit else "bytes", with_unit=True) for v in values]
        for ax in figure.axes:
            assert _visible_tick_texts(ax.xaxis, ax.get_xlim()) == expected
        assert all(("entries" in text) == unit and ("iB" in text) != unit for text in expected)


def test_no_curve_hides_under_opt() -> None:
    """Every policy has its own marker; OPT is the one dashed, wide, translucent line, drawn beneath."""
    figure = plot_hit_ratio_curve([_compare(13, capacities_gib=[1, 2, 4, 8])])
    for ax in figure.axes:
        lines = ax.get_lines()
        opt = [line for line in lines if is_opt(line.get_label().split()[0])]
        others = [line for line in lines if line not in opt]
        assert len(opt) == 1 and opt[0].get_linestyle() == "--"
        assert all(opt[0].get_zorder() < line.get_zorder() and line.get_linestyle() != "--" for line in others)
        markers = [line.get_marker() for line in others]
        assert len(set(markers)) == len(markers) and all(m not in ("", "None", None) for m in markers)


@pytest.mark.parametrize("seed", range(3))
def test_latency_cdf_leaves_out_warm_up_requests(seed: int) -> None:
    rng = np.random.default_rng(seed)
    warmup = int(rng.integers(10, 100))
    report = _replay(20 + seed, warmup=warmup, requests=400)
    counted = {run: int((~part["warmup"]).sum()) for run, part in report.frame.groupby("run")}
    figure = plot_latency_cdf([report])
    for ax in figure.axes:
        if not ax.get_visible():
            continue
        (all_line,) = [line for line in ax.get_lines() if line.get_label().startswith("all (")]
        assert all_line.get_label() == f"all ({counted[ax.get_title()]:,})"
        assert len(all_line.get_xdata()) == counted[ax.get_title()] == 400 - warmup


def _old_style_figure(title: str, xs: list[float], legend: str) -> Figure:
    figure = Figure(figsize=(6, 4), dpi=110, layout="constrained")
    figure.suptitle(title, fontsize=10)
    ax = figure.subplots()
    for index in range(8):
        ax.plot(xs, np.arange(len(xs)) + index, label=f"policy number {index}")
    ax.set_xscale("log")
    figure.legend(loc=legend, fontsize=8)
    return figure


@pytest.mark.parametrize(("title", "xs", "legend", "fault"), [
    ("Hit ratio", [256.0, 1024.0, 4096.0], "outside lower center", "one labelled tick"),  # one decade: tick 1000 only
    ("Hit ratio vs GPU capacity\n" + "trace and capacities " * 3, [1.0, 10.0, 100.0], "outside right upper",
     "legend overlaps the title"),
    ("Request outcomes per tier · " + "trace and capacities " * 6, [1.0, 10.0, 100.0], "outside lower center",
     "title clipped"),
])
def test_the_check_catches_each_fault_the_old_plots_had(title: str, xs: list[float], legend: str, fault: str) -> None:
    with pytest.raises(AssertionError, match=fault):
        check_figure_reads_well(_old_style_figure(title, xs, legend), "old style")


@pytest.mark.parametrize("seed", range(3))
def test_log_ticks_label_any_range_with_a_few_round_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        low = 10.0 ** rng.uniform(-3, 4)
        high = low * 10.0 ** rng.choice([rng.uniform(0.01, 0.2), rng.uniform(0.2, 1), rng.uniform(1, 6)])
        ticks = _log_ticks(low, high)
        assert 2 <= len(ticks) <= 12 and ticks == sorted(ticks)
        assert all(low <= t <= high for t in ticks), (low, high, ticks)
        assert all(len(f"{t:g}") <= 8 for t in ticks), ticks  # round values, not 0.0376931
