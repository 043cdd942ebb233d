"""Request traces: load and validate (`open_trace`), write, import real logs, synthesise, fit, describe.

A trace is a parquet file, one row per request, sorted by `ts`; see `mtbench.trace.loader` and
traces/README.md for the schema.
"""

from mtbench.trace.loader import (
    CANONICAL_DTYPES,
    REQUIRED_COLUMNS,
    Trace,
    TraceLimits,
    open_trace,
)

__all__ = ["CANONICAL_DTYPES", "REQUIRED_COLUMNS", "Trace", "TraceLimits", "open_trace"]
