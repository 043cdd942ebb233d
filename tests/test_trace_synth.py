"""Synthetic traces: determinism (byte-identical files), validity, the generative features, profile
round trips, and a fitted profile reproducing a real trace's LRU hit ratios within 3 points."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mtbench.errors import MtbenchError
from mtbench.trace.candidates import CandidateDist
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
    columns, _, _ = import_events("movielens", [shared_data / "movielens-latest-small" / "ratings.csv"], EventRules())
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


def test_slicing_and_merging_do_not_change_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded-memory generation (users in slices, spilled, merged by ts) writes the same bytes as one slice."""
    import mtbench.trace.synth as synth

    rng = np.random.default_rng(12)
    profile = TraceProfile.default(400, 30_000, 4 * DAY)
    for case in range(2):
        spec = SynthRequest(int(rng.integers(50, 400)), int(rng.integers(5_000, 30_000)), 4 * DAY, int(rng.integers(1 << 30)))
        whole = write_synth(profile, spec, tmp_path / f"whole{case}.parquet")
        with monkeypatch.context() as patch:
            for name, value in (("SLICE_ROWS", int(rng.integers(700, 3000))), ("MERGE_ROWS", int(rng.integers(50, 500))),
                                ("DRAW_ROWS", int(rng.integers(100, 1000)))):
                patch.setattr(synth, name, value)
            sliced = write_synth(profile, spec, tmp_path / f"sliced{case}.parquet")
        assert whole == sliced == spec.requests
        assert (tmp_path / f"whole{case}.parquet").read_bytes() == (tmp_path / f"sliced{case}.parquet").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # spill folders removed


def test_sliced_generation_bounds_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    import mtbench.trace.synth as synth

    profile, spec = TraceProfile.default(3000, 300_000, 7 * DAY), SynthRequest(3000, 300_000, 7 * DAY, 4)
    peaks = []
    monkeypatch.setattr(synth, "ROW_GROUP_ROWS", 20_000)
    for slice_rows, draw_rows, merge_rows in ((spec.requests, spec.requests, spec.requests), (30_000, 20_000, 2_000)):
        monkeypatch.setattr(synth, "SLICE_ROWS", slice_rows)
        monkeypatch.setattr(synth, "DRAW_ROWS", draw_rows)
        monkeypatch.setattr(synth, "MERGE_ROWS", merge_rows)
        tracemalloc.start()
        write_synth(profile, spec, tmp_path / f"{slice_rows}.parquet")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] / 3, peaks


def synth_cli(out: Path, monkeypatch: pytest.MonkeyPatch, *extra: str, users: int = 2000, requests: int = 20_000,
              seed: int = 5) -> dict[str, np.ndarray]:
    """Run `trace synth` in process; the written trace's columns."""
    argv = ["trace", "synth", "--users", str(users), "--requests", str(requests), "--duration", "5d",
            "--seed", str(seed), "-o", str(out), *extra]
    assert run_in_process(argv, monkeypatch) == 0
    return open_trace(out, LARGE).arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])


def first_version_history(columns: dict[str, np.ndarray], user_tokens: int) -> np.ndarray:
    """S tokens of each user's first version, per user, after checking every later version's S: the first
    version's plus the user's requests of earlier versions (history_growth 1.0), capped at max_seq."""
    import pandas as pd

    frame = pd.DataFrame({name: columns[name] for name in ("user_id", "static_version", "n_static")})
    frame["s"] = frame["n_static"] - user_tokens
    entries = frame.groupby(["user_id", "static_version"]).agg(k=("s", "size"), s=("s", "first"), s_max=("s", "max"))
    assert (entries["s"] == entries["s_max"]).all()  # S is fixed within a version
    entries["earlier"] = entries.groupby(level="user_id")["k"].cumsum() - entries["k"]
    initial = entries.groupby(level="user_id")["s"].first()
    expected = np.minimum(initial.reindex(entries.index.get_level_values("user_id")).to_numpy() + entries["earlier"].to_numpy(),
                          LARGE.max_static - user_tokens)
    np.testing.assert_array_equal(entries["s"].to_numpy(), expected)
    return initial.to_numpy()


@pytest.mark.parametrize("case", range(4))
def test_history_dist_fixed_and_uniform_set_first_versions(case: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(100 + case)
    user_tokens = int(rng.integers(1, 64))
    max_seq = LARGE.max_static - user_tokens
    fixed = int(rng.integers(0, max_seq + 1)) if case else 0  # case 0: users without any S token yet
    lo = int(rng.integers(0, max_seq - 50))
    hi = int(rng.integers(lo + 40, max_seq + 1))
    base = ("--user-tokens", str(user_tokens))
    initial = first_version_history(synth_cli(tmp_path / "f.parquet", monkeypatch, *base, "--history-dist", str(fixed),
                                                 seed=case), user_tokens)
    assert np.all(initial == fixed)
    initial = first_version_history(synth_cli(tmp_path / "u.parquet", monkeypatch, *base, "--history-dist",
                                                 f"uniform:{lo}:{hi}", seed=case), user_tokens)
    assert initial.min() >= lo and initial.max() <= hi
    edge = 0.03 * (hi - lo) + 1
    assert initial.min() <= lo + edge and initial.max() >= hi - edge  # spans the range
    assert abs(np.median(initial) - (lo + hi) / 2) < 0.1 * (hi - lo) + 1


def test_history_dist_lognormal_median_and_clipping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    import re
    from statistics import NormalDist

    initial = first_version_history(synth_cli(tmp_path / "l.parquet", monkeypatch, "--history-dist", "lognormal:300:0.6",
                                                 users=5000, requests=40_000), 32)
    assert initial.size > 3000 and abs(np.median(initial) / 300 - 1) < 0.08
    above_cap = 1 - NormalDist().cdf(np.log(1000 / 300) / 0.6)  # 2.2%
    clipped = re.search(r"history clipped to max_seq 1000\W+([\d.]+)% of users", capsys.readouterr().out)
    assert clipped is not None and abs(float(clipped.group(1)) / 100 - above_cap) < 0.005
    assert initial.max() == 1000 and abs(np.mean(initial == 1000) - above_cap) < 0.01
    initial = first_version_history(synth_cli(tmp_path / "c.parquet", monkeypatch, "--history-dist", "uniform:800:1500",
                                                 users=4000, requests=30_000), 32)
    out = capsys.readouterr().out
    assert "history clipped to max_seq 1000" in out and "71." in out  # 501 of 701 values lie above 1000
    assert initial.max() == 1000 and abs(np.mean(initial == 1000) - 501 / 701) < 0.05 and initial.min() >= 800
    synth_cli(tmp_path / "n.parquet", monkeypatch, "--history-dist", "uniform:800:1000")
    assert "history clipped" not in capsys.readouterr().out


def test_history_dist_changes_only_n_static_and_default_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = synth_cli(tmp_path / "plain.parquet", monkeypatch, seed=11)
    library = synthesize(TraceProfile.default(2000, 20_000, 5 * DAY, max_seq=1000), SynthRequest(2000, 20_000, 5 * DAY, 11))
    for name, values in plain.items():  # no option: exactly the built-in default profile
        np.testing.assert_array_equal(values, library[name], err_msg=name)
    first_version_history(plain, 32)
    shaped = synth_cli(tmp_path / "a.parquet", monkeypatch, "--history-dist", "uniform:800:1000", seed=11)
    again = synth_cli(tmp_path / "b.parquet", monkeypatch, "--history-dist", "uniform:800:1000", seed=11)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    for name in ("ts", "user_id", "static_version", "n_rt", "n_cand"):
        np.testing.assert_array_equal(shaped[name], plain[name], err_msg=name)
    assert not np.array_equal(shaped["n_static"], plain["n_static"]) and np.array_equal(shaped["n_static"], again["n_static"])


def test_history_dist_overrides_a_fitted_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = TraceProfile.default(800, 9000, 3 * DAY, user_tokens=20, max_seq=1012)
    profile.quantiles["initial_history"] = [5.0] * len(profile.quantiles["initial_history"])
    path = profile.save(tmp_path / "p.json")
    out = tmp_path / "like.parquet"
    assert run_in_process(["trace", "synth", "--like", str(path), "--history-dist", "640", "-o", str(out)], monkeypatch) == 0
    initial = first_version_history(open_trace(out, LARGE).arrays(["user_id", "static_version", "n_static"]), 20)
    assert initial.size > 500 and np.all(initial == 640)
    assert run_in_process(["trace", "synth", "--like", str(path), "--history-dist", "1013", "-o", str(out)], monkeypatch) == 2


def test_history_count_distributions_allow_zero_and_name_the_option() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        lo = int(rng.integers(0, 500))
        hi = lo + int(rng.integers(0, 500))
        for text in (str(lo), f"fixed:{hi}", f"uniform:{lo}:{hi}", f"lognormal:{hi + 1}:{rng.uniform(0, 2):.3f}"):
            dist = CandidateDist.parse(text, what="--history-dist", minimum=0)
            draws = dist.sample(3000, np.random.default_rng(lo), max_cand=700)
            np.testing.assert_array_equal(draws, dist.sample(3000, np.random.default_rng(lo), max_cand=700))
            assert draws.min() >= 0 and draws.max() <= 700
    assert CandidateDist.parse("lognormal:1:3", what="--history-dist", minimum=0).sample(5000, rng).min() == 0
    for bad in ("", "-1", "uniform:-1:5", "uniform:9:3", "zipf:1:2", "lognormal:0:1", "lognormal:5:-1", "inf", "1e30", "4:5"):
        with pytest.raises(MtbenchError, match="^--history-dist: "):
            CandidateDist.parse(bad, what="--history-dist", minimum=0)
    with pytest.raises(MtbenchError, match="^--cand-dist: "):
        CandidateDist.parse("0")  # a request needs a candidate


@pytest.mark.parametrize("value, message", [("uniform:10", "cannot read"), ("uniform:1001:1200", "exceed max_seq 1000"),
                                            ("-3", "count >= 0")])
def test_bad_history_dist_exits_2_naming_the_option(value: str, message: str, tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "t.parquet"
    result = subprocess.run([sys.executable, "-m", "mtbench", "trace", "synth", "--users", "10", "--requests", "100",
                             "--duration", "1d", "--history-dist", value, "-o", str(out)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --history-dist") and message in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())
