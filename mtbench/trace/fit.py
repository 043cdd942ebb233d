"""Fit a `TraceProfile` to a real trace (the distributions `mtbench.trace.synth` draws from).

Sessions are split at gaps > `session_gap` seconds between a user's consecutive requests. The fitted
quantities are the empirical quantiles of: requests per user, session sizes, gaps inside sessions,
return gaps between sessions, users' first-request time / duration, and S tokens at each user's first
request (n_static - U, with U = the smallest n_static in the trace); plus the hour-of-day histogram of
session starts (trace time is seconds since a UTC midnight) and the S tokens gained per request of
an earlier version (`history_growth`, from users whose history is not capped).
"""

from __future__ import annotations

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.trace.loader import Trace
from mtbench.trace.profile import TraceProfile, empirical_quantiles

HOURS = 24


def _per_user_layout(user: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order by user then time, flag per sorted position: same user as the previous position)."""
    order = np.lexsort((ts, user))
    same_user = np.zeros(user.shape[0], dtype=bool)
    same_user[1:] = user[order][1:] == user[order][:-1]
    return order, same_user


def _history_growth(user: np.ndarray, version: np.ndarray, n_static: np.ndarray, max_static: int) -> float:
    """S tokens gained per request of earlier versions, from the users whose last request is below the cap."""
    first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    last = np.r_[first[1:], user.shape[0]] - 1
    is_last_version = version == np.repeat(version[last], last - first + 1)
    counts_before = np.add.reduceat((~is_last_version).astype(np.int64), first)
    gained = n_static[last] - n_static[first]
    usable = (n_static[last] < max_static) & (counts_before > 0)
    if not usable.any():
        return 0.0
    return float(np.clip(gained[usable].sum() / counts_before[usable].sum(), 0.0, 1.0))


def fit_profile(trace: Trace, session_gap: float = 1800.0, version_period: float = 86400.0) -> TraceProfile:
    """Estimate every distribution of a TraceProfile from `trace` (loaded whole, six columns)."""
    if session_gap <= 0:
        raise MtbenchError(f"--session-gap must be > 0 seconds, got {session_gap}")
    columns = trace.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    order, same_user = _per_user_layout(columns["user_id"], columns["ts"])
    user, ts = columns["user_id"][order], columns["ts"][order]
    n_static, version = columns["n_static"][order], columns["static_version"][order]

    gaps = np.diff(ts, prepend=ts[0])
    continues_session = same_user & (gaps <= session_gap)
    session_starts = np.flatnonzero(~continues_session)
    session_sizes = np.diff(np.r_[session_starts, ts.shape[0]])
    user_firsts = np.flatnonzero(~same_user)
    requests_per_user = np.diff(np.r_[user_firsts, ts.shape[0]])
    duration = float(ts.max()) * (1 + 1e-12) + 1e-9

    intra = gaps[continues_session]
    returns = gaps[same_user & ~continues_session]
    user_tokens = int(columns["n_static"].min())
    max_static = int(columns["n_static"].max())
    hours = np.floor((ts[session_starts] % 86400.0) / 3600.0).astype(np.int64)
    hour_counts = np.bincount(np.clip(hours, 0, HOURS - 1), minlength=HOURS) + 1.0  # +1: no empty hour

    return TraceProfile(
        users=int(user_firsts.shape[0]),
        requests=int(ts.shape[0]),
        duration=duration,
        session_gap=float(session_gap),
        version_period=float(version_period),
        user_tokens=user_tokens,
        max_static=max_static,
        max_rt=int(columns["n_rt"].max()),
        history_growth=_history_growth(user, version, n_static, max_static),
        hour_of_day=[float(c) for c in hour_counts / hour_counts.sum()],
        quantiles={
            "requests_per_user": empirical_quantiles(requests_per_user),
            "session_size": empirical_quantiles(session_sizes),
            "intra_session_gap": empirical_quantiles(intra if intra.size else np.zeros(1)),
            "return_gap": empirical_quantiles(returns if returns.size else np.full(1, session_gap)),
            "user_start": empirical_quantiles(ts[user_firsts] / duration),
            "initial_history": empirical_quantiles(n_static[user_firsts] - user_tokens),
            "n_cand": empirical_quantiles(columns["n_cand"]),
        },
        source=trace.fingerprint(),
    )
