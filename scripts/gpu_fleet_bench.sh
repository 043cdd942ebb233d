#!/usr/bin/env bash
# Two-GPU fleet benchmark of issue 14 (kind nvidia-h200-x2, one device call, under 7 minutes): MTGR-large
# bf16 on the MTGR-shaped synthetic trace of scripts/gpu_replay_bench.sh, one process per GPU
# (torch.distributed, gloo for metadata, NVLink multicast off), user-hash vs round-robin, against one GPU
# and against the simulated fleet.
#
#   OUT=/some/dir scripts/gpu_fleet_bench.sh          (the device tool sets $OUT)
#
# Steps, each under its own time limit and all under TOTAL_S (a failed or timed-out step is logged and the
# digest reports what ran):
#  1. the synthetic trace; per-GPU tiers: GPU tier = GPU_SHARE of the replayed requests' active users' KV
#     bytes, host tier = all of them (as gpu_replay_bench.sh); every GPU gets tiers of these sizes;
#  2. `mtbench calibrate` on GPU0 at the replay's batch size: the cost model;
#  3. one GPU: `mtbench replay` (tiered, hybrid layout, write-back: the defaults) = the speedup baseline;
#  4. two GPUs: `mtbench replay --gpus 2 --router user-hash`, then `--router round-robin`;
#  5. the simulated fleet: `mtbench fleet --replicas 1,2 --router user-hash,round-robin` on the same requests,
#     with the same router code, tiers (write-back), batch size (lookahead 1, as the replay pipelines) and
#     warm-up, priced by the calibrated cost model: each replica's closed-loop time is the cost model's time
#     of its routed requests and their simulated outcomes, aggregate requests/s = timed requests / the
#     slowest replica's time (the measured fleet row is computed the same way from the ranks' clocks);
#  6. the digest, printed last: router, GPUs, aggregate requests/s, hit ratio per rank, speedup vs one GPU,
#     simulated requests/s, gap |simulated - measured| / measured and MET/MISSED against 15%.
# $OUT gets four small flat files: FLEET.md (the digest), fleet.json (its numbers, the measured and
# simulated rows, step times), fleet.log (steps, failures' output tails), costmodel.json.
# Sizes: MAX_REQUESTS requests replayed (first WARMUP of them warm the tiers, left out of every figure);
# closed-loop replays run 2,000-8,000 requests/s per H200, and each launch costs ~30-60 s (start, model,
# prewarm), so the defaults spend most of the budget on fixed costs and keep each timed run >= 2 s.
# CPU dry run (two gloo processes, tiny model; minutes, its figures mean nothing):
#   DEVICE=cpu MODEL=tiny DTYPE=fp32 SYNTH_USERS=40 SYNTH_REQUESTS=400 MAX_REQUESTS=160 WARMUP=32 BATCH=8 \
#   HISTORY=uniform:10:30 CAND=8 TIMEOUT_SCALE=4 OUT=/tmp/fleet-bench scripts/gpu_fleet_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-reports/gpu-fleet-bench}
MAX_REQUESTS=${MAX_REQUESTS:-24000}
WARMUP=${WARMUP:-6000}
BATCH=${BATCH:-64}
SYNTH_USERS=${SYNTH_USERS:-400}
SYNTH_REQUESTS=${SYNTH_REQUESTS:-60000}
GPU_SHARE=${GPU_SHARE:-0.10}
MODEL=${MODEL:-large}
HISTORY=${HISTORY:-uniform:800:1000}
DTYPE=${DTYPE:-bf16}
DEVICE=${DEVICE:-cuda}
CAND=${CAND:-}                  # a fixed candidate count (CPU dry runs); unset or empty: synth's distribution
T=${TIMEOUT_SCALE:-1}           # multiplies every time limit (slow CPU dry runs)
TOTAL_S=$(( ${TOTAL_S:-420} * T ))  # the whole script's budget; each step gets what is left of it at most
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
rm -f "$OUT/FLEET.md" "$OUT/fleet.json" "$OUT/fleet.log" "$OUT/costmodel.json"
export MPLBACKEND=Agg NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
DIGEST_S=20                     # kept back for the digest
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/fleet.log"; }
echo "{}" > "$WORK/steps.json"

step() {  # NAME LIMIT_S COMMAND...: run under min(LIMIT_S * T, what is left), output in $WORK/NAME.log
  local name=$1 limit=$(( $2 * T )); shift 2
  local left=$(( TOTAL_S - SECONDS - DIGEST_S ))
  (( left < limit )) && limit=$left
  if (( limit < 5 )); then log "$name: skipped (time budget spent)"; return 1; fi
  local started=$SECONDS rc=0
  timeout -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
  $PY -c 'import json,sys; p=sys.argv[1]; d=json.load(open(p)); d[sys.argv[2]]={"seconds":int(sys.argv[3]),"rc":int(sys.argv[4])}; json.dump(d,open(p,"w"))' \
    "$WORK/steps.json" "$name" $(( SECONDS - started )) "$rc"
  if (( rc != 0 )); then
    log "$name: FAILED (exit $rc$( (( rc == 124 || rc == 137 )) && echo ", time limit ${limit} s")) after $(( SECONDS - started )) s; its last lines:"
    tail -25 "$WORK/$name.log" | tee -a "$OUT/fleet.log"
    return "$rc"
  fi
  log "$name: done in $(( SECONDS - started )) s"
}

log "machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tr '\n' ';' || echo no-nvidia-smi)"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "GPUs", torch.cuda.device_count())' \
  2>&1 | tee -a "$OUT/fleet.log"

# 1. trace and per-GPU capacities
SYN=$WORK/synth.parquet
step synth 90 $PY -m mtbench trace synth --users "$SYNTH_USERS" --requests "$SYNTH_REQUESTS" --duration 1d \
  --model "$MODEL" --seed 7 --history-dist "$HISTORY" ${CAND:+--cand "$CAND"} -o "$SYN" || exit 1
read -r GPU HOST USERS < <($PY - "$SYN" "$MAX_REQUESTS" "$GPU_SHARE" "$MODEL" "$DTYPE" <<'PY'
import sys
import numpy as np
from mtbench.sim.sizes import EntrySizer
from mtbench.trace import open_trace
path, limit, share, model, dtype = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
sizer = EntrySizer.for_model(model, dtype)
a = open_trace(path).arrays(["user_id", "n_static"])
largest = int(sizer.entry_bytes(a["n_static"].max()))  # the replay refuses a tier that cannot hold it
entry = sizer.entry_bytes(a["n_static"][:limit])
users = a["user_id"][:limit]
order = np.lexsort((-entry, users))
first = np.r_[True, users[order][1:] != users[order][:-1]]
total = int(entry[order][first].sum())  # each active user's largest entry
print(max(int(share * total), 4 * largest), int(total * 1.05) + 4 * largest, int(first.sum()))
PY
)
log "per GPU: GPU tier $GPU B, host tier $HOST B ($USERS active users; $MODEL, $DTYPE, $MAX_REQUESTS requests, warm-up $WARMUP, batch $BATCH)"
COMMON=(--model "$MODEL" --dtype "$DTYPE" --device "$DEVICE" --cache tiered --layout hybrid --policy lru
        --gpu-cache "$GPU" --host-cache "$HOST" --batch-size "$BATCH" --max-requests "$MAX_REQUESTS" --warmup "$WARMUP")

# 2. cost model of GPU0 (`--device cuda` is the first visible GPU): what the simulated fleet is priced with
step calibrate 120 $PY -m mtbench calibrate --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --batch-size "$BATCH" \
  -o "$WORK/costmodel.json" \
  && cp "$WORK/costmodel.json" "$OUT/costmodel.json"

# 3-4. one GPU, then two GPUs per router
step one-gpu 120 $PY -m mtbench replay "$SYN" "${COMMON[@]}" -o "$WORK/one-gpu"
for ROUTER in user-hash round-robin; do
  step "two-gpus-$ROUTER" 150 $PY -m mtbench replay "$SYN" "${COMMON[@]}" --gpus 2 --router "$ROUTER" -o "$WORK/two-gpus-$ROUTER"
done

# 5. the simulated fleet on the same requests, priced by the calibrated cost model
if [ -f "$WORK/costmodel.json" ]; then
  step simulated 90 $PY -m mtbench fleet "$SYN" --max-requests "$MAX_REQUESTS" --replicas 1,2 --router user-hash,round-robin \
    --model "$MODEL" --dtype "$DTYPE" --gpu-cache "$GPU" --host-cache "$HOST" --batch-size "$BATCH" --lookahead 1 \
    --cost-model "$WORK/costmodel.json" --warmup "$WARMUP" --workers 4 -o "$WORK/simulated"
else
  log "simulated: skipped (no cost model)"
fi

# 6. digest (printed last)
$PY - "$WORK" "$OUT" "$GPU" "$HOST" "$USERS" "$MODEL" "$DTYPE" "$MAX_REQUESTS" "$WARMUP" "$BATCH" <<'PY'
import json
import sys
from pathlib import Path

import pandas as pd

work, out = Path(sys.argv[1]), Path(sys.argv[2])
gpu, host, users, model, dtype, max_requests, warmup, batch = sys.argv[3:11]
GAP_LIMIT = 0.15
ROUTERS = ("user-hash", "round-robin")


def summary(name: str) -> dict | None:
    path = work / name / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


one, sim = summary("one-gpu"), summary("simulated")
one_row = one["rows"][0] if one else None
sim_rows = {(r["router"], r["replicas"]): r for r in sim["rows"]} if sim else {}
sim_ranks: dict = {}
if sim:
    records = pd.read_parquet(work / "simulated" / "records.parquet")
    for (router, replicas), group in records.groupby(["router", "replicas"]):
        group = group.sort_values("replica")
        sim_ranks[(router, int(replicas))] = ((group["gpu_hits"] + group["host_hits"]) / group["requests"]).tolist()

# measured rows: (label, router, GPUs, fleet row, per-rank rows)
measured = [("one GPU", "user-hash", 1, one_row, [one_row] if one_row else [])]
for router in ROUTERS:
    merged = summary(f"two-gpus-{router}")
    rows = merged["rows"] if merged else []
    fleet = next((r for r in rows if r.get("gpus")), None)
    measured.append((router, router, 2, fleet, sorted((r for r in rows if r.get("rank") is not None), key=lambda r: r["rank"])))

base = one_row["requests_per_s"] if one_row else None
sim_base = sim_rows.get(("user-hash", 1), {}).get("throughput_rps")
digest = {"model": model, "dtype": dtype, "requests": int(max_requests), "warmup": int(warmup), "batch": int(batch),
          "active_users": int(users), "gpu_tier_bytes_per_gpu": int(gpu), "host_tier_bytes_per_gpu": int(host),
          "steps": json.loads((work / "steps.json").read_text()),
          "cost_model": json.loads((work / "costmodel.json").read_text()) if (work / "costmodel.json").is_file() else None,
          "gap_limit": GAP_LIMIT, "rows": []}
fmt = lambda value, spec: "—" if value is None else format(value, spec)
size = lambda n: f"{int(n) / 2**30:.2f} GiB" if int(n) >= 2**30 else f"{int(n) / 2**20:.2f} MiB"
table = [f"{'router':<11} {'GPUs':>4} {'req/s':>7}  {'hit ratio per rank':<18} {'speedup':>8} {'sim req/s':>9} "
         f"{'gap':>7}  {'15%':<6}", "-" * 79]
notes = []
for label, router, gpus, row, ranks in measured:
    sim_row = sim_rows.get((router, gpus))
    rps = row["requests_per_s"] if row else None
    sim_rps = sim_row["throughput_rps"] if sim_row else None
    gap = abs(sim_rps - rps) / rps if rps and sim_rps else None
    verdict = "—" if gap is None else ("MET" if gap <= GAP_LIMIT else "MISSED")
    speedup = rps / base if rps and base else None
    sim_speedup = sim_rps / sim_base if sim_rps and sim_base else None
    rank_hits = [r["hit_ratio"] for r in ranks]
    digest["rows"].append({
        "label": label, "router": router, "gpus": gpus, "requests_per_s": rps, "speedup_vs_one_gpu": speedup,
        "hit_ratio": row["hit_ratio"] if row else None, "gpu_hit_ratio": row["gpu_hit_ratio"] if row else None,
        "rank_hit_ratio": rank_hits, "rank_gpu_hit_ratio": [r["gpu_hit_ratio"] for r in ranks],
        "rank_requests": [r["requests"] for r in ranks], "rank_requests_per_s": [r["requests_per_s"] for r in ranks],
        "host_recomputes": row.get("host_recomputes") if row else None,
        "sim_requests_per_s": sim_rps, "sim_speedup_vs_one_gpu": sim_speedup,
        "sim_hit_ratio": sim_row["hit_ratio"] if sim_row else None,
        "sim_gpu_hit_ratio": sim_row["gpu_hit_ratio"] if sim_row else None,
        "sim_rank_hit_ratio": sim_ranks.get((router, gpus)), "gap": gap, "verdict": verdict,
        "measured_row": row, "measured_rank_rows": ranks if gpus > 1 else [], "sim_row": sim_row})
    hits = " / ".join(f"{h:.4f}" for h in rank_hits) if rank_hits else "not run" if not row else "—"
    table.append(f"{label:<11} {gpus:>4} {fmt(rps, ',.0f'):>7}  {hits:<18} {fmt(speedup, '.2f') + 'x' if speedup else '—':>8} "
                 f"{fmt(sim_rps, ',.0f'):>9} {fmt(gap, '.1%'):>7}  {verdict:<6}")
    if sim_row:
        sim_hits = " / ".join(f"{h:.4f}" for h in sim_ranks.get((router, gpus), []))
        notes.append(f"{label}: simulated hit ratio per rank {sim_hits} (GPU {sim_row['gpu_hit_ratio']:.4f}, measured "
                     f"{fmt(row['gpu_hit_ratio'] if row else None, '.4f')}), simulated speedup "
                     f"{fmt(sim_speedup, '.2f')}x")
gaps = [r["gap"] for r in digest["rows"] if r["gap"] is not None]
digest["worst_gap"] = max(gaps) if gaps else None
digest["verdict"] = ("MET" if max(gaps) <= GAP_LIMIT else "MISSED") if len(gaps) == len(digest["rows"]) else "INCOMPLETE"
failed = [name for name, s in digest["steps"].items() if s["rc"]]
lines = [f"# Two-GPU fleet benchmark ({model}, {dtype}, batch {batch}, {max_requests} requests replayed, warm-up "
         f"{warmup}; per GPU: GPU tier {size(gpu)}, host tier {size(host)}, "
         f"{users} active users)", "",
         "Simulated = `mtbench fleet` with the same routers, tiers, batches and warm-up, priced by the calibrated cost "
         "model (aggregate = timed requests / the slowest replica's time).", ""]
lines += [f"- {note}" for note in notes] or ["- no simulated fleet (its step did not run)"]
if failed:
    lines.append(f"- failed steps: {', '.join(failed)} (fleet.log has their last lines)")
lines += ["", f"Aggregate requests/s, measured vs simulated (gap = |sim - measured| / measured; worst "
          f"{fmt(digest['worst_gap'], '.1%')}, target within 15%: {digest['verdict']}):", ""]
(out / "fleet.json").write_text(json.dumps(digest, indent=2, default=str) + "\n")
(out / "FLEET.md").write_text("\n".join([*lines, "```", *table, "```"]) + "\n")
print("\n".join([*lines, *table]))
PY
