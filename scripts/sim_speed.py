"""Requests per CPU-second (time.process_time: a loaded machine skews it least) of one simulator path,
for before/after comparisons (reports/POLICIES.md, "Simulator speed"): run it in a fresh process per
measurement, with PYTHONPATH naming the tree under test, and keep the best of three:
  PYTHONPATH=$PWD python3 scripts/sim_speed.py MODE ARGS   (prints requests per CPU-second)
  general POLICY [geometry]  traces/synth-small.parquet, first 20,000 requests, MTGR-large bf16 entries,
                             1 GiB GPU / 8 GiB host, default cost model (write-back, inclusive)
  unit POLICY CAPACITY       ARC OLTP trace (914,145 requests), unit size, one tier
  fleet ROUTER               synth-small, 8 replicas, 256 MiB GPU / 4 GiB host, LRU (fleet task CPU time)
  stream                     synth-small through one streaming replica, 256 MiB GPU / 4 GiB host, LRU
  decisions [POLICY ...]     no timing: one line per simulate run (every counter and a digest of every
                             outcome and reused-token count) over synth-small and movielens-small, first
                             12,000 requests, 3 capacity pairs, 5 tier settings, no / hybrid / paged host
                             extents; `diff` the output of two trees to show a speed-up changed nothing"""
import hashlib
import sys
import time
from pathlib import Path

mode, args = sys.argv[1], sys.argv[2:]
ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "traces" / "synth-small.parquet"


def timed(run):
    start = time.process_time()
    n = run()
    return n / (time.process_time() - start)


if mode == "unit":
    from mtbench.sim.simulator import Workload, simulate
    from mtbench.trace.importers import read_arc
    w = Workload.from_keys(read_arc(ROOT.parent / "shared" / "data" / "cachetrace-arc-ibm" / "OLTP.lis.zst").key)
    rate = timed(lambda: (simulate(w, args[0], int(args[1])), w.n_requests)[1])
else:
    from mtbench.model import get_config
    from mtbench.model.config import parse_dtype
    from mtbench.sim.costmodel import CostModel
    from mtbench.sim.simulator import TierSettings, Workload, simulate
    from mtbench.sim.sizes import EntrySizer
    from mtbench.trace import open_trace
    cfg = get_config("large")
    sizer = EntrySizer(cfg.kv_bytes_per_token(parse_dtype("bf16")), 32)
    cost = CostModel.default(cfg, "bf16")
    fields = ["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"]
    columns = open_trace(TRACE, limits=cfg.limits()).arrays(fields)
    if mode == "decisions":
        from mtbench.cache.policies import POLICY_NAMES
        from mtbench.cache.pool import KVShape
        shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, parse_dtype("bf16"), 32)
        settings = {"write-back": TierSettings(), "write-through-exclusive": TierSettings(write_back=False, inclusive=False),
                    "append": TierSettings(append=True), "batch-8-lookahead-1": TierSettings(batch_size=8, lookahead=1),
                    "load-budget-64MiB": TierSettings(load_budget=64 << 20)}
        for trace in ("synth-small", "movielens-small"):
            trace_columns = open_trace(ROOT / "traces" / f"{trace}.parquet", limits=cfg.limits()).arrays(fields)
            w = Workload.from_columns({k: v[:12000] for k, v in trace_columns.items()}, sizer)
            for policy in args or POLICY_NAMES:
                for gpu, host in ((256 << 20, 2 << 30), (1 << 30, 8 << 30), (512 << 20, 0)):
                    for name, tiers in settings.items():
                        for layout in ("none", "hybrid", "paged") if host else ("none",):
                            geometry = shape.host_geometry(layout, None, host) if layout != "none" else None
                            result, recomputed = simulate(w, policy, gpu, host, tiers, cost, keep_outcomes=True,
                                                          host_geometry=geometry)
                            digest = hashlib.md5(result.outcomes.tobytes() + recomputed.tobytes()).hexdigest()[:12]
                            counters = {k: v for k, v in vars(result).items() if k != "outcomes"}
                            print(trace, policy, gpu, host, name, layout, digest, counters, flush=True)
        sys.exit(0)
    if mode == "general":
        w = Workload.from_columns({k: v[:20000] for k, v in columns.items()}, sizer)
        geometry = None
        if args[1:] == ["geometry"]:
            from mtbench.cache.pool import KVShape
            shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, parse_dtype("bf16"), 32)
            geometry = shape.host_geometry("hybrid", None, 8 << 30)
        rate = timed(lambda: (simulate(w, args[0], 1 << 30, 8 << 30, cost=cost, host_geometry=geometry),
                              w.n_requests)[1])
    else:
        from mtbench.fleet.replica import ReplicaSpec
        spec = ReplicaSpec("lru", 256 << 20, 4 << 30, TierSettings(), cost)
        if mode == "fleet":
            from mtbench.fleet.simulate import FleetSettings, FleetTrace, plan_tasks, run_task
            w = Workload.from_columns(columns, sizer)
            shared = FleetTrace.prepare(w, columns["user_id"], FleetSettings(spec, cost, 2000.0))
            rate = timed(lambda: (sum(len(run_task(t, shared)) for t in plan_tasks([args[0]], [8])), w.n_requests)[1])
        else:
            from mtbench.fleet.stream import stream_simulate
            opened = open_trace(TRACE, limits=cfg.limits())
            rate = timed(lambda: stream_simulate(opened, spec, sizer).requests)
print(f"{rate:.0f}")
