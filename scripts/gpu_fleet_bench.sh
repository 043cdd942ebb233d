#!/usr/bin/env bash
# Two-GPU fleet benchmark of issue 14 (kind nvidia-h200-x2): MTGR-large bf16 on the MTGR-shaped synthetic
# trace of scripts/gpu_replay_bench.sh, one process per GPU (torch.distributed, gloo for metadata).
#
#   OUT=/some/dir scripts/gpu_fleet_bench.sh          (the device tool sets $OUT)
#
# Steps (meant to fit in one ~8-minute command):
#  1. the synthetic trace; per-GPU tiers: GPU tier = GPU_SHARE of the replayed requests' active users' KV
#     bytes, host tier = all of them (as gpu_replay_bench.sh);
#  2. `mtbench calibrate` (cost model of this GPU);
#  3. one GPU: `mtbench replay` (tiered, hybrid layout) = the speedup baseline;
#  4. two GPUs: `mtbench replay --gpus 2 --router user-hash` and `--router round-robin`;
#  5. the simulated fleet: `mtbench fleet --replicas 1,2 --router user-hash,round-robin --write-through`
#     (the real tiers are write-through today) with the calibrated cost model and the same warm-up;
#  6. FLEET.md + fleet.json: aggregate throughput, hit ratio per rank, speedup vs one GPU, simulated vs
#     measured (hit ratio and speedup; target: within 15%).
# CPU dry run (gloo, 2 processes, tiny model):
#   DEVICE=cpu MODEL=tiny DTYPE=fp32 SYNTH_USERS=40 SYNTH_REQUESTS=400 MAX_REQUESTS=160 WARMUP=32 BATCH=8 \
#   HISTORY=uniform:10:30 CAND=8 TIMEOUT_SCALE=4 OUT=/tmp/fleet-bench scripts/gpu_fleet_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-reports/gpu-fleet-bench}
MAX_REQUESTS=${MAX_REQUESTS:-12000}
WARMUP=${WARMUP:-3000}
BATCH=${BATCH:-64}
SYNTH_USERS=${SYNTH_USERS:-400}
SYNTH_REQUESTS=${SYNTH_REQUESTS:-60000}
GPU_SHARE=${GPU_SHARE:-0.10}
MODEL=${MODEL:-large}
HISTORY=${HISTORY:-uniform:800:1000}
DTYPE=${DTYPE:-bf16}
DEVICE=${DEVICE:-cuda}
CAND=${CAND:-}                  # a fixed candidate count (CPU dry runs); default: synth's distribution
T=${TIMEOUT_SCALE:-1}           # multiplies every step's time limit (slow CPU dry runs)
WORK=$(mktemp -d)
mkdir -p "$OUT"
export MPLBACKEND=Agg NCCL_NVLS_ENABLE=0
PY=${PYTHON:-python3}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/fleet.log"; }

log "machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tr '\n' ';' || echo no-nvidia-smi)"

# 1. trace and per-GPU capacities
SYN=$WORK/synth.parquet
timeout $((120 * T)) $PY -m mtbench trace synth --users "$SYNTH_USERS" --requests "$SYNTH_REQUESTS" --duration 1d \
  --model "$MODEL" --seed 7 --history-dist "$HISTORY" ${CAND:+--cand "$CAND"} -o "$SYN" > /dev/null
read -r GPU HOST < <($PY - "$SYN" "$MAX_REQUESTS" "$GPU_SHARE" "$MODEL" "$DTYPE" <<'PY'
import sys
import numpy as np
from mtbench.model import get_config
from mtbench.model.config import parse_dtype
from mtbench.sim.sizes import EntrySizer
from mtbench.trace import open_trace
path, limit, share, model, dtype = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
sizer = EntrySizer.for_model(model, dtype)
a = open_trace(path).arrays(["user_id", "n_static"])
largest = int(sizer.entry_bytes(a["n_static"].max()))
entry = sizer.entry_bytes(a["n_static"][:limit])
users = a["user_id"][:limit]
order = np.lexsort((-entry, users))
first = np.r_[True, users[order][1:] != users[order][:-1]]
total = int(entry[order][first].sum())  # each active user's largest entry
print(max(int(share * total), 4 * largest), int(total * 1.05) + 4 * largest)
PY
)
log "per GPU: GPU tier $GPU B, host tier $HOST B ($MODEL, $DTYPE, $MAX_REQUESTS requests, warm-up $WARMUP, batch $BATCH)"
COMMON=(--model "$MODEL" --dtype "$DTYPE" --device "$DEVICE" --cache tiered --layout hybrid --policy lru
        --gpu-cache "$GPU" --host-cache "$HOST" --batch-size "$BATCH" --max-requests "$MAX_REQUESTS" --warmup "$WARMUP")

# 2. cost model of this device
timeout $((180 * T)) $PY -m mtbench calibrate --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --batch-size "$BATCH" \
  -o "$OUT/costmodel.json" 2>&1 | tail -3 | tee -a "$OUT/fleet.log"

# 3-4. one GPU, then two GPUs per router
timeout $((150 * T)) $PY -m mtbench replay "$SYN" "${COMMON[@]}" -o "$WORK/one" > "$WORK/one.log" 2>&1 || { cat "$WORK/one.log"; exit 1; }
cp "$WORK/one/summary.json" "$OUT/one_gpu_summary.json"
for ROUTER in user-hash round-robin; do
  timeout $((180 * T)) $PY -m mtbench replay "$SYN" "${COMMON[@]}" --gpus 2 --router "$ROUTER" -o "$WORK/two-$ROUTER" \
    > "$WORK/two-$ROUTER.log" 2>&1 || { tail -40 "$WORK/two-$ROUTER.log"; exit 1; }
  cp "$WORK/two-$ROUTER/summary.json" "$OUT/two_gpu_${ROUTER}_summary.json"
  log "two GPUs, $ROUTER: done"
done

# 5. the simulated fleet on the same requests (the replay's first MAX_REQUESTS)
$PY - "$SYN" "$MAX_REQUESTS" "$WORK/prefix.parquet" <<'PY'
import sys
from mtbench.trace import open_trace
from mtbench.trace.writer import write_trace
write_trace(open_trace(sys.argv[1]).read().iloc[:int(sys.argv[2])].reset_index(drop=True), sys.argv[3])
PY
timeout $((120 * T)) $PY -m mtbench fleet "$WORK/prefix.parquet" --replicas 1,2 --router user-hash,round-robin --write-through \
  --model "$MODEL" --dtype "$DTYPE" --gpu-cache "$GPU" --host-cache "$HOST" --cost-model "$OUT/costmodel.json" \
  --warmup "$WARMUP" --workers 1 -o "$WORK/fleet" > "$WORK/fleet.log" 2>&1 || { cat "$WORK/fleet.log"; exit 1; }
cp "$WORK/fleet/summary.json" "$OUT/fleet_sim_summary.json"
cp "$WORK/fleet/plots/"*.png "$OUT/" 2>/dev/null || true

# 6. digest
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
one = json.loads((out / "one_gpu_summary.json").read_text())["rows"][0]
sim = {(r["router"], r["replicas"]): r for r in json.loads((out / "fleet_sim_summary.json").read_text())["rows"]}
gap = lambda measured, simulated: abs(simulated - measured) / measured if measured else float("nan")
lines = ["# Two-GPU fleet benchmark", "",
         f"One GPU: {one['requests_per_s']:.0f} requests/s, hit ratio {one['hit_ratio']:.4f} (GPU {one['gpu_hit_ratio']:.4f}).", "",
         "| router | GPUs | requests/s | speedup vs 1 GPU | hit ratio | hit ratio per rank | sim. hit ratio | sim. speedup | "
         "hit gap | speedup gap |", "|" + "---|" * 10]
digest = {"one_gpu": one, "routers": {}}
for router in ("user-hash", "round-robin"):
    rows = json.loads((out / f"two_gpu_{router}_summary.json").read_text())["rows"]
    fleet = next(r for r in rows if r.get("gpus"))
    ranks = [r for r in rows if r.get("rank") is not None]
    speedup = fleet["requests_per_s"] / one["requests_per_s"]
    sim_speedup = sim[(router, 2)]["throughput_rps"] / sim[(router, 1)]["throughput_rps"]
    sim_hit = sim[(router, 2)]["hit_ratio"]
    entry = {"requests_per_s": fleet["requests_per_s"], "speedup_vs_one_gpu": speedup, "hit_ratio": fleet["hit_ratio"],
             "rank_hit_ratio": [r["hit_ratio"] for r in ranks], "rank_requests": [r["requests"] for r in ranks],
             "sim_hit_ratio": sim_hit, "sim_speedup": sim_speedup,
             "hit_gap": gap(fleet["hit_ratio"], sim_hit), "speedup_gap": gap(speedup, sim_speedup)}
    digest["routers"][router] = entry
    lines.append(f"| {router} | 2 | {fleet['requests_per_s']:.0f} | {speedup:.2f}x | {fleet['hit_ratio']:.4f} | "
                 + " / ".join(f"{h:.4f}" for h in entry["rank_hit_ratio"])
                 + f" | {sim_hit:.4f} | {sim_speedup:.2f}x | {entry['hit_gap']:.1%} | {entry['speedup_gap']:.1%} |")
worst = max(max(e["hit_gap"], e["speedup_gap"]) for e in digest["routers"].values())
lines += ["", f"Simulated vs measured, worst gap {worst:.1%} (target: within 15%: {'MET' if worst <= 0.15 else 'MISSED'}).",
          "Speedups are aggregate throughput (all timed requests / the slower rank's time) over one GPU's; the simulated "
          "fleet is `mtbench fleet` (write-through, calibrated cost model) on the same requests."]
(out / "fleet.json").write_text(json.dumps(digest, indent=2) + "\n")
(out / "FLEET.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
rm -rf "$WORK"
log "done: $OUT/FLEET.md"
