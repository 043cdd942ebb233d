#!/usr/bin/env bash
# GPU benchmark of issue 13 on one H200: serving under load. MTGR-large bf16, the MTGR-shaped synthetic
# trace of scripts/gpu_replay_bench.sh, GPU tier 10% of the active users' KV bytes, host tier the rest.
#
#   OUT=/some/dir scripts/gpu_serving_bench.sh       (the device tool sets $OUT; one command, < 8 minutes)
#   SMALL=1 OUT=/tmp/x scripts/gpu_serving_bench.sh  (dry run on the CPU: tiny model, small trace; ~15 min on a busy CPU)
#
# Steps:
#  1. the synthetic trace (400 users, 60,000 requests over a day, lifelong sequences of 800-1000 tokens);
#  2. tier sizes from the replayed requests' active users (GPU = GPU_SHARE of their KV bytes);
#  3. `mtbench calibrate` at the benchmark's batch size (cost model JSON);
#  4. `mtbench capacity ... --measure --cpus $CPUS`: per cache mode (none, gpu, tiered) the fixed cost per batch is
#     measured (serial replays at each power of two up to BATCH, the saturated replay at BATCH, and open-loop
#     Poisson runs at 30/60/90% of its throughput), the discrete-event simulator draws latency vs
#     load and finds the highest Poisson rate within p99 <= SLO_MS, and the real open-loop replay runs at
#     FRACTIONS of each mode's simulated saturation and at its SLO rate (5+ load levels up to saturation),
#     and its throughput (every request queued at once);
#  5. SERVING.md + serving.json: simulated vs measured p50/p99 per rate and mode, the p99 gap below 80%
#     of saturation (target 15%), and the one-line result (max QPS per GPU within p99 <= SLO_MS, capacity
#     speedup, throughput speedup); the capacity report's PNGs are copied to $OUT/plots.
# Everything lands in $OUT: SERVING.md, serving.json, serving.log, costmodel.json, capacity_summary.json,
# capacity_points.csv, measured_requests.parquet, calibration_requests.parquet, gpu_clocks.csv (with nvidia-smi),
# host_samples.csv (scripts/host_sampler.py: the machine's busy and stolen CPU time), serving_gap.txt/.csv
# (scripts/serving_gap.py), plots/*.png. Sizes can be overridden: MAX_REQUESTS, WARMUP, BATCH, MAX_WAIT_MS,
# SLO_MS, FRACTIONS, SYNTH_USERS, SYNTH_REQUESTS, GPU_SHARE, MODEL, DTYPE, DEVICE, COST_MODEL, REPEATS (each
# measured rate replayed that many times on the same arrivals: SERVING.md then shows the median run's p99
# and the lowest-highest over the runs, the measurement's own spread; default 1) and MEASURE_STEPS (device
# runs of the measured max-QPS search; default 3), CACHES (the cache modes; default none,gpu,tiered),
# CPUS (the CPUs the capacity process is pinned to, default 0,1; CPUS= leaves it unpinned) and
# NO_GPU_CLOCKS=1 (no nvidia-smi sampling beside the runs).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-reports/gpu-serving}
if [ "${SMALL:-0}" = 1 ]; then  # CPU dry run: every step, tiny sizes
  MODEL=${MODEL:-tiny}; DTYPE=${DTYPE:-fp32}; DEVICE=${DEVICE:-cpu}; SYNTH_USERS=${SYNTH_USERS:-20}
  SYNTH_REQUESTS=${SYNTH_REQUESTS:-600}; HISTORY=${HISTORY:-uniform:20:60}; USER_TOKENS=${USER_TOKENS:-4}
  MAX_REQUESTS=${MAX_REQUESTS:-32}; WARMUP=${WARMUP:-8}; BATCH=${BATCH:-4}; SLO_MS=${SLO_MS:-2000}
  FRACTIONS=${FRACTIONS:-0.5,0.9}; GPU_SHARE=${GPU_SHARE:-0.3}; CAPACITY_TIMEOUT=${CAPACITY_TIMEOUT:-1200}
fi
MODEL=${MODEL:-large}
DTYPE=${DTYPE:-bf16}
DEVICE=${DEVICE:-cuda}
SYNTH_USERS=${SYNTH_USERS:-400}
SYNTH_REQUESTS=${SYNTH_REQUESTS:-60000}
HISTORY=${HISTORY:-uniform:800:1000}
USER_TOKENS=${USER_TOKENS:-32}
MAX_REQUESTS=${MAX_REQUESTS:-6000}  # per measured run: WARMUP requests, then the timed ones
WARMUP=${WARMUP:-1500}  # past the trace's first hit-ratio climb (BENCHMARKS.md section 10)
BATCH=${BATCH:-64}
MAX_WAIT_MS=${MAX_WAIT_MS:-5}
SLO_MS=${SLO_MS:-50}
FRACTIONS=${FRACTIONS:-0.25,0.5,0.7,0.85,1.0}
REPEATS=${REPEATS:-1}
CPUS=${CPUS-0,1}  # the capacity process's CPUs (--cpus); CPUS= leaves it unpinned
GPU_SHARE=${GPU_SHARE:-0.10}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export MPLBACKEND=Agg
PY=${PYTHON:-python3}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/serving.log"; }

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no-nvidia-smi)"
$PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/serving.log"

# 1. trace
SYN=$WORK/synth.parquet
timeout 90 $PY -m mtbench trace synth --users "$SYNTH_USERS" --requests "$SYNTH_REQUESTS" --duration 1d \
  --model "$MODEL" --user-tokens "$USER_TOKENS" --seed 7 --history-dist "$HISTORY" -o "$SYN" | tee -a "$OUT/serving.log"

# 2. tier sizes: active users of the replayed requests, their KV bytes at whole pages
read -r GPU HOST USERS < <($PY - "$SYN" "$MAX_REQUESTS" "$GPU_SHARE" "$MODEL" "$DTYPE" <<'PY'
import sys
import numpy as np
from mtbench.model import get_config
from mtbench.model.config import parse_dtype
from mtbench.trace import open_trace
path, limit, share, model, dtype = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
a = open_trace(path).arrays(["user_id", "n_static"])
per_token = get_config(model).kv_bytes_per_token(parse_dtype(dtype))
largest = int(-(-int(a["n_static"].max()) // 32) * 32 * per_token)
users, n_static = a["user_id"][:limit], a["n_static"][:limit]
entry = -(-n_static.astype(np.int64) // 32) * 32 * per_token
user_bytes = np.array([entry[users == u].max() for u in np.unique(users)])
total = int(user_bytes.sum())
print(max(int(share * total), 4 * largest), int(total * 1.05) + 4 * largest, len(user_bytes))
PY
)
log "trace: $USERS active users in the first $MAX_REQUESTS requests; GPU tier $GPU B ($GPU_SHARE of their KV), host tier $HOST B"

# 3. cost model at the benchmark's batch size (or COST_MODEL: one calibrated at that batch size already)
if [ -n "${COST_MODEL:-}" ]; then
  cp "$COST_MODEL" "$OUT/costmodel.json"
else
  timeout 150 $PY -m mtbench calibrate --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --batch-size "$BATCH" \
    -o "$OUT/costmodel.json" 2>&1 | tee -a "$OUT/serving.log"
fi

# 4. simulated curves + capacity, checked by the real open-loop replay; the GPU's clocks, power and
#    temperature are sampled every 100 ms beside it (gpu_clocks.csv: they stayed at 1,980 MHz through the
#    no-cache server's slow spells, which are host work, BENCHMARKS.md section 11)
CLOCKS_PID=
if command -v nvidia-smi > /dev/null && [ "$DEVICE" != cpu ] && [ "${NO_GPU_CLOCKS:-0}" != 1 ]; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu \
    --format=csv -lms 100 > "$OUT/gpu_clocks.csv" 2>/dev/null &
  CLOCKS_PID=$!
fi
SAMPLER_PID=
if [ -r /proc/stat ]; then
  $PY scripts/host_sampler.py "$OUT/host_samples.csv" --interval 0.05 &
  SAMPLER_PID=$!
fi
stop_samplers() { for pid in $CLOCKS_PID $SAMPLER_PID; do kill "$pid" 2>/dev/null || true; done; }
trap stop_samplers EXIT
PIN=(); [ -n "$CPUS" ] && PIN=(--cpus "$CPUS")
timeout "${CAPACITY_TIMEOUT:-330}" $PY -m mtbench capacity "$SYN" --model "$MODEL" --dtype "$DTYPE" --device "$DEVICE" "${PIN[@]}" \
  --cache "${CACHES:-none,gpu,tiered}" --policy lru --gpu-cache "$GPU" --host-cache "$HOST" --batch-size "$BATCH" \
  --max-wait-ms "$MAX_WAIT_MS" --slo-ms "$SLO_MS" --percentile 99 --cost-model "$OUT/costmodel.json" \
  --batch-overhead-ms auto --max-requests "$MAX_REQUESTS" --warmup "$WARMUP" --measure --measure-fractions "$FRACTIONS" --measure-repeats "$REPEATS" \
  --measure-steps "${MEASURE_STEPS:-3}" \
  -o "$WORK/capacity" 2>&1 | tee -a "$OUT/serving.log"
cp "$WORK/capacity/summary.json" "$OUT/capacity_summary.json"
cp "$WORK/capacity/measured_requests.parquet" "$OUT/measured_requests.parquet"  # per request, batch by batch
cp "$WORK/capacity/calibration_requests.parquet" "$OUT/calibration_requests.parquet"  # the calibration replays
stop_samplers
# every measured batch priced as the simulator prices its own decisions: where the two differ
SAMPLES=()
[ -s "$OUT/host_samples.csv" ] && SAMPLES=(--host-samples "$OUT/host_samples.csv")
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" $PY scripts/serving_gap.py "$WORK/capacity" --csv "$OUT/serving_gap.csv" "${SAMPLES[@]}" | tee "$OUT/serving_gap.txt" \
  || log "serving_gap.py failed (the digest below does not need it)"
mkdir -p "$OUT/plots" && cp "$WORK/capacity/plots/"*.png "$OUT/plots/"

# 5. digest: simulated vs measured per rate and mode
$PY - "$OUT" "$WORK/capacity" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
out, report = Path(sys.argv[1]), Path(sys.argv[2])
summary = json.loads((report / "summary.json").read_text())
points = pd.read_parquet(report / "records.parquet")
points.to_csv(out / "capacity_points.csv", index=False)
config, rows = summary["config"], {row["cache_mode"]: row for row in summary["rows"]}
fmt = lambda v, f="{:.1f}": "—" if v is None or v != v else f.format(v)
rate = lambda v: "—" if v is None or v != v else f"{v:,.0f}" if v >= 100 or v == 0 else f"{v:.3g}"
size = lambda n: next(f"{n / 2**p:.2f} {u}" for p, u in ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "B")) if n >= 2**p or p == 0)
lines = [f"# Serving under load ({summary['model']}, {summary['dtype']}, {summary.get('device') or config.get('device')})", "",
         f"Poisson arrivals, dynamic batcher (max batch {config['batch_size']}, max wait {config['max_wait_ms']} ms), "
         f"SLO p{config['percentile']:g} <= {config['slo_ms']:g} ms; {config['max_requests']} requests per run, the first "
         f"{config['warmup']} warm-up; GPU tier {size(config['gpu_cache'])}, host tier "
         f"{size(config['host_cache'])}. Simulated: a discrete-event server whose dynamic batches go through "
         "the control plane (the replay's load budget), priced by the calibrated cost model plus the fixed cost per batch "
         "size measured on the device. Measured: the real open-loop replay "
         "(latency from arrival to scores, CUDA-synchronised batch ends).", "",
         "| mode | rate /s | load | hit sim / meas | sim p50 | meas p50 | sim p99 | meas p99 | p99 gap | sim SLO % | meas SLO % |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
gaps, hits = [], {}


def spread(r) -> str:  # lowest-highest p99 over repeated runs (REPEATS > 1)
    if (r.get("repeats") or 1) <= 1:
        return ""
    low, high = r["latency_at_percentile_ms_min"], r["latency_at_percentile_ms_max"]
    if low != low:  # every run overloaded
        return ""
    return f" ({fmt(low)}-{'overloaded' if high != high else fmt(high)})"


for mode, part in points.groupby("cache_mode", sort=False):
    simulated = part[part["source"] == "simulated"].set_index("rate")
    saturation = rows[mode]["saturation_qps"]
    for _, real in part[part["source"] == "measured"].sort_values("rate").iterrows():
        sim = simulated.loc[real["rate"]]
        load = real["rate"] / saturation
        gap = None
        if not real["overloaded"] and not sim["overloaded"] and real["p99_ms"] == real["p99_ms"]:
            gap = abs(sim["p99_ms"] - real["p99_ms"]) / real["p99_ms"]
            if load <= 0.8:
                gaps.append(gap)
        p99 = lambda r: "overloaded" if r["overloaded"] else fmt(r["p99_ms"])
        hits.setdefault(mode, []).append((sim["hit_ratio"], real["hit_ratio"]))
        lines.append(f"| {mode} | {rate(real['rate'])} | {load:.2f} | {fmt(sim['hit_ratio'], '{:.3f}')} / "
                     f"{fmt(real['hit_ratio'], '{:.3f}')} | {fmt(sim['p50_ms'])} | {fmt(real['p50_ms'])} | "
                     f"{p99(sim)} | {p99(real)}{spread(real)} | {fmt(gap, '{:.1%}')} | {fmt(100 * sim['slo_attainment'])} | "
                     f"{fmt(100 * real['slo_attainment'])} |")
mean = lambda pairs, i: sum(p[i] for p in pairs) / len(pairs) if pairs else None
lines += ["", "| mode | hit ratio at the measured rates (sim / meas) | batch overhead ms | saturation /s (sim / meas) | max /s within SLO (sim / meas) |",
          "|---|---|---|---|---|"]
for mode, row in rows.items():
    pairs = hits.get(mode, [])
    lines.append(f"| {mode} | {fmt(mean(pairs, 0), '{:.3f}')} / {fmt(mean(pairs, 1), '{:.3f}')} | "
                 f"{row['batch_overhead_ms']:.2f} | {rate(row['saturation_qps'])} / {rate(row.get('measured_saturation_qps'))} | "
                 f"{rate(row['max_qps'])} / {rate(row.get('measured_max_qps'))} |")
worst = max(gaps, default=None)
lines += ["", f"Simulated vs measured p99 below 80% of saturation: worst gap {fmt(worst, '{:.1%}')} over {len(gaps)} points "
          f"(target 15%: {'MET' if worst is not None and worst <= 0.15 else 'MISSED' if worst is not None else 'no points'}).", "",
          *[f"- {line}" for line in summary["result"].splitlines()], ""]
(out / "serving.json").write_text(json.dumps({"config": config, "rows": summary["rows"], "p99_gaps_below_80pct": gaps,
                                              "result": summary["result"]}, indent=2, default=str) + "\n")
(out / "SERVING.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
rm -rf "$WORK"
log "done: $OUT/SERVING.md"
