"""Trace profile: the distributions the synthetic generator draws from, as JSON.

Every distribution is a quantile table (`QUANTILE_LEVELS`, 201 levels from 0 to 1) so a profile fitted
from a real trace and the built-in parametric default share one sampler (inverse-CDF interpolation).

    requests_per_user   requests of one user over the trace (heavy-tailed activity)
    session_size        requests per session (a session ends at a gap > session_gap)
    intra_session_gap   seconds between requests of one session (<= session_gap)
    return_gap          seconds from a session's last request to the user's next session (> session_gap)
    user_start          time of a user's first request as a fraction of the duration (long-term trend)
    initial_history     S tokens a user already has at their first request
    n_cand              candidates per request
plus `hour_of_day` (24 weights of session starts: the daily cycle), `version_period` (seconds between
static version bumps; 86400 = daily), `user_tokens` (U), `max_static`, `max_rt`, and
`history_growth` (S tokens gained per request of an earlier version period).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.paths import write_text_atomic

PROFILE_FORMAT = "mtbench-trace-profile/1"
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 201)
DISTRIBUTIONS = ("requests_per_user", "session_size", "intra_session_gap", "return_gap", "user_start",
                 "initial_history", "n_cand")


def empirical_quantiles(values: np.ndarray) -> list[float]:
    """The QUANTILE_LEVELS quantiles of `values` (non-empty), as a JSON-friendly list."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise MtbenchError("cannot fit a distribution to no values")
    return [float(q) for q in np.quantile(values, QUANTILE_LEVELS)]


def lognormal_quantiles(median: float, sigma: float, cap: float | None = None) -> list[float]:
    """Quantiles of exp(N(log median, sigma)), the 0 and 1 levels taken at 1e-4 and 1 - 1e-4."""
    normal = NormalDist(math.log(median), sigma)
    levels = np.clip(QUANTILE_LEVELS, 1e-4, 1 - 1e-4)
    values = [math.exp(normal.inv_cdf(float(q))) for q in levels]
    return [min(v, cap) if cap is not None else v for v in values]


def sample_quantiles(table: list[float], n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws from the distribution with this quantile table (linear inverse-CDF interpolation)."""
    return np.interp(rng.random(n), QUANTILE_LEVELS, np.asarray(table, dtype=np.float64))


def default_hour_of_day() -> list[float]:
    """A smooth daily cycle: evening peak at 20:00 UTC, trough at 08:00, 4:1 between them."""
    hours = np.arange(24) + 0.5
    weights = 1.0 + 0.6 * np.cos(2 * np.pi * (hours - 20.0) / 24.0)
    return [float(w) for w in weights / weights.sum()]


@dataclass
class TraceProfile:
    """Distributions for `mtbench.trace.synth` (see the module docstring); `users`, `requests` and
    `duration` are the scale of the trace it came from (the generator's defaults)."""

    users: int
    requests: int
    duration: float
    session_gap: float
    version_period: float
    user_tokens: int
    max_static: int
    max_rt: int
    history_growth: float
    hour_of_day: list[float]
    quantiles: dict[str, list[float]]
    source: dict = field(default_factory=dict)
    format: str = PROFILE_FORMAT

    def __post_init__(self) -> None:
        missing = [name for name in DISTRIBUTIONS if name not in self.quantiles]
        if missing:
            raise MtbenchError(f"trace profile: distribution '{missing[0]}' is missing")
        for name in DISTRIBUTIONS:
            table = self.quantiles[name]
            if len(table) != QUANTILE_LEVELS.size or np.any(np.diff(table) < 0) or not np.isfinite(table).all():
                raise MtbenchError(f"trace profile: '{name}' must be {QUANTILE_LEVELS.size} non-decreasing finite quantiles")
        if len(self.hour_of_day) != 24 or min(self.hour_of_day) < 0 or sum(self.hour_of_day) <= 0:
            raise MtbenchError("trace profile: hour_of_day must be 24 non-negative weights with a positive sum")
        if self.duration <= 0 or self.version_period <= 0 or self.users < 1 or self.requests < 1:
            raise MtbenchError("trace profile: users, requests, duration and version_period must be positive")

    @classmethod
    def default(cls, users: int, requests: int, duration: float, user_tokens: int = 32, max_seq: int = 1000,
                max_rt: int = 100, cand_quantiles: list[float] | None = None) -> "TraceProfile":
        """Built-in parametric behaviour: lognormal activity (sigma 1.5), sessions of ~4 requests 30 s
        apart, returns after ~6 h (heavy tail), users starting uniformly, an evening-peaked daily cycle,
        a daily version bump, and lognormal prior histories (median 200 tokens)."""
        return cls(
            users=users, requests=requests, duration=duration, session_gap=1800.0, version_period=86400.0,
            user_tokens=user_tokens, max_static=user_tokens + max_seq, max_rt=max_rt, history_growth=1.0,
            hour_of_day=default_hour_of_day(),
            quantiles={
                "requests_per_user": lognormal_quantiles(max(requests / users, 1e-3) * math.exp(-1.5**2 / 2), 1.5),
                "session_size": [max(1.0, v) for v in lognormal_quantiles(3.0, 0.9)],
                "intra_session_gap": lognormal_quantiles(30.0, 1.0, cap=1800.0),
                "return_gap": [max(1800.0, v) for v in lognormal_quantiles(6 * 3600.0, 1.5)],
                "user_start": [float(q) for q in QUANTILE_LEVELS],
                "initial_history": lognormal_quantiles(200.0, 1.0, cap=float(max_seq)),
                "n_cand": cand_quantiles or [128.0] * QUANTILE_LEVELS.size,
            },
            source={"kind": "default"},
        )

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(Path(path), json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TraceProfile":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MtbenchError(f"{path}: no such profile file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MtbenchError(f"{path}: not a JSON trace profile ({err})") from None
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise MtbenchError(f"{path}: not a trace profile (expected format {PROFILE_FORMAT!r}; make one with `mtbench trace fit`)")
        try:
            return cls(**data)
        except TypeError as err:
            raise MtbenchError(f"{path}: malformed trace profile ({err})") from None
