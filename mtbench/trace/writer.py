"""Write traces atomically: rows go to a hidden temporary file that is renamed onto the target only
when the writer closes without error, so a failed import or synth never leaves a half-written trace.

Required columns are written in their canonical dtypes (see `mtbench.trace.loader`), zstd-compressed,
with no pandas index metadata: the same rows always give the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtbench.errors import MtbenchError
from mtbench.paths import check_output_file
from mtbench.trace.loader import CANONICAL_DTYPES, REQUIRED_COLUMNS

ROW_GROUP_ROWS = 1_000_000


def _table(columns: dict[str, np.ndarray] | pd.DataFrame) -> pa.Table:
    """Arrow table: required columns first (canonical dtypes), then the optional ones in given order."""
    names = list(columns.keys()) if isinstance(columns, dict) else list(columns.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise MtbenchError(f"trace writer: column '{missing[0]}' is missing")
    ordered = [*REQUIRED_COLUMNS, *(c for c in names if c not in REQUIRED_COLUMNS)]
    arrays = {}
    for name in ordered:
        values = np.asarray(columns[name])
        dtype = CANONICAL_DTYPES.get(name)
        arrays[name] = pa.array(values if dtype is None else values.astype(dtype, copy=False))
    return pa.table(arrays)


class TraceWriter:
    """Context manager appending row groups to `path` (atomic: temp file renamed on success).

    `metadata` (str -> str) goes into the parquet footer, e.g. {"mtbench.epoch_unix": "..."}.
    Invariant: every `write` has the same column names and types as the first one.
    """

    def __init__(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        self.path = check_output_file(Path(path))
        self.metadata = {k.encode(): v.encode() for k, v in (metadata or {}).items()}
        self.temp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._writer: pq.ParquetWriter | None = None
        self.rows_written = 0

    def __enter__(self) -> "TraceWriter":
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, columns: dict[str, np.ndarray] | pd.DataFrame) -> None:
        table = _table(columns)
        if self._writer is None:
            schema = table.schema.with_metadata(self.metadata)
            self._writer = pq.ParquetWriter(self.temp_path, schema, compression="zstd")
        elif table.schema != self._writer.schema.remove_metadata():
            raise MtbenchError(f"{self.path}: trace writer got columns {table.schema.names}, expected {self._writer.schema.names}")
        self._writer.write_table(table.replace_schema_metadata(self.metadata), row_group_size=ROW_GROUP_ROWS)
        self.rows_written += table.num_rows

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._writer is not None:
            self._writer.close()
        if exc_type is None and self.rows_written == 0:
            self.temp_path.unlink(missing_ok=True)
            raise MtbenchError(f"{self.path}: no rows to write (the input produced an empty trace)")
        try:
            if exc_type is None:
                os.replace(self.temp_path, self.path)
        finally:
            self.temp_path.unlink(missing_ok=True)


def write_trace(columns: dict[str, np.ndarray] | pd.DataFrame, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write one in-memory trace (already sorted by ts) atomically in row groups; return the path."""
    table = _table(columns)
    with TraceWriter(path, metadata) as writer:
        for start in range(0, max(table.num_rows, 1), ROW_GROUP_ROWS):
            chunk = table.slice(start, ROW_GROUP_ROWS)
            if chunk.num_rows:
                writer.write({name: chunk.column(name).to_numpy() for name in chunk.column_names})
    return Path(path)
