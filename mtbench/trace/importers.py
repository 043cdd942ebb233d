"""Importers: real behaviour logs and cache traces -> request traces (parquet).

Behaviour logs (per-user events) go through `mtbench.trace.events.events_to_requests`:
    movielens   ratings.csv (userId,movieId,rating,timestamp), u.data (tab: user item rating ts),
                ratings.dat (user::item::rating::ts)
    lastfm      hetrec2011 user_taggedartists.dat (userID artistID tagID day month year, tab, header)
                or user_taggedartists-timestamps.dat (userID artistID tagID timestamp[ms])
    kuairand    KuaiRand log CSV (user_id, video_id, date, hourmin, time_ms, is_click, ...)
Cache traces (one key per access) go through `cache_to_requests`:
    libcachesim CSV (columns named or numbered), plain text (one key per line), oracleGeneral binary
                (little-endian records: uint32 time, uint64 obj_id, uint32 size, int64 next_access_vtime)
    arc         ARC .lis lines "start n_blocks ignore req_no", each expanded into pages start..start+n-1
Any input may be zstd-compressed (name ending in .zst). Every reader is vectorised (pandas C parser
or numpy), and every bad value (not a number, negative, a date before 1970 or not a date) raises
MtbenchError naming the file, the column and the line, or, with `drop_invalid`, drops the row and
counts it (`Events.dropped`, `Accesses.dropped`). MovieLens files may come with or without a header
line, separated by commas, tabs or '::'.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.trace.candidates import CandidateDist
from mtbench.trace.events import EventRules, events_to_requests
from mtbench.trace.reversion import version_index

BEHAVIOUR_KINDS = ("movielens", "lastfm", "kuairand")
CACHE_KINDS = ("libcachesim", "arc")
KINDS = (*BEHAVIOUR_KINDS, *CACHE_KINDS)
ORACLE_GENERAL_RECORD = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("size", "<u4"), ("next_access_vtime", "<i8")])


def read_bytes(path: Path) -> bytes:
    """File contents, transparently zstd-decompressed when the name ends in .zst."""
    if not path.is_file():
        raise MtbenchError(f"{path}: no such file")
    data = path.read_bytes()
    if path.suffix != ".zst":
        return data
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError as err:
        raise MtbenchError(f"{path}: not a valid zstd file ({err})") from None


def _base_name(path: Path) -> str:
    return path.name[: -len(".zst")] if path.name.endswith(".zst") else path.name


def _read_table(path: Path, data: bytes, **kwargs: object) -> pd.DataFrame:
    if not data.strip():
        raise MtbenchError(f"{path}: file is empty")
    try:
        return pd.read_csv(io.BytesIO(data), **kwargs)
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as err:
        raise MtbenchError(f"{path}: cannot parse ({str(err).splitlines()[0]})") from None


@dataclass
class RowCheck:
    """The rows of one table that failed a value check so far (`bad`), and what is wrong with the
    earliest of them. `kept()` ends the checks: without `drop` a failure raises MtbenchError naming the
    file, the column and the first bad line; with it, the rows to keep. `first_line` is the 1-based
    file line of the table's first row (2 after a header line).
    """

    path: Path
    first_line: int
    rows: int
    drop: bool = False
    bad: np.ndarray = field(init=False)
    _first: tuple[int, str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.bad = np.zeros(self.rows, dtype=bool)

    def fail(self, mask: np.ndarray, column: str, describe) -> None:
        """Rows where `mask` is True are invalid; `describe(row)` says why."""
        if not mask.any():
            return
        row = int(np.flatnonzero(mask)[0])
        if self._first is None or row < self._first[0]:
            self._first = (row, f"column '{column}', line {self.first_line + row}: {describe(row)}")
        self.bad |= mask

    def kept(self) -> np.ndarray:
        if self._first is not None and not self.drop:
            raise MtbenchError(f"{self.path}: {self._first[1]} (--drop-invalid skips such rows)")
        return ~self.bad

    @property
    def dropped(self) -> int:
        return int(self.bad.sum())


def numeric_column(frame: pd.DataFrame, column: str, check: RowCheck, integer: bool = True) -> np.ndarray:
    """frame[column] as int64/float64; a missing column -> MtbenchError; a non-numeric/empty cell or (with
    `integer`) a fraction fails `check` (such rows hold 0)."""
    if column not in frame.columns:
        raise MtbenchError(f"{check.path}: column '{column}' is missing (has: {', '.join(map(str, frame.columns))})")
    array = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    missing = np.isnan(array)
    check.fail(missing, column, lambda row: f"not a number: {frame[column].iloc[row]!r}")
    array = np.where(missing, 0.0, array)
    if integer:
        fractional = array != np.floor(array)
        check.fail(fractional, column, lambda row: f"not an integer: {array[row]}")
        return np.where(fractional, 0, array).astype(np.int64)
    return array


def _non_negative(values: np.ndarray, column: str, check: RowCheck, what: str = "negative value") -> np.ndarray:
    check.fail(values < 0, column, lambda row: f"{what} {values[row]}")
    return values


# ---------------------------------------------------------------- behaviour logs -> (user, unix ts, item)


@dataclass(frozen=True)
class Events:
    """Parallel arrays of one behaviour log: user_id, ts_unix (seconds), item_id; `dropped` invalid rows."""

    user_id: np.ndarray
    ts_unix: np.ndarray
    item_id: np.ndarray
    dropped: int = 0

    @classmethod
    def checked(cls, user: np.ndarray, ts: np.ndarray, item: np.ndarray, check: RowCheck) -> "Events":
        keep = check.kept()
        return cls(user[keep], ts[keep], item[keep], check.dropped)


BEFORE_1970 = "a time before 1970 (negative Unix time)"
MOVIELENS_COLUMNS = ("userId", "movieId", "rating", "timestamp")


def _movielens_separator(first_line: bytes) -> bytes:
    return next((sep for sep in (b"::", b"\t") if sep in first_line), b",")


def read_movielens(path: Path, drop_invalid: bool = False) -> Events:
    """ratings.csv, u.data or ratings.dat: fields user, item, rating, time (Unix seconds) in this order,
    separated by ',', tab or '::', with or without a header line (any names: the order decides)."""
    data = read_bytes(path)
    first = data.split(b"\n", 1)[0].strip()
    separator = _movielens_separator(first)
    if separator == b"::":
        data, separator = data.replace(b"::", b"\t"), b"\t"
    first_field = first.replace(b"::", b"\t").split(separator, 1)[0].strip()
    header = not first_field.lstrip(b"-").replace(b".", b"", 1).isdigit()
    frame = _read_table(path, data, sep=separator.decode(), header=None, names=list(MOVIELENS_COLUMNS),
                        skiprows=1 if header else 0, usecols=range(4))
    check = RowCheck(path, 2 if header else 1, len(frame), drop_invalid)
    user = _non_negative(numeric_column(frame, "userId", check), "userId", check)
    item = numeric_column(frame, "movieId", check)
    ts = _non_negative(numeric_column(frame, "timestamp", check, integer=False), "timestamp", check, BEFORE_1970)
    return Events.checked(user, ts, item, check)


def read_lastfm(path: Path, drop_invalid: bool = False) -> Events:
    frame = _read_table(path, read_bytes(path), sep="\t")
    check = RowCheck(path, 2, len(frame), drop_invalid)
    user = _non_negative(numeric_column(frame, "userID", check), "userID", check)
    item = numeric_column(frame, "artistID", check)
    if "timestamp" in frame.columns:
        ts = _non_negative(numeric_column(frame, "timestamp", check, integer=False), "timestamp", check, BEFORE_1970) / 1000.0
        return Events.checked(user, ts, item, check)
    parts = {c: numeric_column(frame, c, check) for c in ("year", "month", "day")}
    dates = pd.to_datetime(pd.DataFrame(parts), errors="coerce", utc=True)
    check.fail(dates.isna().to_numpy(), "day/month/year",
               lambda row: f"not a valid date ({parts['day'][row]}/{parts['month'][row]}/{parts['year'][row]})")
    ts = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().fillna(0.0).to_numpy(dtype=np.float64)
    check.fail(ts < 0, "year", lambda row: f"a date before 1970 ({parts['day'][row]}/{parts['month'][row]}/{parts['year'][row]})")
    return Events.checked(user, ts, item, check)


def read_kuairand(path: Path, clicks_only: bool = False, drop_invalid: bool = False) -> Events:
    frame = _read_table(path, read_bytes(path))
    check = RowCheck(path, 2, len(frame), drop_invalid)
    user = _non_negative(numeric_column(frame, "user_id", check), "user_id", check)
    item = numeric_column(frame, "video_id", check)
    if "time_ms" in frame.columns:
        ts = _non_negative(numeric_column(frame, "time_ms", check, integer=False), "time_ms", check, BEFORE_1970) / 1000.0
    else:
        date_text = numeric_column(frame, "date", check).astype(str)
        date = pd.to_datetime(pd.Series(date_text), format="%Y%m%d", errors="coerce", utc=True)
        check.fail(date.isna().to_numpy(), "date", lambda row: f"not a YYYYMMDD date: {date_text[row]}")
        hourmin = _non_negative(numeric_column(frame, "hourmin", check), "hourmin", check)
        midnight = (date - pd.Timestamp(0, tz="UTC")).dt.total_seconds().fillna(0.0).to_numpy(dtype=np.float64)
        check.fail(midnight < 0, "date", lambda row: f"a date before 1970: {date_text[row]}")
        ts = midnight + (hourmin // 100) * 3600.0 + (hourmin % 100) * 60.0
    clicked = numeric_column(frame, "is_click", check) == 1 if clicks_only else True
    keep = check.kept() & clicked
    return Events(user[keep], ts[keep], item[keep], check.dropped)


# ---------------------------------------------------------------- cache traces -> (key, time | None, size | None)


@dataclass(frozen=True)
class Accesses:
    """Parallel arrays of one cache trace: key (int64 or uint64), time (float seconds or None), size (bytes
    or None); `dropped` invalid rows."""

    key: np.ndarray
    time: np.ndarray | None
    size: np.ndarray | None
    dropped: int = 0


@dataclass(frozen=True)
class CsvColumns:
    """libCacheSim CSV layout: column names, or 1-based numbers when `header` is False."""

    key: str = "auto"
    time: str | None = "auto"
    size: str | None = "auto"
    header: bool = True
    delimiter: str = ","
    time_unit: float = 1.0


_AUTO_KEYS = ("obj_id", "obj-id", "key", "lbn", "id")


def _pick(frame: pd.DataFrame, spec: str | None, auto: tuple[str, ...], path: Path, what: str, required: bool) -> str | None:
    if spec is None or spec == "none":
        return None
    if spec != "auto":
        if spec.isdigit() and spec not in frame.columns:
            index = int(spec) - 1
            if not 0 <= index < frame.shape[1]:
                raise MtbenchError(f"{path}: {what} column number {spec} is out of range (1..{frame.shape[1]})")
            return frame.columns[index]
        if spec not in frame.columns:
            raise MtbenchError(f"{path}: {what} column '{spec}' is missing (has: {', '.join(map(str, frame.columns))})")
        return spec
    found = next((c for c in auto if c in frame.columns), None)
    if found is None and required:
        raise MtbenchError(f"{path}: no {what} column (looked for {', '.join(auto)}; name it with --{what}-col)")
    return found


def read_libcachesim_csv(path: Path, columns: CsvColumns, drop_invalid: bool = False) -> Accesses:
    header = 0 if columns.header else None
    frame = _read_table(path, read_bytes(path), sep=columns.delimiter, header=header)
    if header is None:
        frame.columns = [str(i + 1) for i in range(frame.shape[1])]
    check = RowCheck(path, 2 if columns.header else 1, len(frame), drop_invalid)
    key_col = _pick(frame, columns.key, _AUTO_KEYS, path, "key", required=True)
    time_col = _pick(frame, columns.time, ("time", "timestamp", "ts"), path, "time", required=False)
    size_col = _pick(frame, columns.size, ("size", "obj_size", "obj-size"), path, "size", required=False)
    key = _non_negative(numeric_column(frame, key_col, check), key_col, check)
    time = None
    if time_col is not None:
        time = numeric_column(frame, time_col, check, integer=False) * columns.time_unit
    size = None if size_col is None else _non_negative(numeric_column(frame, size_col, check), size_col, check)
    keep = check.kept()
    return Accesses(key[keep], None if time is None else time[keep], None if size is None else size[keep], check.dropped)


def read_libcachesim_txt(path: Path, drop_invalid: bool = False) -> Accesses:
    frame = _read_table(path, read_bytes(path), header=None, names=["key"], sep=",")
    check = RowCheck(path, 1, len(frame), drop_invalid)
    key = _non_negative(numeric_column(frame, "key", check), "key", check)
    return Accesses(key[check.kept()], None, None, check.dropped)


def read_oracle_general(path: Path, time_unit: float = 1.0) -> Accesses:
    data = read_bytes(path)
    if not data:
        raise MtbenchError(f"{path}: file is empty")
    if len(data) % ORACLE_GENERAL_RECORD.itemsize:
        raise MtbenchError(f"{path}: {len(data)} bytes is not a whole number of {ORACLE_GENERAL_RECORD.itemsize}-byte "
                           "oracleGeneral records (uint32 time, uint64 obj_id, uint32 size, int64 next_access_vtime)")
    records = np.frombuffer(data, dtype=ORACLE_GENERAL_RECORD)
    return Accesses(records["obj_id"].copy(), records["time"].astype(np.float64) * time_unit, records["size"].astype(np.int64))


def read_libcachesim(path: Path, columns: CsvColumns, fmt: str = "auto", drop_invalid: bool = False) -> Accesses:
    """fmt: csv | txt | oracleGeneral | auto (by name: *.bin or *oracleGeneral* -> binary, *.txt -> text)."""
    name = _base_name(path)
    if fmt == "auto":
        fmt = "oracleGeneral" if name.endswith(".bin") or "oracleGeneral" in name else "txt" if name.endswith(".txt") else "csv"
    readers = {
        "csv": lambda: read_libcachesim_csv(path, columns, drop_invalid),
        "txt": lambda: read_libcachesim_txt(path, drop_invalid),
        "oracleGeneral": lambda: read_oracle_general(path, columns.time_unit),
    }
    if fmt not in readers:
        raise MtbenchError(f"--format: unknown libcachesim format {fmt!r} (choose csv, txt, oracleGeneral)")
    return readers[fmt]()


def read_arc(path: Path) -> Accesses:
    """ARC .lis: each line "start n_blocks ignore req_no" -> pages start .. start+n_blocks-1, in order."""
    data = read_bytes(path)
    lines = data.splitlines()
    if not data.strip():
        raise MtbenchError(f"{path}: file is empty")
    try:
        values = np.array(data.split(), dtype=np.int64)
    except ValueError:
        values = np.empty(0, dtype=np.int64)  # a non-integer field: located below
    if values.size != 4 * len([line for line in lines if line.strip()]):
        bad = next(i for i, line in enumerate(lines)
                   if line.strip() and (len(line.split()) != 4 or not all(f.lstrip(b"-").isdigit() for f in line.split())))
        raise MtbenchError(f"{path}: line {bad + 1}: expected 4 integer fields 'start n_blocks ignore req_no', got {lines[bad][:80]!r}")
    fields = values.reshape(-1, 4)
    start, n_blocks = fields[:, 0], fields[:, 1]
    for column, name in ((start, "start"), (n_blocks, "n_blocks")):
        if (column < 0).any():
            row = int(np.flatnonzero(column < 0)[0])
            raise MtbenchError(f"{path}: column '{name}', line {row + 1}: negative value {column[row]}")
    line_of_page = np.repeat(np.arange(fields.shape[0]), n_blocks)
    first_page_index = np.cumsum(n_blocks) - n_blocks
    pages = start[line_of_page] + (np.arange(line_of_page.shape[0]) - first_page_index[line_of_page])
    return Accesses(pages, None, None)


@dataclass(frozen=True)
class CacheRules:
    """How accesses become requests: key -> user_id, static_version 0, ts = time - first time (or the
    access index when there is none; a trace not in time order is stably sorted by time).
    n_static = fixed_static when set, else ceil(size / bytes_per_token) clipped to [1, max_static]
    when sizes exist, else max_static (a full history). With `version_period` (seconds) the keys get
    static_version = `reversion.version_index(ts, version_period)` instead of 0."""

    max_static: int
    bytes_per_token: int | None = None
    fixed_static: int | None = None
    n_rt: int = 0
    cand: CandidateDist = CandidateDist("fixed", (128.0,))
    max_cand: int | None = None
    seed: int = 0
    version_period: float | None = None


def _keys_as_user_ids(key: np.ndarray) -> np.ndarray:
    """Keys as int64 ids: kept as they are when they fit, else renumbered densely by first appearance."""
    if key.dtype != np.uint64 or key.size == 0 or key.max() <= np.iinfo(np.int64).max:
        return key.astype(np.int64)
    uniques, first_index, inverse = np.unique(key, return_index=True, return_inverse=True)
    rank_by_first_use = np.empty(uniques.size, dtype=np.int64)
    rank_by_first_use[np.argsort(first_index, kind="stable")] = np.arange(uniques.size)
    return rank_by_first_use[inverse]


def cache_to_requests(accesses: Accesses, rules: CacheRules) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Apply CacheRules; return (trace columns sorted by ts, counters such as rows clipped to max_static)."""
    n = accesses.key.shape[0]
    if n == 0:
        raise MtbenchError("the cache trace has no accesses")
    ts = np.arange(n, dtype=np.float64) if accesses.time is None else accesses.time - accesses.time.min()
    order = np.argsort(ts, kind="stable")
    counters = {"reordered_rows": int((order != np.arange(n)).sum()), "clipped_rows": 0}
    if rules.fixed_static is not None:
        n_static = np.full(n, rules.fixed_static, dtype=np.int64)
    elif accesses.size is not None and rules.bytes_per_token:
        tokens = -(-accesses.size.astype(np.int64) // rules.bytes_per_token)
        counters["clipped_rows"] = int(((tokens < 1) | (tokens > rules.max_static)).sum())
        n_static = np.clip(tokens, 1, rules.max_static)
    else:
        n_static = np.full(n, rules.max_static, dtype=np.int64)
    columns = {
        "ts": ts,
        "user_id": _keys_as_user_ids(accesses.key),
        "static_version": version_index(ts, rules.version_period),
        "n_static": n_static,
        "n_rt": np.full(n, rules.n_rt, dtype=np.int64),
        "n_cand": rules.cand.sample(n, np.random.default_rng(rules.seed), rules.max_cand),
    }
    if accesses.size is not None:
        columns["obj_size"] = accesses.size.astype(np.int64)
    return {name: values[order] for name, values in columns.items()}, counters


def read_events(kind: str, path: Path, clicks_only: bool = False, drop_invalid: bool = False) -> Events:
    readers = {"movielens": read_movielens, "lastfm": read_lastfm,
               "kuairand": lambda p, drop: read_kuairand(p, clicks_only, drop)}
    return readers[kind](path, drop_invalid)


def import_events(kind: str, paths: list[Path], rules: EventRules, clicks_only: bool = False, drop_invalid: bool = False
                  ) -> tuple[dict[str, np.ndarray], float, int]:
    """Read one or more behaviour logs of `kind` and turn them into trace columns; return (columns,
    epoch_unix, invalid rows dropped)."""
    logs = [read_events(kind, path, clicks_only, drop_invalid) for path in paths]
    user = np.concatenate([log.user_id for log in logs])
    ts = np.concatenate([log.ts_unix for log in logs])
    item = np.concatenate([log.item_id for log in logs])
    columns, epoch = events_to_requests(user, ts, rules, extra={"item_id": item})
    return columns, epoch, sum(log.dropped for log in logs)


def import_accesses(kind: str, path: Path, columns: CsvColumns, fmt: str = "auto", drop_invalid: bool = False) -> Accesses:
    return read_arc(path) if kind == "arc" else read_libcachesim(path, columns, fmt, drop_invalid)
