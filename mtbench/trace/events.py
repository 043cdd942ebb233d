"""Behaviour log (user, time[, item]) -> request trace, by these rules (also in traces/README.md):

- A request is one event, or, with `session_gap`, one visit: a user's run of events whose gaps are
  at most `session_gap` seconds; the visit's request happens at its first event.
- `ts` = seconds since midnight UTC of the log's first day (the trace epoch, stored in the file
  metadata as `mtbench.epoch_unix`); static features are rebuilt every `version_period` seconds
  (default one day, None = never): `static_version` = `reversion.version_index(ts, version_period)`.
- S = the user's events of earlier periods (most recent first, the newest `max_seq` kept), so
  `n_static` = U + min(|S|, max_seq); S is fixed for the whole period, which makes (user, version) a
  valid cache key.
- R = the user's earlier events of the same period, excluding the request's own visit, capped at
  `max_rt`. Events with the same timestamp keep their order in the log ("earlier" = earlier line).
- U = `user_tokens`; candidates come from a `CandidateDist` drawn with `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.trace.candidates import CandidateDist
from mtbench.trace.reversion import version_index

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class EventRules:
    """How events become requests; see the module docstring."""

    user_tokens: int = 32
    max_seq: int = 1000
    max_rt: int = 100
    session_gap: float | None = None
    cand: CandidateDist = CandidateDist("fixed", (128.0,))
    max_cand: int | None = None
    seed: int = 0
    version_period: float | None = SECONDS_PER_DAY

    def __post_init__(self) -> None:
        if self.user_tokens < 1 or self.max_seq < 0 or self.max_rt < 0:
            raise MtbenchError(f"need --user-tokens >= 1 and non-negative caps, got U={self.user_tokens}, "
                               f"max_seq={self.max_seq}, max_rt={self.max_rt}")
        if self.session_gap is not None and self.session_gap < 0:
            raise MtbenchError(f"--session-gap must be >= 0 seconds, got {self.session_gap}")


def _group_starts(same_group_as_previous: np.ndarray) -> np.ndarray:
    """For each position, the index where its run of True-linked positions starts."""
    positions = np.arange(same_group_as_previous.shape[0])
    return np.maximum.accumulate(np.where(same_group_as_previous, 0, positions))


def events_to_requests(
    user_id: np.ndarray, ts_unix: np.ndarray, rules: EventRules, extra: dict[str, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """Apply the rules to parallel event arrays; return (trace columns sorted by ts, epoch_unix).

    `extra` columns (e.g. item_id) are carried per request (a visit keeps its first event's values).
    """
    user_id = np.asarray(user_id, dtype=np.int64)
    ts_unix = np.asarray(ts_unix, dtype=np.float64)
    if user_id.size == 0:
        raise MtbenchError("the log has no events")
    epoch = float(np.floor(ts_unix.min() / SECONDS_PER_DAY) * SECONDS_PER_DAY)
    ts = ts_unix - epoch
    order = np.lexsort((ts, user_id))  # by user, then time; stable, so equal times keep log order
    user, ts = user_id[order], ts[order]
    day = version_index(ts, rules.version_period)

    same_user = np.zeros(user.shape[0], dtype=bool)
    same_user[1:] = user[1:] == user[:-1]
    same_user_day = same_user.copy()
    same_user_day[1:] &= day[1:] == day[:-1]
    position = np.arange(user.shape[0])
    events_before_user = _group_starts(same_user)
    events_before_day = _group_starts(same_user_day)

    is_request = np.ones(user.shape[0], dtype=bool)
    if rules.session_gap is not None:
        gap = np.diff(ts, prepend=-np.inf)
        is_request = ~(same_user & (gap <= rules.session_gap))
    rows = np.flatnonzero(is_request)

    history = events_before_day[rows] - events_before_user[rows]
    same_day_earlier = position[rows] - events_before_day[rows]
    rng = np.random.default_rng(rules.seed)
    columns = {
        "ts": ts[rows],
        "user_id": user[rows],
        "static_version": day[rows],
        "n_static": rules.user_tokens + np.minimum(history, rules.max_seq),
        "n_rt": np.minimum(same_day_earlier, rules.max_rt),
        "n_cand": rules.cand.sample(rows.shape[0], rng, rules.max_cand),
    }
    for name, values in (extra or {}).items():
        columns[name] = np.asarray(values)[order][rows]
    by_time = np.argsort(columns["ts"], kind="stable")
    return {name: values[by_time] for name, values in columns.items()}, epoch
