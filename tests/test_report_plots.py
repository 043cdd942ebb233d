"""Plots: every plot the data supports is a valid PNG; unsupported ones are skipped with a reason."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_report_synthetic import compare_policies_result, replay_result

from mtbench.report import Report
from mtbench.report.plots import PLOTS, POLICY_COLORS, draw_plots, plot_hit_ratio_curve, plot_outcomes, policy_color

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 10_000


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > MIN_PNG_BYTES, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.std() > 0.01, f"{path.name} is blank"


def _compare_report(seed: int, **kwargs) -> Report:
    summary, records = compare_policies_result(np.random.default_rng(seed), **kwargs)
    return Report(None, summary, records)


def _replay_report(seed: int, **kwargs) -> Report:
    summary, records = replay_result(np.random.default_rng(seed), **kwargs)
    return Report(None, summary, records)


def test_every_plot_is_drawn_for_compare_and_replay_overlaid(tmp_path: Path) -> None:
    reports = [_compare_report(0), _compare_report(1, capacities_gib=[2, 8, 32]), _replay_report(2, requests=400)]
    outcome = draw_plots(reports, tmp_path)
    assert outcome.skipped == {}
    assert sorted(outcome.written) == sorted(f"{name}.png" for name in PLOTS)
    for name in outcome.written:
        assert_valid_png(tmp_path / name)


@pytest.mark.parametrize("seed", range(3))
def test_only_supported_plots_are_drawn(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    single_capacity = _compare_report(seed, capacities_gib=[float(rng.choice([1, 4, 16]))])
    outcome = draw_plots([single_capacity], tmp_path / "one")
    assert "two or more GPU capacities" in outcome.skipped["hit_ratio_curve"]
    assert "latency_ms" in outcome.skipped["latency_cdf"] and "gpu_used_bytes" in outcome.skipped["occupancy"]
    assert set(outcome.written) == {"outcomes.png", "speedup.png", "bytes_moved.png"}
    replay_gpu_only = _replay_report(seed, requests=200, runs={"none": (None, "none", False), "gpu": ("lru", "gpu", False)})
    outcome = draw_plots([replay_gpu_only], tmp_path / "two")
    assert "no bytes moved" in outcome.skipped["bytes_moved"]
    assert {"latency_cdf.png", "occupancy.png", "outcomes.png", "speedup.png"} <= set(outcome.written)
    for name in outcome.written:
        assert_valid_png(tmp_path / "two" / name)


def test_policy_keeps_its_colour_in_every_plot() -> None:
    reports = [_compare_report(3, policies=["lru", "S3-FIFO", "sieve", "opt"], capacities_gib=[1, 4, 16])]
    curve_colours = {line.get_label().split()[0]: line.get_color()
                     for ax in plot_hit_ratio_curve(reports).axes for line in ax.get_lines()}
    assert curve_colours["lru"] == POLICY_COLORS["lru"] and curve_colours["S3-FIFO"] == POLICY_COLORS["s3fifo"]
    assert curve_colours["opt"] == POLICY_COLORS["opt"]
    tick_colours = {tick.get_text(): tick.get_color() for ax in plot_outcomes(reports).axes for tick in ax.get_xticklabels()}
    assert {name: tick_colours[name] for name in ("lru", "sieve")} == {"lru": POLICY_COLORS["lru"], "sieve": POLICY_COLORS["sieve"]}
    assert policy_color("my-new-policy") == policy_color("My_New_Policy") not in POLICY_COLORS.values()


def test_opt_is_drawn_dashed_as_the_bound() -> None:
    figure = plot_hit_ratio_curve([_compare_report(4, capacities_gib=[1, 2, 4])])
    styles = {line.get_label().split()[0]: line.get_linestyle() for line in figure.axes[0].get_lines()}
    assert styles["opt"] == "--" and all(style != "--" for name, style in styles.items() if name != "opt")


def test_fifty_rows_all_plot(tmp_path: Path) -> None:
    report = _compare_report(5, capacities_gib=[0.5, 1, 2, 4, 8, 16], policies=["lru", "fifo", "lfu", "arc", "s3fifo",
                                                                              "sieve", "gdsf", "locality", "opt"])
    assert len(report.summary["rows"]) == 54
    outcome = draw_plots([report], tmp_path)
    assert len(outcome.written) == 4
