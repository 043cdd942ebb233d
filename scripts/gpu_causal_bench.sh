#!/usr/bin/env bash
# GPU benchmark of issue 17 (incremental prefixes) on one H200: MovieLens (shared) replayed by MTGR-large
# bf16 through the real GPU/host cache, with MTGR's bidirectional U+S prefix (replace: a version's prefix
# is fixed, a new version recomputes it) against a causal history (append: a returning user's entry is
# extended in place, partial hits), at each feature refresh period of PERIODS.
#
#   OUT=/some/dir scripts/gpu_causal_bench.sh        (the device tool sets $OUT; about 4 minutes)
#
# Steps:
#  1. `mtbench trace import movielens ../shared/data/movielens-latest-small/ratings.csv` (one request per
#     rating; traces/movielens-small.parquet is that import, used where ../shared is absent); every USER_EVERY-th user is kept with all of their requests (the whole time span, so users
#     come back after hours, days and months), at most MAX_REQUESTS of them; per period the rule of
#     `mtbench trace reversion --period P --history replace|causal` (mtbench.trace.reversion): the same
#     requests and history lengths, split into prefix + real-time tokens (replace) or all prefix (causal);
#  2. tiers per period, the same for both histories: GPU = GPU_SHARE of the KV bytes of the users in the
#     replayed requests (their largest causal entry; at least 2 of the largest entries), host = all of them;
#  3. per (period, history): `mtbench replay`'s runner (`run_replay`), tiered/hybrid, LRU, pipelined, with
#     --verify, then the no-cache run (`--cache none`) of the same requests for the speedup (run once per
#     distinct request set: the causal traces of all periods have the same requests, only versions differ);
#  4. the table, printed last (rows by period, shortest first): per (history, period) the token-weighted
#     hit ratio (static tokens reused / requested), host hits, partial hits, reused / computed static
#     tokens, speedup vs no cache (ms per request without / with the cache), verify error (README rule).
# $OUT gets three flat files: BENCH.md (the table and its setup), bench.json (every run's summary row),
# both rewritten after every (period, history), so a run cut short keeps what it measured; bench.log.
# Sizes (override by environment; an empty value means the default): MAX_REQUESTS, WARMUP, BATCH,
# USER_EVERY, GPU_SHARE, VERIFY, PERIODS ("never 1d 7d 1h"). A CPU dry run (about a minute here):
#   DEVICE=cpu MODEL=mini DTYPE=fp32 MAX_REQUESTS=160 WARMUP=32 BATCH=16 VERIFY=4 PERIODS="1d never" \
#     IMPORT_ARGS="--max-seq 60 --cand 4" OUT=/tmp/causal-dry scripts/gpu_causal_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-reports/gpu-causal}
MAX_REQUESTS=${MAX_REQUESTS:-12000}
WARMUP=${WARMUP:-2000}
BATCH=${BATCH:-64}
USER_EVERY=${USER_EVERY:-8}
GPU_SHARE=${GPU_SHARE:-0.10}
VERIFY=${VERIFY:-16}
PERIODS=${PERIODS:-never 1d 7d 1h}  # run in this order (the report is rewritten after each run)
MODEL=${MODEL:-large}
DTYPE=${DTYPE:-bf16}
DEVICE=${DEVICE:-cuda}
IMPORT_ARGS=${IMPORT_ARGS:-}
RATINGS=${RATINGS:-../shared/data/movielens-latest-small/ratings.csv}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
: > "$OUT/bench.log"
export MPLBACKEND=Agg
PY=${PYTHON:-python3}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/bench.log"; }

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no-nvidia-smi)"
log "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); MAX_REQUESTS=$MAX_REQUESTS WARMUP=$WARMUP BATCH=$BATCH" \
  "USER_EVERY=$USER_EVERY GPU_SHARE=$GPU_SHARE VERIFY=$VERIFY PERIODS='$PERIODS' MODEL=$MODEL DTYPE=$DTYPE DEVICE=$DEVICE"

# 1a. the import (one request per rating); without ../shared beside the checkout (the device machine),
# traces/movielens-small.parquet, which is that import with the defaults (traces/README.md)
if [ -f "$RATINGS" ]; then
  # shellcheck disable=SC2086  # IMPORT_ARGS is a list of options
  timeout 120 $PY -m mtbench trace import movielens "$RATINGS" -o "$WORK/ml.parquet" --model "$MODEL" $IMPORT_ARGS \
    >> "$OUT/bench.log"
  log "imported $RATINGS"
elif [ -z "$IMPORT_ARGS" ] && [ "$MODEL" = large ]; then
  cp traces/movielens-small.parquet "$WORK/ml.parquet"
  log "$RATINGS not here: traces/movielens-small.parquet (the same import of the shared MovieLens ratings)"
else
  log "$RATINGS not found (IMPORT_ARGS / MODEL need a fresh import)"; exit 2
fi

# 1b-4. sampled traces per (period, history), replays, the table
timeout 420 $PY - "$WORK" "$OUT" <<PY 2>&1 | tee -a "$OUT/bench.log"
import json, sys, textwrap, time, traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import triton

from mtbench.cli.trace_cmd import parse_period
from mtbench.model import get_config
from mtbench.model.config import parse_dtype
from mtbench.replay.engine import ReplayOptions
from mtbench.replay.runner import ReplaySetup, run_replay
from mtbench.trace import open_trace
from mtbench.trace.reversion import reversion
from mtbench.trace.writer import write_trace

work, out = Path(sys.argv[1]), Path(sys.argv[2])
model, dtype, device, periods = "$MODEL", "$DTYPE", "$DEVICE", "$PERIODS".split()
max_requests, warmup, batch, every, share, verify = $MAX_REQUESTS, $WARMUP, $BATCH, $USER_EVERY, $GPU_SHARE, $VERIFY
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda, flush=True)
cfg = get_config(model)
limits, per_token, page = cfg.limits(), cfg.kv_bytes_per_token(parse_dtype(dtype)), 32
started = time.perf_counter()

# 1b. every USER_EVERY-th user, all their requests (in time order), at most max_requests; then the rule
imported = work / "ml.parquet"
columns = open_trace(imported, limits).arrays(list(pq.read_schema(imported).names))
keep = np.flatnonzero(columns["user_id"] % every == 0)[:max_requests]
columns = {name: values[keep] for name, values in columns.items()}
traces = {}
for period in periods:
    for history in ("replace", "causal"):
        path = work / f"ml-{period}-{history}.parquet"
        write_trace(reversion(columns, parse_period(period), history, max_static=limits.max_static,
                              max_rt=limits.max_rt), path, {"mtbench.version_period": period, "mtbench.history": history})
        traces[period, history] = path
print(f"traces: {len(keep):,} requests of {len(np.unique(columns['user_id']))} users (every {every}th), "
      f"periods {' '.join(periods)} ({time.perf_counter() - started:.1f} s)", flush=True)


def capacities(path: Path) -> tuple[int, int]:
    """(GPU bytes, host bytes): GPU = share of the users' largest entries (at least two of the largest)."""
    a = open_trace(path).arrays(["user_id", "n_static"])
    entry = -(-a["n_static"].astype(np.int64) // page) * page * per_token
    order = np.lexsort((entry, a["user_id"]))
    last = np.r_[a["user_id"][order][1:] != a["user_id"][order][:-1], True]
    total, largest = int(entry[order][last].sum()), int(entry.max())
    return max(int(share * total), 2 * largest), int(1.05 * total) + 4 * largest


def requests_of(path: Path) -> bytes:
    """What a no-cache run depends on: the requests' token counts (versions do not matter to it)."""
    a = open_trace(path).arrays(["n_static", "n_rt", "n_cand"])
    return b"".join(a[name].astype(np.int64).tobytes() for name in ("n_static", "n_rt", "n_cand"))


def verdict(c: dict) -> str:
    err = c.get("verify_max_rel_err")
    return "—" if err is None else f"{err:.1e} " + ("ok" if err <= c["verify_bound"] else "FAIL")


def tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def report(rows: list[dict]) -> list[str]:
    """BENCH.md's lines (rows by period, shortest first; never last); also writes bench.json."""
    order = {period: parse_period(period) or float("inf") for period in periods}
    rows = sorted(rows, key=lambda row: (order[row["period"]], row["history"] != "replace"))
    first = next((row["cached"] for row in rows if "cached" in row), {"requests": 0})
    lines = [f"# Causal vs replace prefixes: MovieLens, MTGR-{model} {dtype} on {device}", "", textwrap.fill(
             f"Every {every}th user of MovieLens (ratings.csv, one request per rating), {first['requests']:,} timed "
             f"requests after a warm-up of {warmup}, batch {batch}, LRU, tiered/hybrid, pipelined; tiers per period: "
             f"GPU = {share:.0%} of the users' KV bytes (at least two of the largest entries), host = all of them. "
             "history: replace = MTGR's bidirectional U+S prefix (replay --history bidirectional), causal = replay "
             "--history causal. tokens = static tokens reused / requested (token-weighted hit ratio); host = host "
             "hits; partial = partial hits; reused/comp. = static tokens reused / computed; speedup = ms per request "
             "without the cache / with it; verify = largest score error of the sampled cached requests against "
             "the full forward (README's precision rule: ok or FAIL).", width=100), "",
             "| history | period | tokens | host | partial | reused/comp. | speedup | verify |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['history']} | {row['period']} | " + " | ".join(["—"] * 5) + f" | {row['error'][:40]} |")
            continue
        c = row["cached"]
        lines.append("| " + " | ".join([
            row["history"], row["period"], f"{c['token_hit_ratio']:.3f}", f"{c['host_hits']:,}",
            f"{c['partial_hits']:,}", f"{tokens(c['reused_tokens'])}/{tokens(c['computed_tokens'])}",
            f"{c['speedup_vs_none']:.2f}x", verdict(c)]) + " |")
    (out / "BENCH.md").write_text("\n".join(lines) + "\n")
    (out / "bench.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return lines


rows, plain_runs, lines, failed = [], {}, [], False
for period in periods:
    gpu, host = capacities(traces[period, "causal"])
    print(f"period {period}: GPU tier {gpu / 2**30:.3f} GiB, host tier {host / 2**30:.3f} GiB", flush=True)
    for history in ("replace", "causal"):
        path = traces[period, history]
        options = ReplayOptions(batch_size=batch, max_requests=max_requests, warmup=warmup)
        setup = ReplaySetup(trace=path, model=model, dtype=dtype, device=device, cache="tiered", gpu_capacity=gpu,
                            host_capacity=host, history="causal" if history == "causal" else "bidirectional",
                            verify=verify, options=options)
        began = time.perf_counter()
        row = {"period": period, "history": history, "gpu_capacity": gpu, "host_capacity": host}
        try:  # one failing run must not cost the others: its row says why, the exit status is 1
            cached = run_replay(setup).summary["rows"][0]
            key = (history, requests_of(path))
            if key not in plain_runs:
                plain_runs[key] = run_replay(replace(setup, cache="none", verify=0)).summary["rows"][0]
            plain = plain_runs[key]
        except Exception as error:  # noqa: BLE001 (reported, then the next run)
            traceback.print_exc()
            failed = True
            rows.append({**row, "error": f"{type(error).__name__}: {error}"})
            lines = report(rows)
            continue
        cached["speedup_vs_none"] = plain["ms_per_request"] / cached["ms_per_request"]
        rows.append({**row, "cached": cached, "none": plain})
        lines = report(rows)
        print(json.dumps({"period": period, "history": history,
                          **{k: cached.get(k) for k in ("hit_ratio", "token_hit_ratio", "gpu_hits", "host_hits",
                                                        "partial_hits", "ms_per_request", "speedup_vs_none",
                                                        "verify_max_rel_err")},
                          "none_ms_per_request": plain["ms_per_request"],
                          "seconds": round(time.perf_counter() - began, 1)}), flush=True)
print(f"all runs: {time.perf_counter() - started:.0f} s", flush=True)
print("\n".join(lines))
sys.exit(1 if failed else 0)
PY
