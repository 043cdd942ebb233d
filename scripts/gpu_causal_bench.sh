#!/usr/bin/env bash
# GPU benchmark of issue 17 (incremental prefixes) on one H200: MovieLens (shared) replayed by MTGR-large
# bf16 through the real GPU/host cache, with MTGR's bidirectional U+S prefix (replace: a version's prefix
# is fixed, a new version recomputes it) against a causal history (append: a returning user's entry is
# extended in place, partial hits), at the feature refresh periods 1d and never.
#
#   OUT=/some/dir scripts/gpu_causal_bench.sh        (the device tool sets $OUT; about 4 minutes)
#
# Steps:
#  1. `mtbench trace import movielens ../shared/data/movielens-latest-small/ratings.csv` (one request per
#     rating), then per period `mtbench trace reversion --period P --history replace|causal`: the same
#     requests and history lengths, split into prefix + real-time tokens (replace) or all prefix (causal);
#  2. tiers per period, the same for both histories: GPU = GPU_SHARE of the KV bytes of the users active
#     in the replayed requests (their largest causal entry), host = all of them;
#  3. per (period, history): `mtbench replay`'s runner, tiered/hybrid with --verify, then the no-cache
#     run (`--cache none`) of the same requests for the speedup (one Python process for all runs);
#  4. the table: hit ratio (requests and token-weighted), GPU / host / partial hits, ms per request with
#     and without the cache, speedup vs no cache, verify error.
# $OUT gets three flat files: BENCH.md (the table), bench.json (every run's summary row), bench.log.
# Sizes can be overridden: MAX_REQUESTS, WARMUP, BATCH, GPU_SHARE, VERIFY, PERIODS ("1d never").
# A CPU dry run: DEVICE=cpu MODEL=mini DTYPE=fp32 MAX_REQUESTS=96 WARMUP=16 BATCH=8 VERIFY=4 \
#   IMPORT_ARGS="--max-seq 60 --cand 4" scripts/gpu_causal_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-reports/gpu-causal}
MAX_REQUESTS=${MAX_REQUESTS:-12000}
WARMUP=${WARMUP:-3000}
BATCH=${BATCH:-64}
GPU_SHARE=${GPU_SHARE:-0.10}
VERIFY=${VERIFY:-16}
PERIODS=${PERIODS:-1d never}
MODEL=${MODEL:-large}
DTYPE=${DTYPE:-bf16}
DEVICE=${DEVICE:-cuda}
IMPORT_ARGS=${IMPORT_ARGS:-}
RATINGS=${RATINGS:-../shared/data/movielens-latest-small/ratings.csv}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export MPLBACKEND=Agg
PY=${PYTHON:-python3}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/bench.log"; }

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no-nvidia-smi)"
$PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)' \
  | tee -a "$OUT/bench.log"

# 1. traces
# shellcheck disable=SC2086  # IMPORT_ARGS is a list of options
timeout 120 $PY -m mtbench trace import movielens "$RATINGS" -o "$WORK/ml.parquet" --model "$MODEL" $IMPORT_ARGS \
  >> "$OUT/bench.log"
for period in $PERIODS; do
  for history in replace causal; do
    timeout 60 $PY -m mtbench trace reversion "$WORK/ml.parquet" --period "$period" --history "$history" \
      --model "$MODEL" -o "$WORK/ml-$period-$history.parquet" >> "$OUT/bench.log"
  done
done
log "traces: $(ls "$WORK" | tr '\n' ' ')"

# 2-4. replays and the table
timeout 480 $PY - "$WORK" "$OUT" <<PY 2>&1 | tee -a "$OUT/bench.log"
import json, sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtbench.model import get_config
from mtbench.model.config import parse_dtype
from mtbench.replay.engine import ReplayOptions
from mtbench.replay.runner import ReplaySetup, run_replay
from mtbench.trace import open_trace

work, out = Path(sys.argv[1]), Path(sys.argv[2])
model, dtype, device, periods = "$MODEL", "$DTYPE", "$DEVICE", "$PERIODS".split()
max_requests, warmup, batch, share, verify = $MAX_REQUESTS, $WARMUP, $BATCH, $GPU_SHARE, $VERIFY
cfg = get_config(model)
per_token, page = cfg.kv_bytes_per_token(parse_dtype(dtype)), 32


def capacities(path: Path) -> tuple[int, int, int]:
    """(GPU bytes, host bytes, active users): each active user's largest entry in the replayed requests."""
    a = open_trace(path).arrays(["user_id", "n_static"])
    entry = -(-a["n_static"].astype(np.int64) // page) * page * per_token
    largest = int(entry.max())
    user, entry = a["user_id"][:max_requests], entry[:max_requests]
    order = np.lexsort((entry, user))
    last = np.r_[user[order][1:] != user[order][:-1], True]
    total = int(entry[order][last].sum())
    return max(int(share * total), 4 * largest), int(1.05 * total) + 4 * largest, int(last.sum())


rows, lines = [], []
for period in periods:
    gpu, host, users = capacities(work / f"ml-{period}-causal.parquet")
    print(f"period {period}: {users} active users; GPU tier {gpu / 2**30:.3f} GiB, host tier {host / 2**30:.3f} GiB",
          flush=True)
    for history, trace_history in (("bidirectional", "replace"), ("causal", "causal")):
        options = ReplayOptions(batch_size=batch, max_requests=max_requests, warmup=warmup)
        setup = ReplaySetup(trace=work / f"ml-{period}-{trace_history}.parquet", model=model, dtype=dtype, device=device,
                            cache="tiered", gpu_capacity=gpu, host_capacity=host, history=history, verify=verify,
                            options=options)
        cached = run_replay(setup).summary["rows"][0]
        plain = run_replay(replace(setup, cache="none", verify=0)).summary["rows"][0]
        cached["speedup_vs_none"] = plain["ms_per_request"] / cached["ms_per_request"]
        row = {"period": period, "history": history, "users": users, "gpu_capacity": gpu, "host_capacity": host,
               "cached": cached, "none": plain}
        rows.append(row)
        print(json.dumps({k: cached.get(k) for k in ("hit_ratio", "token_hit_ratio", "gpu_hits", "host_hits",
                                                    "partial_hits", "ms_per_request", "speedup_vs_none")}), flush=True)

fmt = lambda v, f: "—" if v is None else f.format(v)
verdict = lambda c: (f"{c['verify_max_rel_err']:.2e} " + ("ok" if c["verify_max_rel_err"] <= c["verify_bound"] else "FAIL")
                     if c.get("verify_max_rel_err") is not None else "—")
lines = [f"# Causal (append) vs bidirectional (replace) prefixes: MovieLens, MTGR-{model} {dtype} on {device}", "",
         f"{max_requests} requests replayed (warm-up {warmup}), batch {batch}, LRU, tiered/hybrid; tiers per period: "
         f"GPU = {share:.0%} of the active users' KV bytes, host = all of them. hit = requests that read a cached "
         "prefix (gpu + host + partial hits); tokens = static tokens reused / requested; ms/req with and without "
         "the cache; speedup = no cache / cache.", "",
         "| period | history | hit | tokens | gpu hits | host hits | partial hits | misses+stale | ms/req | "
         "ms/req none | speedup | verify err |", "|" + "---|" * 12]
for row in rows:
    c, n = row["cached"], row["none"]
    lines.append("| " + " | ".join([
        row["period"], row["history"], fmt(c["hit_ratio"], "{:.4f}"), fmt(c["token_hit_ratio"], "{:.4f}"),
        f"{c['gpu_hits']:,}", f"{c['host_hits']:,}", f"{c['partial_hits']:,}", f"{c['misses'] + c['stale']:,}",
        fmt(c["ms_per_request"], "{:.4f}"), fmt(n["ms_per_request"], "{:.4f}"), fmt(c["speedup_vs_none"], "{:.2f}x"),
        verdict(c)]) + " |")
(out / "BENCH.md").write_text("\n".join(lines) + "\n")
(out / "bench.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
print("\n".join(lines))
PY
log "done: $OUT/BENCH.md"
