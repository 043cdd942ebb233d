"""Importers: counts on the real data, generated Last.fm / KuaiRand / u.data files, the event rules
against a plain-Python reference, cache-trace rules, bad input, and CLI behaviour."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtbench.errors import MtbenchError
from mtbench.trace import open_trace
from mtbench.trace.candidates import CandidateDist
from mtbench.trace.events import EventRules, events_to_requests
from mtbench.trace.importers import (
    ORACLE_GENERAL_RECORD, CacheRules, CsvColumns, cache_to_requests, read_arc, read_kuairand, read_lastfm,
    read_libcachesim, read_movielens,
)

DAY = 86400


def run_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    from mtbench.cli import main

    monkeypatch.setattr(sys, "argv", ["mtbench", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0)


def reference_requests(users: list[int], times: list[float], rules: EventRules) -> list[tuple]:
    """The documented rules, one event at a time: (ts, user, day, n_static, n_rt) per request."""
    epoch = (min(times) // DAY) * DAY
    by_user: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for index, (user, t) in enumerate(zip(users, times)):
        by_user[user].append((t - epoch, index))
    requests = []
    for user, events in by_user.items():
        events.sort()
        visit_start = None
        for position, (t, _) in enumerate(events):
            if rules.session_gap is not None and position > 0 and t - events[position - 1][0] <= rules.session_gap:
                continue
            day = int(t // DAY)
            earlier_days = sum(1 for other, _ in events[:position] if other // DAY < day)
            same_day = sum(1 for other, _ in events[:position] if other // DAY == day)
            visit_start = t
            requests.append((visit_start, user, day, rules.user_tokens + min(earlier_days, rules.max_seq),
                             min(same_day, rules.max_rt)))
    return sorted(requests)


@pytest.mark.parametrize("seed", range(12))
def test_event_rules_match_plain_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    users = rng.integers(0, int(rng.integers(1, 12)), n)
    times = 1.6e9 + np.round(rng.exponential(rng.choice([600.0, 20000.0, 200000.0]), n).cumsum()[rng.permutation(n)])
    rules = EventRules(user_tokens=int(rng.integers(1, 40)), max_seq=int(rng.integers(0, 60)), max_rt=int(rng.integers(0, 30)),
                       session_gap=[None, 900.0, 3600.0][seed % 3], seed=seed)
    columns, epoch = events_to_requests(users, times, rules)
    got = sorted(zip(columns["ts"], columns["user_id"], columns["static_version"], columns["n_static"], columns["n_rt"]))
    expected = reference_requests(list(users), list(times), rules)
    assert [(float(a), int(b), int(c), int(d), int(e)) for a, b, c, d, e in got] == expected
    assert np.all(np.diff(columns["ts"]) >= 0) and epoch % DAY == 0


def test_candidate_distributions_are_seeded_and_bounded() -> None:
    for text in ("64", "fixed:7", "lognormal:64:1.2", "uniform:3:9"):
        dist = CandidateDist.parse(text)
        a = dist.sample(5000, np.random.default_rng(1), max_cand=100)
        b = dist.sample(5000, np.random.default_rng(1), max_cand=100)
        np.testing.assert_array_equal(a, b)
        assert a.min() >= 1 and a.max() <= 100
    for bad in ("", "lognormal:64", "uniform:9:3", "zipf:1:2", "0"):
        with pytest.raises(MtbenchError, match="--cand-dist"):
            CandidateDist.parse(bad)


def test_movielens_real_counts_and_round_trip(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = shared_data / "movielens-latest-small" / "ratings.csv"
    out = tmp_path / "ml.parquet"
    assert run_in_process(["trace", "import", "movielens", str(source), "-o", str(out)], monkeypatch) == 0
    trace = open_trace(out)
    frame = trace.read()
    assert trace.num_rows == 100_836 and frame["user_id"].nunique() == 610 and frame["item_id"].nunique() == 9_724
    epoch = float(trace._parquet.schema_arrow.metadata[b"mtbench.epoch_unix"])
    ratings = pd.read_csv(source)
    got = sorted(zip(frame["user_id"], frame["item_id"], (frame["ts"] + epoch).astype(np.int64)))
    assert got == sorted(zip(ratings["userId"], ratings["movieId"], ratings["timestamp"]))
    assert frame["n_static"].max() <= 1032 and frame["n_rt"].max() <= 100


def test_movielens_udata_and_dat_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [(int(rng.integers(1, 30)), int(rng.integers(1, 500)), int(rng.integers(1, 6)), int(8.8e8 + rng.integers(0, 10**7))) for _ in range(400)]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    for name in ("u.data", "ratings.dat"):
        events = read_movielens(tmp_path / name)
        assert sorted(zip(events.user_id, events.item_id, events.ts_unix.astype(int))) == sorted((u, i, t) for u, i, _, t in rows)


def test_movielens_headered_and_headerless_variants(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    rows = [(int(rng.integers(1, 30)), int(rng.integers(1, 500)), float(rng.integers(1, 11)) / 2, int(8.8e8 + rng.integers(0, 10**7)))
            for _ in range(300)]
    expected = sorted((u, i, t) for u, i, _, t in rows)
    variants = {
        "ratings-noheader.csv": ("", ","),
        "ratings-snake.csv": ("user_id,item_id,rating,timestamp\n", ","),
        "u-header.data": ("user id\titem id\trating\ttimestamp\n", "\t"),
        "ratings-header.dat": ("UserID::MovieID::Rating::Timestamp\n", "::"),
    }
    for name, (header, separator) in variants.items():
        (tmp_path / name).write_text(header + "".join(separator.join(map(str, row)) + "\n" for row in rows))
        events = read_movielens(tmp_path / name)
        assert sorted(zip(events.user_id, events.item_id, events.ts_unix.astype(int))) == expected, name
        assert events.dropped == 0


def test_movielens_bad_rows_stop_the_import_or_are_dropped(tmp_path: Path) -> None:
    lines = ["userId,movieId,rating,timestamp", "1,10,4.0,964982703", "1,11,3.0,-1", "2,x,1.0,964982800", "3,12,2.0,964982900"]
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MtbenchError, match=r"column 'timestamp', line 3: a time before 1970.*--drop-invalid"):
        read_movielens(path)
    events = read_movielens(path, drop_invalid=True)
    assert events.user_id.tolist() == [1, 3] and events.item_id.tolist() == [10, 12] and events.dropped == 2


def test_lastfm_generated_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lines = ["userID\tartistID\ttagID\tday\tmonth\tyear"]
    expected = []
    for _ in range(300):
        user, artist, day, month, year = (int(rng.integers(2, 40)), int(rng.integers(1, 900)), int(rng.integers(1, 29)),
                                          int(rng.integers(1, 13)), int(rng.integers(2005, 2011)))
        lines.append(f"{user}\t{artist}\t{int(rng.integers(1, 99))}\t{day}\t{month}\t{year}")
        expected.append((user, artist, pd.Timestamp(year=year, month=month, day=day, tz="UTC").timestamp()))
    path = tmp_path / "user_taggedartists.dat"
    path.write_text("\n".join(lines) + "\n")
    events = read_lastfm(path)
    assert sorted(zip(events.user_id, events.item_id, events.ts_unix)) == sorted(expected)
    lines[5] = lines[5].rsplit("\t", 3)[0] + "\t31\t2\t2008"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MtbenchError, match="line 6: not a valid date"):
        read_lastfm(path)


def test_kuairand_generated_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 500
    time_ms = (1.6494e12 + np.sort(rng.integers(0, 14 * DAY * 1000, n))).astype(np.int64)
    frame = pd.DataFrame({"user_id": rng.integers(0, 50, n), "video_id": rng.integers(0, 5000, n),
                          "date": pd.to_datetime(time_ms, unit="ms").strftime("%Y%m%d").astype(int),
                          "hourmin": pd.to_datetime(time_ms, unit="ms").strftime("%H%M").astype(int),
                          "time_ms": time_ms, "is_click": rng.integers(0, 2, n), "play_time_ms": rng.integers(0, 10**5, n)})
    path = tmp_path / "log_standard_4_08_to_4_21_1k.csv"
    frame.to_csv(path, index=False)
    events = read_kuairand(path)
    np.testing.assert_allclose(events.ts_unix, time_ms / 1000.0)
    clicks = read_kuairand(path, clicks_only=True)
    assert clicks.user_id.shape[0] == int(frame["is_click"].sum())
    no_ms = tmp_path / "no_ms.csv"
    frame.drop(columns=["time_ms"]).to_csv(no_ms, index=False)
    np.testing.assert_allclose(read_kuairand(no_ms).ts_unix, (time_ms // 60000) * 60.0)
    frame["user_id"] = frame["user_id"].astype(str).where(frame.index != 17, "abc")
    frame.to_csv(path, index=False)
    with pytest.raises(MtbenchError, match="column 'user_id', line 19: not a number"):
        read_kuairand(path)


def test_arc_real_counts(shared_data: Path) -> None:
    pages = read_arc(shared_data / "cachetrace-arc-ibm" / "OLTP.lis.zst").key
    assert pages.shape[0] == 914_145 and np.unique(pages).shape[0] == 186_880


@pytest.mark.parametrize("seed", range(4))
def test_arc_expansion_plain_and_zstd(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = [(int(rng.integers(0, 10**6)), int(rng.integers(0, 9)), 0, k) for k in range(int(rng.integers(1, 60)))]
    text = "".join(f"{s} {n} {z} {k}\n" for s, n, z, k in lines).encode()
    expected = [s + j for s, n, _, _ in lines for j in range(n)]
    (tmp_path / "t.lis").write_bytes(text)
    zstandard = pytest.importorskip("zstandard")  # the test extra (absent on the GPU machine)
    (tmp_path / "t.lis.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    for name in ("t.lis", "t.lis.zst"):
        assert read_arc(tmp_path / name).key.tolist() == expected
    (tmp_path / "bad.lis").write_bytes(text + b"5 3 0\n")
    with pytest.raises(MtbenchError, match=f"line {len(lines) + 1}: expected 4 integer fields"):
        read_arc(tmp_path / "bad.lis")


@pytest.mark.parametrize("name", ["cloudPhysicsIO.csv", "cloudPhysicsIO.txt", "cloudPhysicsIO.oracleGeneral.bin"])
def test_cloudphysics_real_counts(shared_data: Path, name: str) -> None:
    accesses = read_libcachesim(shared_data / "cachetrace-cloudphysics-libcachesim" / name, CsvColumns())
    assert accesses.key.shape[0] == 113_872 and np.unique(accesses.key).shape[0] == 48_974


def test_libcachesim_formats_agree_and_sizes_map_to_tokens(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 1000
    time = np.sort(rng.integers(100, 5000, n)).astype(np.uint32)
    key = rng.integers(0, 300, n).astype(np.uint64)
    size = rng.integers(1, 200_000, n).astype(np.uint32)
    records = np.zeros(n, dtype=ORACLE_GENERAL_RECORD)
    records["time"], records["obj_id"], records["size"], records["next_access_vtime"] = time, key, size, -1
    records.tofile(tmp_path / "t.oracleGeneral.bin")
    pd.DataFrame({"a": 1, "t": time, "sz": size, "k": key}).to_csv(tmp_path / "t.csv", index=False, header=False)
    binary = read_libcachesim(tmp_path / "t.oracleGeneral.bin", CsvColumns())
    csv = read_libcachesim(tmp_path / "t.csv", CsvColumns(key="4", time="2", size="3", header=False))
    for a, b in ((binary.key, csv.key), (binary.time, csv.time), (binary.size, csv.size)):
        np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64))
    rules = CacheRules(max_static=1032, bytes_per_token=46_080)
    columns, counters = cache_to_requests(binary, rules)
    np.testing.assert_array_equal(columns["n_static"], np.clip(np.ceil(size / 46_080), 1, 1032).astype(np.int64))
    np.testing.assert_array_equal(columns["ts"], time - time.min())
    assert counters["reordered_rows"] == 0 and (columns["static_version"] == 0).all()
    fixed, _ = cache_to_requests(binary, CacheRules(max_static=1032, fixed_static=77))
    assert (fixed["n_static"] == 77).all()
    (tmp_path / "short.bin").write_bytes(records.tobytes()[:-5])
    with pytest.raises(MtbenchError, match="not a whole number of 24-byte"):
        read_libcachesim(tmp_path / "short.bin", CsvColumns())


def test_huge_uint64_keys_are_renumbered_by_first_use() -> None:
    from mtbench.trace.importers import Accesses

    key = np.array([2**63 + 5, 7, 2**63 + 5, 2**64 - 1, 7], dtype=np.uint64)
    columns, _ = cache_to_requests(Accesses(key, None, None), CacheRules(max_static=10))
    assert columns["user_id"].tolist() == [0, 1, 0, 2, 1] and columns["ts"].tolist() == [0, 1, 2, 3, 4]


def run_mtbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtbench", *args], capture_output=True, text=True)


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "ratings.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,3.0,100\n1,3,4.0,oops\n")
    out = tmp_path / "out.parquet"
    result = run_mtbench("trace", "import", "movielens", str(bad), "-o", str(out))
    assert result.returncode == 2 and "column 'timestamp', line 3" in result.stderr and "Traceback" not in result.stderr
    assert run_in_process(["trace", "import", "movielens", str(bad), "-o", str(out), "--cand", "5000"], monkeypatch) == 2
    assert "max_cand" in capsys.readouterr().err
    assert run_in_process(["trace", "import", "arc", str(bad), "-o", str(out)], monkeypatch) == 2
    assert "line 1: expected 4 integer fields" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv"]
