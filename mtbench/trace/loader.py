"""Open, validate and stream request traces (parquet, one row per request, sorted by `ts`).

Schema (see traces/README.md): required columns

    ts              float64  seconds since the trace's epoch, non-decreasing
    user_id         int64    cache key part 1 (>= 0)
    static_version  int64    cache key part 2 (>= 0); a new version makes the old entry stale
    n_static        int64    U+S tokens (>= 1, U included)
    n_rt            int64    R tokens (>= 0)
    n_cand          int64    candidates (>= 1)

Any other column is optional and kept. Integer columns may be stored in any integer width (or as
floats holding whole numbers, as pandas stores an integer column with a missing value) and `ts` in any
float or integer type: readers always get the canonical dtypes above.

Invariant of a `Trace`: every row of the file passed validation when `open_trace` returned, so
consumers never re-check values. Validation streams the file batch by batch, so a trace larger than
memory is never loaded whole (except with `sort=True` on an unsorted file, which must sort in memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtbench.errors import MtbenchError

TS = "ts"
INT_COLUMNS: tuple[str, ...] = ("user_id", "static_version", "n_static", "n_rt", "n_cand")
REQUIRED_COLUMNS: tuple[str, ...] = (TS, *INT_COLUMNS)
CANONICAL_DTYPES: dict[str, np.dtype] = {TS: np.dtype("float64"), **{c: np.dtype("int64") for c in INT_COLUMNS}}
MIN_VALUES: dict[str, int] = {"user_id": 0, "static_version": 0, "n_static": 1, "n_rt": 0, "n_cand": 1}

VALIDATION_BATCH_ROWS = 1_000_000


@dataclass(frozen=True)
class TraceLimits:
    """Per-request maxima a model accepts; None means unlimited."""

    max_static: int | None = None
    max_rt: int | None = None
    max_cand: int | None = None

    def by_column(self) -> dict[str, int]:
        """{column: maximum} for the limits that are set."""
        pairs = {"n_static": self.max_static, "n_rt": self.max_rt, "n_cand": self.max_cand}
        return {column: limit for column, limit in pairs.items() if limit is not None}


def _bad(path: Path, message: str) -> MtbenchError:
    return MtbenchError(f"{path}: {message}")


def _check_schema(path: Path, schema: pa.Schema) -> None:
    """Every required column exists with a usable type (ints: any integer; ts: float or integer)."""
    for column in REQUIRED_COLUMNS:
        if column not in schema.names:
            raise _bad(path, f"column '{column}' is missing (required: {', '.join(REQUIRED_COLUMNS)})")
        arrow_type = schema.field(column).type
        if column == TS:
            ok = pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)
            expected = "float64"
        else:  # floats are checked value by value: NaN and fractions are reported by row
            ok = (pa.types.is_integer(arrow_type) and arrow_type != pa.uint64()) or pa.types.is_floating(arrow_type)
            expected = "int64"
        if not ok:
            raise _bad(path, f"column '{column}' has dtype {arrow_type}, expected {expected}")


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


class _StreamValidator:
    """Checks value rules batch by batch, carrying the previous batch's last `ts` across boundaries."""

    def __init__(self, path: Path, limits: TraceLimits, allow_unsorted: bool) -> None:
        self.path = path
        self.maxima = limits.by_column()
        self.allow_unsorted = allow_unsorted
        self.rows_seen = 0
        self.last_ts = -np.inf
        self.sorted = True

    def check(self, batch: pa.RecordBatch) -> None:
        for column in REQUIRED_COLUMNS:
            self._check_column(column, batch.column(column))
        self.rows_seen += batch.num_rows

    def _check_column(self, column: str, array: pa.Array) -> None:
        if array.null_count:
            row = _first_true(np.asarray(array.is_null()))
            raise self._error(column, row, "is null/NaN")
        values = array.to_numpy(zero_copy_only=False)
        if column == TS:
            self._check_ts(values.astype(np.float64, copy=False))
            return
        if values.dtype.kind == "f":
            self._check_whole(column, values)
        minimum = MIN_VALUES[column]
        if (values < minimum).any():
            row = _first_true(values < minimum)
            raise self._error(column, row, f"value {values[row]} is below the minimum {minimum}")
        maximum = self.maxima.get(column)
        if maximum is not None and (values > maximum).any():
            row = _first_true(values > maximum)
            raise self._error(column, row, f"value {values[row]} exceeds the model limit {maximum}")

    def _check_whole(self, column: str, values: np.ndarray) -> None:
        """An integer column stored as floats: every value a whole number that fits int64."""
        if np.isnan(values).any():
            raise self._error(column, _first_true(np.isnan(values)), "is NaN (an integer column needs a whole number)")
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (np.abs(values) >= 2.0**63)
        if bad.any():
            row = _first_true(bad)
            raise self._error(column, row, f"value {values[row]} is not an integer")

    def _check_ts(self, ts: np.ndarray) -> None:
        if np.isnan(ts).any():
            raise self._error(TS, _first_true(np.isnan(ts)), "is null/NaN")
        if not np.isfinite(ts).all():
            row = _first_true(~np.isfinite(ts))
            raise self._error(TS, row, f"value {ts[row]} is not finite")
        if (ts < 0).any():
            row = _first_true(ts < 0)
            raise self._error(TS, row, f"negative time {ts[row]}")
        if ts.size and self.sorted:
            previous = np.concatenate(([self.last_ts], ts[:-1]))
            decreasing = ts < previous
            if decreasing.any():
                row = _first_true(decreasing)
                if not self.allow_unsorted:
                    raise self._error(
                        TS, row, f"not sorted: {ts[row]} comes after {previous[row]} (pass --sort to sort it)"
                    )
                self.sorted = False
        if ts.size:
            self.last_ts = float(ts[-1])

    def _error(self, column: str, row_in_batch: int, message: str) -> MtbenchError:
        return _bad(self.path, f"column '{column}', row {self.rows_seen + row_in_batch}: {message}")


def _to_frame(batch: pa.RecordBatch | pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with the required columns in their canonical dtypes."""
    frame = batch.to_pandas()
    for column, dtype in CANONICAL_DTYPES.items():
        if column in frame.columns and frame[column].dtype != dtype:
            frame[column] = frame[column].astype(dtype)
    return frame


class Trace:
    """A validated trace file. Attributes: `path`, `num_rows`, `schema` (arrow), `columns` (names).

    Rows come back in `ts` order: from the file as stored, or, when it was opened with `sort=True` and
    found unsorted, from an in-memory stably sorted copy (`was_sorted_in_memory` is then True).
    """

    def __init__(self, path: Path, parquet: pq.ParquetFile, sorted_table: pa.Table | None) -> None:
        self.path = path
        self._parquet = parquet
        self._sorted_table = sorted_table
        self.schema: pa.Schema = parquet.schema_arrow
        self.columns: list[str] = list(self.schema.names)
        self.num_rows: int = parquet.metadata.num_rows
        self._fingerprint: dict | None = None

    @property
    def was_sorted_in_memory(self) -> bool:
        return self._sorted_table is not None

    def _columns(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return self.columns
        unknown = [c for c in columns if c not in self.columns]
        if unknown:
            raise _bad(self.path, f"column '{unknown[0]}' is not in the trace (has: {', '.join(self.columns)})")
        return list(columns)

    def iter_frames(self, columns: Sequence[str] | None = None, batch_rows: int = 1_000_000) -> Iterator[pd.DataFrame]:
        """Stream the trace as DataFrames of at most `batch_rows` rows, in order, with canonical dtypes."""
        names = self._columns(columns)
        if self._sorted_table is not None:
            for batch in self._sorted_table.select(names).to_batches(max_chunksize=batch_rows):
                yield _to_frame(batch)
            return
        for batch in self._parquet.iter_batches(batch_size=batch_rows, columns=names):
            yield _to_frame(batch)

    def read(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The whole trace (or some columns) as one DataFrame."""
        names = self._columns(columns)
        table = self._sorted_table if self._sorted_table is not None else self._parquet.read(columns=names)
        return _to_frame(table.select(names))

    def arrays(self, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Whole columns as contiguous numpy arrays (canonical dtypes for the required columns)."""
        names = self._columns(columns)
        table = self._sorted_table if self._sorted_table is not None else self._parquet.read(columns=names)
        result: dict[str, np.ndarray] = {}
        for name in names:
            values = table.column(name).to_numpy()
            dtype = CANONICAL_DTYPES.get(name)
            result[name] = np.ascontiguousarray(values if dtype is None else values.astype(dtype, copy=False))
        return result

    def fingerprint(self) -> dict:
        """{"path", "rows", "sha256"} identifying the file's exact bytes (hash computed once)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            with open(self.path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            self._fingerprint = {"path": str(self.path), "rows": self.num_rows, "sha256": digest.hexdigest()}
        return dict(self._fingerprint)

    def __repr__(self) -> str:
        return f"Trace({str(self.path)!r}, rows={self.num_rows})"


def _open_parquet(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise MtbenchError(f"{path}: no such file")
    if not path.is_file():
        raise MtbenchError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise _bad(path, "file is empty (0 bytes), not a parquet trace")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _bad(path, f"not a parquet file or corrupt ({str(err).splitlines()[0]})") from None


def _sorted_copy(path: Path, parquet: pq.ParquetFile) -> pa.Table:
    table = parquet.read()
    order = np.argsort(table.column(TS).to_numpy().astype(np.float64), kind="stable")
    return table.take(pa.array(order))


def open_trace(path: str | Path, limits: TraceLimits | None = None, sort: bool = False) -> Trace:
    """Open and fully validate a trace; raise MtbenchError (file, column, first bad row) on bad input.

    Checks: readable parquet, at least one row, required columns with integer/float types, no nulls
    or NaN, values at or above their minimum, `ts` non-negative and non-decreasing (unless `sort`, which
    then sorts stably in memory), lengths within `limits`.
    """
    path = Path(path)
    parquet = _open_parquet(path)
    _check_schema(path, parquet.schema_arrow)
    if parquet.metadata.num_rows == 0:
        raise _bad(path, "trace has no rows")
    validator = _StreamValidator(path, limits or TraceLimits(), allow_unsorted=sort)
    try:
        for batch in parquet.iter_batches(batch_size=VALIDATION_BATCH_ROWS, columns=list(REQUIRED_COLUMNS)):
            validator.check(batch)
    except (pa.ArrowException, OSError) as err:
        raise _bad(path, f"corrupt parquet data after row {validator.rows_seen} ({str(err).splitlines()[0]})") from None
    if validator.rows_seen != parquet.metadata.num_rows:
        raise _bad(path, f"corrupt: metadata says {parquet.metadata.num_rows} rows, read {validator.rows_seen}")
    sorted_table = None if validator.sorted else _sorted_copy(path, parquet)
    return Trace(path, parquet, sorted_table)
