"""The refresh-period figure of `mtbench bench refresh`: hit ratio and estimated speedup against the
period at which static features are rebuilt, one line per prefix kind (replace, causal)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def plot_refresh(rows: list[dict], title: str) -> Figure:
    """Two panels against the period: hit ratio (and token hit ratio), and estimated speedup; one line per history."""
    labels = list(dict.fromkeys(row["period"] for row in rows))
    x = np.arange(len(labels))
    figure = Figure(figsize=(9.0, 3.6), layout="constrained")
    hits, speed = figure.subplots(1, 2)
    colors = {"replace": "tab:blue", "causal": "tab:orange"}
    for history in dict.fromkeys(row["history"] for row in rows):
        mine = {row["period"]: row for row in rows if row["history"] == history}
        hit = [mine[label]["hit_ratio"] for label in labels]
        token = [mine[label]["token_hit_ratio"] for label in labels]
        hits.plot(x, hit, "o-", color=colors[history], label=f"{history}: requests")
        hits.plot(x, token, "s--", color=colors[history], label=f"{history}: tokens")
        speed.plot(x, [mine[label]["est_speedup"] for label in labels], "o-", color=colors[history], label=history)
    for ax, ylabel in ((hits, "hit ratio"), (speed, "est. speedup vs no cache")):
        ax.set_xticks(x, labels)
        ax.set_xlabel("static features rebuilt every")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    hits.set_ylim(0.0, 1.02)
    speed.set_ylim(bottom=0.0)
    figure.suptitle(title, fontsize=10)
    return figure
