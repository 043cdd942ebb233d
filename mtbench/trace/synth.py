"""Synthetic request traces drawn from a `TraceProfile` (built-in default or fitted to a real trace).

Generative model, all vectorised numpy with one seeded generator (same seed -> same rows -> same file):
1. Activity: each user draws a weight from `requests_per_user`; the `requests` are split among users
   multinomially in proportion (heavy-tailed; users may get none).
2. Sessions: a stream of `session_size` draws cuts every user's requests into sessions (a user's first
   request always opens one).
3. Time: inside a session requests are `intra_session_gap` apart; sessions are `return_gap` apart. A
   user starts at `user_start` x duration; a user whose span does not fit is moved earlier, then
   compressed to the duration. Session starts then pass through the daily-cycle warp: within each day
   the time of day is mapped through the inverse CDF of `hour_of_day` (monotone, so order is kept);
   a session that would run into the user's next one is compressed.
4. Keys and lengths: `static_version` = floor(ts / version_period); per user, n_static = U + min(initial
   history + history_growth x requests of earlier versions, max_seq), n_rt = earlier requests of the same
   version (capped), n_cand from `n_cand`. The rows are then sorted by ts and written in row groups.
Memory: about 100 bytes per request while generating.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.trace.events import _group_starts
from mtbench.trace.profile import TraceProfile, sample_quantiles
from mtbench.trace.writer import ROW_GROUP_ROWS, TraceWriter

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class SynthRequest:
    """What to generate: scale (users, requests, duration in seconds) and the seed."""

    users: int
    requests: int
    duration: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.users < 1 or self.requests < 1 or not self.duration > 0:
            raise MtbenchError(f"synth needs users >= 1, requests >= 1 and duration > 0 "
                               f"(got {self.users}, {self.requests}, {self.duration})")


def _requests_per_user(profile: TraceProfile, spec: SynthRequest, rng: np.random.Generator) -> np.ndarray:
    weights = np.maximum(sample_quantiles(profile.quantiles["requests_per_user"], spec.users, rng), 1e-9)
    return rng.multinomial(spec.requests, weights / weights.sum()).astype(np.int64)


def _session_starts(counts: np.ndarray, profile: TraceProfile, rng: np.random.Generator) -> np.ndarray:
    """Boolean per request (user-major order): True where a session begins."""
    total = int(counts.sum())
    table = profile.quantiles["session_size"]
    mean_size = max(float(np.mean(table)), 1.0)
    sizes = np.maximum(np.rint(sample_quantiles(table, int(total / mean_size * 1.2) + 16, rng)), 1).astype(np.int64)
    boundaries = np.cumsum(sizes)
    while boundaries[-1] < total:
        extra = np.maximum(np.rint(sample_quantiles(table, int(total / mean_size) + 16, rng)), 1).astype(np.int64)
        boundaries = np.concatenate([boundaries, boundaries[-1] + np.cumsum(extra)])
    is_start = np.zeros(total, dtype=bool)
    is_start[boundaries[boundaries < total]] = True
    is_start[(np.cumsum(counts) - counts)[counts > 0]] = True
    return is_start


def _segment_offsets(values: np.ndarray, segment_first: np.ndarray, segment_of: np.ndarray) -> np.ndarray:
    """Cumulative sum of `values` restarting at every segment (segment_first: index of each segment's first element)."""
    running = np.cumsum(values)
    return running - running[segment_first][segment_of] + values[segment_first][segment_of]


def _daily_warp(ts: np.ndarray, hour_weights: list[float]) -> np.ndarray:
    """Map each time of day u in [0, 1) through the inverse CDF of the hourly weights (monotone)."""
    weights = np.asarray(hour_weights, dtype=np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(weights / weights.sum())])
    day = np.floor(ts / SECONDS_PER_DAY)
    fraction = ts / SECONDS_PER_DAY - day
    return (day + np.interp(fraction, cdf, np.linspace(0.0, 1.0, 25))) * SECONDS_PER_DAY


def _timestamps(counts: np.ndarray, is_start: np.ndarray, profile: TraceProfile, spec: SynthRequest,
                rng: np.random.Generator) -> np.ndarray:
    """Request times in user-major order, non-decreasing within each user, all in [0, duration)."""
    total = is_start.shape[0]
    session_first = np.flatnonzero(is_start)
    session_of = np.cumsum(is_start) - 1
    active = np.flatnonzero(counts > 0)
    user_first_request = (np.cumsum(counts) - counts)[active]
    user_of_session = np.searchsorted(user_first_request, session_first, side="right") - 1
    opens_user = np.zeros(session_first.shape[0], dtype=bool)
    opens_user[np.searchsorted(session_first, user_first_request)] = True

    intra = sample_quantiles(profile.quantiles["intra_session_gap"], total, rng)
    intra[session_first] = 0.0
    offset_in_session = _segment_offsets(intra, session_first, session_of)
    duration_of_session = offset_in_session[np.append(session_first[1:], total) - 1]

    returns = sample_quantiles(profile.quantiles["return_gap"], session_first.shape[0], rng)
    step = np.where(opens_user, 0.0, returns + np.roll(duration_of_session, 1))
    user_session_first = np.flatnonzero(opens_user)
    start_in_user = _segment_offsets(step, user_session_first, user_of_session)
    last_session = np.append(user_session_first[1:], session_first.shape[0]) - 1
    span = start_in_user[last_session] + duration_of_session[last_session]

    horizon = spec.duration * (1 - 1e-9)
    first = sample_quantiles(profile.quantiles["user_start"], active.shape[0], rng) * horizon
    scale = np.minimum(1.0, horizon / np.maximum(span, 1e-9))
    first = np.clip(np.minimum(first, horizon - span * scale), 0.0, None)
    session_start = _daily_warp(first[user_of_session] + start_in_user * scale[user_of_session], profile.hour_of_day)
    session_start = np.minimum(session_start, horizon)

    room = np.append(np.diff(session_start), np.inf)
    room[last_session] = np.inf
    squeeze = np.minimum(1.0, room / np.maximum(duration_of_session * scale[user_of_session], 1e-12))
    ts = session_start[session_of] + offset_in_session * (scale[user_of_session] * squeeze)[session_of]
    return np.minimum(ts, horizon)


def _lengths(user: np.ndarray, ts: np.ndarray, profile: TraceProfile, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """static_version, n_static, n_rt, n_cand for requests in user-major, time-ordered layout."""
    version = np.floor(ts / profile.version_period).astype(np.int64)
    same_user = np.zeros(user.shape[0], dtype=bool)
    same_user[1:] = user[1:] == user[:-1]
    same_version = same_user.copy()
    same_version[1:] &= version[1:] == version[:-1]
    before_user, before_version = _group_starts(same_user), _group_starts(same_version)
    max_seq = profile.max_static - profile.user_tokens
    users_first = np.flatnonzero(~same_user)
    initial = np.rint(sample_quantiles(profile.quantiles["initial_history"], users_first.shape[0], rng)).astype(np.int64)
    history = initial[np.cumsum(~same_user) - 1] + np.floor(profile.history_growth * (before_version - before_user)).astype(np.int64)
    n_cand = np.maximum(np.rint(sample_quantiles(profile.quantiles["n_cand"], user.shape[0], rng)), 1).astype(np.int64)
    return {
        "static_version": version,
        "n_static": profile.user_tokens + np.clip(history, 0, max_seq),
        "n_rt": np.minimum(np.arange(user.shape[0]) - before_version, profile.max_rt),
        "n_cand": n_cand,
    }


def synthesize(profile: TraceProfile, spec: SynthRequest) -> dict[str, np.ndarray]:
    """Generate the whole trace in memory: columns in canonical dtypes, sorted by ts (stable)."""
    rng = np.random.default_rng(spec.seed)
    counts = _requests_per_user(profile, spec, rng)
    user_order = rng.permutation(spec.users).astype(np.int64)  # ids carry no activity rank
    is_start = _session_starts(counts, profile, rng)
    ts = _timestamps(counts, is_start, profile, spec, rng)
    user = np.repeat(user_order, counts)
    lengths = _lengths(user, ts, profile, rng)
    by_time = np.argsort(ts, kind="stable")
    columns = {"ts": ts[by_time], "user_id": user[by_time]}
    columns.update({name: values[by_time] for name, values in lengths.items()})
    return columns


def write_synth(profile: TraceProfile, spec: SynthRequest, out: Path, metadata: dict[str, str] | None = None) -> int:
    """Generate and write atomically in row groups of ROW_GROUP_ROWS; return the number of rows."""
    columns = synthesize(profile, spec)
    with TraceWriter(out, metadata) as writer:
        for start in range(0, spec.requests, ROW_GROUP_ROWS):
            writer.write({name: values[start:start + ROW_GROUP_ROWS] for name, values in columns.items()})
    return spec.requests
