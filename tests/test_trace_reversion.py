"""The version rule as a knob: floor(ts / period) per request, the static / real-time split it implies,
the importers' --version-period equal to `trace reversion --period`, and bad periods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from typer.testing import CliRunner

from mtbench.cli import app
from mtbench.errors import MtbenchError
from mtbench.trace.events import EventRules, events_to_requests
from mtbench.trace.reversion import reversion, version_index

HOUR, DAY = 3600.0, 86400.0
PERIODS = (HOUR, DAY, 7 * DAY, None)
NO_CAPS = EventRules(max_seq=10**6, max_rt=10**6)
SYNTH = Path(__file__).resolve().parents[1] / "traces" / "synth-small.parquet"


def _event_log(seed: int, n_users: int = 25, n_events: int = 800, days: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Random (user, unix ts) events: bursts of a user's events minutes apart, spread over `days`."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, size=n_events)
    burst_start = rng.uniform(0, days * DAY, size=n_events // 8).repeat(8)[:n_events]
    ts = 1.6e9 + burst_start + rng.exponential(300.0, size=n_events)
    return user, np.round(ts, 3)


def _run_mtbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtbench", *args], capture_output=True, text=True)


def _invoke(*args: str) -> None:
    """Run a command in this process (no interpreter start-up); it must succeed."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.mark.parametrize("seed", range(5))
def test_versions_are_floor_of_ts_over_period_and_monotone_per_user(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0, 60 * DAY, size=2000))
    user = rng.integers(0, 40, size=2000)
    for period in (*PERIODS, float(rng.uniform(1.0, 5 * DAY))):
        version = version_index(ts, period)
        if period is None:
            assert np.unique(version).tolist() == [0]
            continue
        assert np.array_equal(version, np.floor(ts / period).astype(np.int64))
        assert np.all((ts >= version * period) & (ts < (version + 1) * period))
        for u in np.unique(user):
            assert np.all(np.diff(version[user == u]) >= 0)


@pytest.mark.parametrize("seed", range(5))
def test_replace_fixes_each_versions_prefix_and_causal_grows_it(seed: int) -> None:
    user, ts = _event_log(seed)
    daily, _ = events_to_requests(user, ts, NO_CAPS)
    total = daily["n_static"] + daily["n_rt"]
    for period in PERIODS:
        replaced = reversion(daily, period, "replace")
        frame = pd.DataFrame({k: replaced[k] for k in ("user_id", "static_version", "n_static")})
        assert frame.groupby(["user_id", "static_version"])["n_static"].nunique().max() == 1
        assert np.array_equal(replaced["n_static"] + replaced["n_rt"], total)  # no cap binds: nothing lost
        causal = reversion(daily, period, "causal")
        assert np.array_equal(causal["n_static"], total) and not causal["n_rt"].any()
        assert np.array_equal(causal["static_version"], replaced["static_version"])
        for u in np.unique(causal["user_id"]):  # a causal prefix never shrinks
            assert np.all(np.diff(causal["n_static"][causal["user_id"] == u]) >= 0)


@pytest.mark.parametrize("seed", range(5))
def test_importer_period_equals_reversion_of_the_daily_import(seed: int) -> None:
    user, ts = _event_log(seed)
    daily, epoch = events_to_requests(user, ts, NO_CAPS)
    rng = np.random.default_rng(seed)
    for period in (*PERIODS, float(rng.uniform(600.0, 3 * DAY))):
        imported, same_epoch = events_to_requests(user, ts, EventRules(max_seq=10**6, max_rt=10**6, version_period=period))
        rewritten = reversion(daily, period)
        assert same_epoch == epoch
        for column in ("ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"):
            assert np.array_equal(imported[column], rewritten[column]), (period, column)


def test_a_daily_import_is_its_own_daily_reversion_even_with_caps() -> None:
    user, ts = _event_log(7, n_users=5, n_events=3000, days=10)
    rules = EventRules(max_seq=40, max_rt=6)
    daily, _ = events_to_requests(user, ts, rules)
    assert (daily["n_rt"] == 6).any() and (daily["n_static"] == 32 + 40).any()  # both caps bind
    same = reversion(daily, DAY, max_static=32 + 40, max_rt=6)
    for column in daily:
        assert np.array_equal(same[column], daily[column]), column


def test_bad_periods_and_histories() -> None:
    with pytest.raises(MtbenchError, match="period must be > 0"):
        version_index(np.zeros(3), 0.0)
    with pytest.raises(MtbenchError, match="--history"):
        reversion({"ts": np.zeros(1), "user_id": np.zeros(1), "n_static": np.ones(1), "n_rt": np.zeros(1)}, DAY, "both")


def test_cli_import_option_equals_trace_reversion(tmp_path: Path) -> None:
    user, ts = _event_log(11, n_users=20, n_events=400)
    ratings = tmp_path / "ratings.csv"
    pd.DataFrame({"userId": user, "movieId": np.arange(user.shape[0]), "rating": 4.0,
                  "timestamp": np.floor(ts).astype(np.int64)}).to_csv(ratings, index=False)
    daily, weekly, rewritten = (tmp_path / name for name in ("daily.parquet", "weekly.parquet", "rewritten.parquet"))
    _invoke("trace", "import", "movielens", str(ratings), "-o", str(daily))
    _invoke("trace", "import", "movielens", str(ratings), "-o", str(weekly), "--version-period", "7d")
    _invoke("trace", "reversion", str(daily), "--period", "7d", "-o", str(rewritten))
    a, b = pd.read_parquet(weekly), pd.read_parquet(rewritten)
    assert b["static_version"].max() == int(b["ts"].max() // (7 * DAY)) > 0
    pd.testing.assert_frame_equal(a, b)


def test_cli_bad_period_exits_2_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    result = _run_mtbench("trace", "reversion", str(SYNTH), "--period=0", "-o", str(out))
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().count("\n") == 0 and "--period" in result.stderr and "Traceback" not in result.stderr
    for period in ("5x", "-1d", "1y", ""):  # the same path in this process: MtbenchError, nothing written
        outcome = CliRunner().invoke(app, ["trace", "reversion", str(SYNTH), f"--period={period}", "-o", str(out)])
        assert isinstance(outcome.exception, MtbenchError) and "--period" in str(outcome.exception) and not out.exists()


@pytest.mark.parametrize("seed", range(3))
def test_cache_trace_importer_uses_the_same_rule(seed: int) -> None:
    from mtbench.trace.importers import Accesses, CacheRules, cache_to_requests

    rng = np.random.default_rng(seed)
    accesses = Accesses(rng.integers(0, 50, size=500), rng.uniform(0, 30 * DAY, size=500), None)
    for period in PERIODS:
        columns, _ = cache_to_requests(accesses, CacheRules(max_static=64, version_period=period))
        assert np.array_equal(columns["static_version"], version_index(columns["ts"], period))
    plain, _ = cache_to_requests(accesses, CacheRules(max_static=64))
    assert not plain["static_version"].any()
