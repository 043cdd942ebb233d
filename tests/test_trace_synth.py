"""Synthetic traces: determinism (byte-identical files), validity, the generative features, profile
round trips, and a fitted profile reproducing a real trace's LRU hit ratios within 3 points."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mtbench.errors import MtbenchError
from mtbench.trace import TraceLimits, open_trace
from mtbench.trace.events import EventRules
from mtbench.trace.fit import fit_profile
from mtbench.trace.importers import import_events
from mtbench.trace.profile import TraceProfile
from mtbench.trace.reuse import lru_hit_ratios, reuse_distances
from mtbench.trace.stats import trace_stats
from mtbench.trace.synth import SynthRequest, synthesize, write_synth
from mtbench.trace.writer import write_trace

DAY = 86400.0
LARGE = TraceLimits(max_static=1032, max_rt=100, max_cand=1024)


def run_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    from mtbench.cli import main

    monkeypatch.setattr(sys, "argv", ["mtbench", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0)


def test_same_seed_same_bytes_other_seed_other_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        path = tmp_path / f"{name}.parquet"
        argv = ["trace", "synth", "--users", "300", "--requests", "20000", "--duration", "3d", "--seed", str(seed), "-o", str(path)]
        assert run_in_process(argv, monkeypatch) == 0
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    trace = open_trace(paths[0], LARGE)
    assert trace.num_rows == 20_000


@pytest.mark.parametrize("seed", range(6))
def test_generated_traces_are_valid_and_follow_the_rules(seed: int) -> None:
    rng = np.random.default_rng(seed)
    users, requests, days = int(rng.integers(1, 3000)), int(rng.integers(1, 60_000)), float(rng.integers(1, 30))
    profile = TraceProfile.default(users, requests, days * DAY, user_tokens=int(rng.integers(1, 64)))
    columns = synthesize(profile, SynthRequest(users, requests, days * DAY, seed))
    ts, user = columns["ts"], columns["user_id"]
    assert ts.shape[0] == requests and np.all(np.diff(ts) >= 0) and ts.min() >= 0 and ts.max() < days * DAY
    assert user.min() >= 0 and user.max() < users
    np.testing.assert_array_equal(columns["static_version"], np.floor(ts / DAY).astype(np.int64))
    assert columns["n_static"].min() >= profile.user_tokens and columns["n_static"].max() <= profile.max_static
    assert columns["n_rt"].max() <= profile.max_rt and columns["n_cand"].min() >= 1
    order = np.lexsort((np.arange(requests), user))  # per user, in time order (ts ties keep trace order)
    u, v, n_static, n_rt = user[order], columns["static_version"][order], columns["n_static"][order], columns["n_rt"][order]
    same_entry = (u[1:] == u[:-1]) & (v[1:] == v[:-1])
    assert np.all(n_static[1:][same_entry] == n_static[:-1][same_entry])  # S is fixed within a version
    assert np.all(n_rt[1:][same_entry] == np.minimum(n_rt[:-1][same_entry] + 1, profile.max_rt))
    assert np.all(n_rt[1:][~same_entry] == 0)


def test_activity_is_heavy_tailed_and_sessions_are_bursty() -> None:
    profile = TraceProfile.default(5000, 200_000, 14 * DAY)
    columns = synthesize(profile, SynthRequest(5000, 200_000, 14 * DAY, 3))
    per_user = np.bincount(columns["user_id"], minlength=5000)
    top_percent = np.sort(per_user)[-50:].sum() / per_user.sum()
    assert top_percent > 0.1  # the top 1% of users make more than 10% of requests
    order = np.lexsort((columns["ts"], columns["user_id"]))
    same_user = columns["user_id"][order][1:] == columns["user_id"][order][:-1]
    gaps = np.diff(columns["ts"][order])[same_user]
    assert np.median(gaps) < 600 and np.quantile(gaps, 0.95) > 3600  # short in-session gaps, long returns
    hours = np.bincount(((columns["ts"] % DAY) // 3600).astype(int), minlength=24)
    assert hours[18:23].sum() > 2 * hours[6:11].sum()  # the evening peak of the default daily cycle


def test_profile_save_load_round_trip_and_bad_profiles(tmp_path: Path) -> None:
    profile = TraceProfile.default(100, 1000, DAY)
    loaded = TraceProfile.load(profile.save(tmp_path / "p.json"))
    assert loaded == profile
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(MtbenchError, match="not a trace profile"):
        TraceProfile.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MtbenchError, match="not a JSON trace profile"):
        TraceProfile.load(tmp_path / "broken.json")


@pytest.fixture(scope="module")
def movielens_trace(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    columns, _ = import_events("movielens", [shared_data / "movielens-latest-small" / "ratings.csv"], EventRules())
    return write_trace(columns, tmp_path_factory.mktemp("ml") / "ml.parquet")


def entry_keys(user: np.ndarray, version: np.ndarray) -> np.ndarray:
    return user * (int(version.max()) + 1) + version


def test_fitted_synthetic_trace_reproduces_real_lru_hit_ratios(movielens_trace: Path) -> None:
    real = open_trace(movielens_trace)
    profile = fit_profile(real)
    arrays = real.arrays(["user_id", "static_version"])
    capacities = [1, 4, 16]
    real_by_user = lru_hit_ratios(reuse_distances(arrays["user_id"]), capacities)
    real_by_entry = lru_hit_ratios(reuse_distances(entry_keys(arrays["user_id"], arrays["static_version"])), capacities)
    assert real_by_user[-1] - real_by_user[0] > 0.03  # the capacities do discriminate
    for seed in range(3):
        synth = synthesize(profile, SynthRequest(profile.users, profile.requests, profile.duration, seed))
        by_user = lru_hit_ratios(reuse_distances(synth["user_id"]), capacities)
        by_entry = lru_hit_ratios(reuse_distances(entry_keys(synth["user_id"], synth["static_version"])), capacities)
        assert np.abs(by_user - real_by_user).max() < 0.03, (seed, by_user, real_by_user)
        assert np.abs(by_entry - real_by_entry).max() < 0.03, (seed, by_entry, real_by_entry)


def test_fit_then_scale_up_through_the_cli(movielens_trace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    profile_path = tmp_path / "profile.json"
    assert run_in_process(["trace", "fit", str(movielens_trace), "-o", str(profile_path)], monkeypatch) == 0
    profile = TraceProfile.load(profile_path)
    assert profile.users == 610 and profile.requests == 100_836 and profile.user_tokens == 32
    out = tmp_path / "big.parquet"
    assert run_in_process(["trace", "synth", "--like", str(profile_path), "--users", "6100", "-o", str(out)], monkeypatch) == 0
    assert "rows/s" in capsys.readouterr().out
    trace = open_trace(out, LARGE)
    assert abs(trace.num_rows - 1_008_360) <= 1 and trace.read(["user_id"])["user_id"].nunique() > 5000


def test_stats_values_on_a_known_trace(tmp_path: Path) -> None:
    columns = {"ts": np.array([0.0, 10, 20, 4000, 90000]), "user_id": np.array([1, 2, 1, 1, 2]),
               "static_version": np.array([0, 0, 0, 0, 1]), "n_static": np.array([40, 50, 40, 40, 60]),
               "n_rt": np.array([0, 0, 1, 2, 0]), "n_cand": np.array([5, 5, 5, 5, 5])}
    stats = {row.name: row.value for row in trace_stats(open_trace(write_trace(columns, tmp_path / "t.parquet")), 100)}
    assert stats["requests"] == 5 and stats["users"] == 2 and stats["time span (s)"] == 90000
    assert stats["requests per user, mean"] == 2.5 and stats["reuse distance p50"] == 1.0  # distances -1, -1, 1, 0, 1
    assert stats["first requests"] == 0.4
    assert stats["users per hour, mean / p99 / max"] == pytest.approx(4 / 3)
    assert stats["distinct (user, version) entries"] == 3 and stats["unique static tokens"] == 150
    assert stats["unique KV bytes (all entries)"] == 15_000 and stats["KV bytes, newest entry per user"] == 10_000


def test_write_synth_streams_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mtbench.trace.synth as synth

    monkeypatch.setattr(synth, "ROW_GROUP_ROWS", 1000)
    profile = TraceProfile.default(50, 4500, DAY)
    out = tmp_path / "t.parquet"
    write_synth(profile, SynthRequest(50, 4500, DAY, 1), out)
    trace = open_trace(out)
    assert trace._parquet.metadata.num_row_groups == 5
    assert [len(f) for f in trace.iter_frames(batch_rows=1000)] == [1000] * 4 + [500]
