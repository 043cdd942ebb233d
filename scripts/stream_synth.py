"""A synthetic trace of any length written row group by row group (bounded memory), for the fleet's
scale benchmarks (reports/BENCHMARKS.md, "Fleet simulation (CPU)").

    python3 scripts/stream_synth.py REQUESTS OUT.parquet [--users U] [--days D] [--seed S]

Users are Zipf-popular (exponent 1.2 over U users); every user changes static version each week (at
a per-user offset), and a (user, version) always has the same prefix length (64..1000 tokens); requests
are evenly spread over D days. `mtbench trace synth` makes richer traces; this one only has to be
long, valid and cheap to write.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtbench.fleet.routers import splitmix64

ROWS_PER_GROUP = 1 << 20
WEEK_S = 7 * 86400.0


def write(requests: int, out: str, users: int, days: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    span = days * 86400.0
    schema = pa.schema([("ts", pa.float64()), ("user_id", pa.int64()), ("static_version", pa.int64()),
                        ("n_static", pa.int64()), ("n_rt", pa.int64()), ("n_cand", pa.int64())])
    started = time.perf_counter()
    with pq.ParquetWriter(out, schema) as writer:
        for start in range(0, requests, ROWS_PER_GROUP):
            n = min(ROWS_PER_GROUP, requests - start)
            ts = (np.arange(start, start + n, dtype=np.float64)) * (span / requests)
            user = (rng.zipf(1.2, n) - 1) % users
            offset = (splitmix64(user) % np.uint64(int(WEEK_S))).astype(np.float64)
            version = ((ts + offset) // WEEK_S).astype(np.int64)
            n_static = 64 + (splitmix64(user * 1000 + version) % np.uint64(937)).astype(np.int64)
            writer.write_table(pa.table({"ts": ts, "user_id": user.astype(np.int64), "static_version": version,
                                         "n_static": n_static, "n_rt": rng.integers(0, 51, n),
                                         "n_cand": rng.integers(50, 151, n)}, schema=schema))
    print(f"{requests:,} requests -> {out} in {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requests", type=int)
    parser.add_argument("out")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.requests, args.out, args.users, args.days, args.seed)


if __name__ == "__main__":
    main()
