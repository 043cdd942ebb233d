"""The version rule as a knob: how often static features are rebuilt.

Rule (the importers' `--version-period` and `mtbench trace reversion --period` share it): a request at
`ts` seconds after the trace epoch carries `static_version = floor(ts / period)`; period None
("never") gives every request version 0. Versions of each user only grow, because a trace is sorted
by time.

`reversion` re-applies the rule to an existing trace. A request knows `n_static + n_rt` history
tokens (the static prefix plus the real-time ones since the last build); that total is kept, only
the split changes:
- replace (bidirectional U+S prefix, MTGR): a version's prefix is what its user's first request of
  the version knew; the rest of each request's history is real-time (n_rt = total - prefix). This is
  exactly what the behaviour-log importers produce with the same period when every event is one
  request and no cap (max_seq, max_rt) binds, since a user's first request of a period has no
  earlier events in that period;
- causal (append, HSTU-style history): the whole known history is the prefix (n_static = total,
  n_rt = 0); it grows within a version and later requests extend the cached entry.
Prefixes are clipped to `max_static` and real-time counts to `max_rt`.
"""

from __future__ import annotations

import numpy as np

from mtbench.errors import MtbenchError

HISTORIES = ("replace", "causal")


def version_index(ts: np.ndarray, period: float | None) -> np.ndarray:
    """static_version of requests at `ts` (seconds since the trace epoch): floor(ts / period), 0 when never."""
    ts = np.asarray(ts, dtype=np.float64)
    if period is None:
        return np.zeros(ts.shape[0], dtype=np.int64)
    if not period > 0:
        raise MtbenchError(f"version period must be > 0 seconds, got {period}")
    return np.floor(ts / period).astype(np.int64)


def _first_of_group(user: np.ndarray, version: np.ndarray) -> np.ndarray:
    """first[i] = index of the earliest request with the same (user, version) (rows are in time order)."""
    n = user.shape[0]
    order = np.lexsort((np.arange(n), version, user))
    starts = np.ones(n, dtype=bool)
    starts[1:] = (user[order][1:] != user[order][:-1]) | (version[order][1:] != version[order][:-1])
    first_sorted = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
    first = np.empty(n, dtype=np.int64)
    first[order] = first_sorted
    return first


def reversion(columns: dict[str, np.ndarray], period: float | None, history: str = "replace",
              max_static: int | None = None, max_rt: int | None = None) -> dict[str, np.ndarray]:
    """Trace columns with static_version, n_static and n_rt rewritten by the rule (module doc); others kept."""
    if history not in HISTORIES:
        raise MtbenchError(f"--history: expected one of {', '.join(HISTORIES)}, got {history!r}")
    user = np.asarray(columns["user_id"], dtype=np.int64)
    version = version_index(columns["ts"], period)
    total = np.asarray(columns["n_static"], dtype=np.int64) + np.asarray(columns["n_rt"], dtype=np.int64)
    if history == "causal":
        n_static = total
    else:
        n_static = total[_first_of_group(user, version)]
    if max_static is not None:
        n_static = np.minimum(n_static, max_static)
    n_rt = np.maximum(total - n_static, 0)
    if max_rt is not None:
        n_rt = np.minimum(n_rt, max_rt)
    return {**columns, "static_version": version, "n_static": n_static, "n_rt": n_rt}
