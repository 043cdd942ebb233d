"""Descriptive statistics of a trace (what `mtbench trace stats` prints), as plain dicts.

Reuse distances are in distinct users between two requests of one user (`mtbench.trace.reuse`); the
working set is the number of distinct users per fixed window; unique KV bytes count every distinct
cache entry (user, static_version) once at its largest n_static.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtbench.trace.loader import Trace
from mtbench.trace.reuse import lru_hit_ratios, reuse_distances

QUANTILES = (0.5, 0.9, 0.99)
WINDOWS = {"hour": 3600.0, "day": 86400.0}


@dataclass(frozen=True)
class StatRow:
    """One line of the stats table: a section, a name, a value and its display text."""

    section: str
    name: str
    value: float
    text: str


def _distinct_per_window(ts: np.ndarray, user: np.ndarray, window: float) -> np.ndarray:
    """Distinct users in each non-empty window [k*window, (k+1)*window)."""
    bucket = np.floor(ts / window).astype(np.int64)
    pairs = np.unique(np.stack([bucket, user]), axis=1)
    return np.bincount(pairs[0] - pairs[0].min())[np.unique(pairs[0]) - pairs[0].min()]


def _entry_tokens(user: np.ndarray, version: np.ndarray, n_static: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(largest n_static per distinct (user, version), user of that entry), entries sorted by (user, version)."""
    order = np.lexsort((version, user))
    u, v, n = user[order], version[order], n_static[order]
    first = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])])
    return np.maximum.reduceat(n, first), u[first]


def trace_stats(trace: Trace, bytes_per_token: int | None = None) -> list[StatRow]:
    """Every statistic of the stats table, in display order."""
    columns = trace.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    ts, user = columns["ts"], columns["user_id"]
    rows: list[StatRow] = []

    def add(section: str, name: str, value: float, text: str | None = None) -> None:
        rows.append(StatRow(section, name, float(value), text if text is not None else f"{value:,.6g}"))

    _, per_user = np.unique(user, return_counts=True)
    add("size", "requests", ts.shape[0], f"{ts.shape[0]:,}")
    add("size", "users", per_user.shape[0], f"{per_user.shape[0]:,}")
    span = float(ts[-1] - ts[0])
    add("size", "time span (s)", span, f"{span:,.0f} s ({span / 86400:,.2f} days)")
    add("per user", "requests per user, mean", per_user.mean())
    add("per user", "requests per user, median", np.median(per_user))
    add("per user", "requests per user, p99", np.quantile(per_user, 0.99))
    add("per user", "requests per user, max", per_user.max())
    for name in ("n_static", "n_rt", "n_cand"):
        add("lengths", f"{name} mean / max", columns[name].mean(), f"{columns[name].mean():,.1f} / {columns[name].max():,}")

    distances = reuse_distances(user)
    reused = distances[distances >= 0]
    add("reuse (distinct users)", "first requests", (distances < 0).mean(), f"{(distances < 0).mean():.2%}")
    for q in QUANTILES:
        value = np.quantile(reused, q) if reused.size else np.nan
        add("reuse (distinct users)", f"reuse distance p{q * 100:g}", value)
    for capacity in np.unique(np.maximum(1, np.rint(per_user.shape[0] * np.array([0.01, 0.1])).astype(int))):
        ratio = lru_hit_ratios(distances, [capacity])[0]
        add("reuse (distinct users)", f"LRU hit ratio, {capacity:,} users", ratio, f"{ratio:.2%}")

    for label, window in WINDOWS.items():
        distinct = _distinct_per_window(ts, user, window)
        add("working set", f"users per {label}, mean / p99 / max", distinct.mean(),
            f"{distinct.mean():,.1f} / {np.quantile(distinct, 0.99):,.0f} / {distinct.max():,}")

    tokens, entry_user = _entry_tokens(user, columns["static_version"], columns["n_static"])
    add("cache entries", "distinct (user, version) entries", tokens.shape[0], f"{tokens.shape[0]:,}")
    add("cache entries", "unique static tokens", tokens.sum(), f"{int(tokens.sum()):,}")
    if bytes_per_token is not None:
        from mtbench.units import format_bytes

        unique_bytes = int(tokens.sum()) * bytes_per_token
        latest = np.r_[entry_user[1:] != entry_user[:-1], True]
        current_bytes = int(tokens[latest].sum()) * bytes_per_token
        add("cache entries", "unique KV bytes (all entries)", unique_bytes, format_bytes(unique_bytes))
        add("cache entries", "KV bytes, newest entry per user", current_bytes, format_bytes(current_bytes))
    return rows
