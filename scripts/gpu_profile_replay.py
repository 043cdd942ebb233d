"""Where does a replay's time go on the GPU? One replay run per cache mode, each with one of:

- `--what plain`: no profiler, only the run's own figures (`--row-bucket` tries another graph bucketing);
- `--what python` (default): cProfile of the host's Python, next to the run's measured figures;
- `--what api`: torch.profiler with CPU and CUDA activities: host time per op and per CUDA runtime
  call (cudaLaunchKernel, cudaMemcpyAsync, cudaMalloc, ...) and device time per kernel;
- `--what timeline`: a CUDA-only trace (little host overhead) of the timed batches: how busy each
  stream was, the compute stream's idle gaps, and host time in each CUDA runtime call;
- `--what phases`: host wall time per call of the replay's main steps (plan, refresh, release, batch
  assembly, upload, graph replays, scores), by wrapping them with timers;
- `--what segments`: which call sites make PyTorch's caching allocator ask CUDA for new device memory
  segments (each cudaMalloc may stall the host), from `torch.cuda.memory._record_memory_history`.

    python3 scripts/gpu_profile_replay.py TRACE [--model large] [--requests 12000] [--batch 64] \
        [--gpu-cache-bytes N] [--host-cache-bytes N] [--modes none,gpu,tiered/hybrid] [--what python]
"""

import argparse
import cProfile
import functools
import importlib
import io
import json
import pstats
import time
from collections import Counter

import torch

import mtbench.replay.engine as engine
from mtbench.cache.manager import CacheConfig
from mtbench.model import get_config
from mtbench.replay.engine import ReplayOptions, replay_run
from mtbench.replay.runner import build_model
from mtbench.trace import open_trace

GIB = 1 << 30
ACTIVITY = torch.profiler.ProfilerActivity.CUDA
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def cache_configs(gpu_bytes: int, host_bytes: int) -> dict[str, CacheConfig]:
    configs = {"none": CacheConfig(mode="none"), "gpu": CacheConfig(mode="gpu", gpu_capacity=gpu_bytes)}
    for layout in ("user", "hybrid", "paged", "zerocopy"):
        configs[f"tiered/{layout}"] = CacheConfig(mode="tiered", gpu_capacity=gpu_bytes, host_capacity=host_bytes,
                                                  layout=layout)
    return configs


def describe(label: str, row: dict, wall: float, batch: int) -> str:
    batches = max(1, row["requests"] / batch)
    return (f"== {label}: {wall:.1f} s wall; {row['ms_per_request']:.4f} ms/request; batch p50 {row['batch_p50_ms']:.2f} ms; "
            f"hit {row['hit_ratio']:.4f} (gpu {row['gpu_hit_ratio']:.4f}); host ms per batch: cache "
            f"{row['bookkeeping_ms'] / batches:.2f}, forward issue {row['forward_host_ms'] / batches:.2f}; "
            f"device mallocs {row['device_mallocs']}")


def python_profile(run) -> tuple[dict, str]:
    profiler = cProfile.Profile()
    profiler.enable()
    row = run()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(50)
    return row, "\n".join(line[:160] for line in text.getvalue().splitlines())


def api_profile(run) -> tuple[dict, str]:
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        row = run()
    events = profile.key_averages()
    host = events.table(sort_by="self_cpu_time_total", row_limit=40)
    device = events.table(sort_by="self_device_time_total", row_limit=25)
    return row, "\n".join(line[:200] for line in (host + "\n" + device).splitlines())


def segment_profile(run) -> tuple[dict, str]:
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    row = run()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    sites: Counter = Counter()
    sizes: Counter = Counter()
    for trace in snapshot["device_traces"]:
        for event in trace:
            if event["action"] not in ("segment_alloc", "segment_free"):
                continue
            frames = [f for f in event.get("frames", []) if "/mtbench/" in f["filename"] or "/kernels/" in f["filename"]]
            site = " <- ".join(f"{f['filename'].split('/')[-1]}:{f['line']}:{f['name']}" for f in frames[:4])
            sites[(event["action"], event.get("stream", 0), site)] += 1
            sizes[(event["action"], event["size"] >> 20)] += 1
    lines = ["count  action         stream        call site (innermost first)"]
    lines += [f"{n:5d}  {action:13s}  {stream:<12}  {site}" for (action, stream, site), n in sites.most_common(30)]
    lines += ["", "count  action         MiB"]
    lines += [f"{n:5d}  {action:13s}  {mib}" for (action, mib), n in sizes.most_common(20)]
    return row, "\n".join(lines)


def timeline_profile(run) -> tuple[dict, str]:
    """Trace only the timed batches: the profiler starts and stops where the engine samples the
    allocator (`_device_mallocs`, called once at the first timed batch and once at the end)."""
    sample = engine._device_mallocs
    profile = torch.profiler.profile(activities=[ACTIVITY])
    calls = []

    def marking(device):
        calls.append(device)
        (profile.start if len(calls) == 1 else profile.stop)()
        return sample(device)

    engine._device_mallocs = marking
    try:
        row = run()
    finally:
        engine._device_mallocs = sample
    path = "/tmp/replay_timeline.json"
    profile.export_chrome_trace(path)
    with open(path) as handle:
        events = [e for e in json.load(handle)["traceEvents"] if e.get("ph") == "X"]
    device = [e for e in events if e.get("cat") in DEVICE_CATEGORIES]
    start = min(e["ts"] for e in device)
    span = max(e["ts"] + e["dur"] for e in device) - start
    lines = [f"timed window {span / 1e3:.1f} ms; {len(device)} device events"]
    streams: dict = {}
    for e in device:
        streams.setdefault(e.get("args", {}).get("stream"), []).append((e["ts"], e["ts"] + e["dur"], e["cat"]))
    for stream, spans in sorted(streams.items(), key=lambda item: -len(item[1])):
        spans.sort()
        busy, gaps, end = 0.0, [], None
        for begin, finish, _ in spans:
            if end is not None and begin > end:
                gaps.append(begin - end)
            busy += max(0.0, finish - max(begin, end or begin))
            end = finish if end is None else max(end, finish)
        kinds = Counter(kind for _, _, kind in spans)
        big = sorted(gaps)[-5:]
        lines.append(f"stream {stream}: {dict(kinds)}; busy {busy / 1e3:.1f} ms = {busy / span:.1%} of the window; "
                     f"gaps > 50 us: {sum(g for g in gaps if g > 50) / 1e3:.1f} ms in {sum(g > 50 for g in gaps)}; largest {[round(g) for g in big]} us")
    busiest = max(streams, key=lambda stream: len(streams[stream]))
    kernels = Counter()
    for e in device:
        if e.get("args", {}).get("stream") == busiest:
            kernels[e["name"][:90]] += e["dur"]
    lines.append(f"device time per kernel on stream {busiest} (ms):")
    lines += [f"  {total / 1e3:8.1f}  {name}" for name, total in kernels.most_common(14)]
    runtime = Counter()
    counts = Counter()
    for e in events:
        if e.get("cat") == "cuda_runtime" or e.get("cat") == "cuda_driver":
            runtime[e["name"]] += e["dur"]
            counts[e["name"]] += 1
    lines.append("host time in CUDA runtime/driver calls (ms, calls):")
    lines += [f"  {name}: {total / 1e3:.1f} ms, {counts[name]}" for name, total in runtime.most_common(14)]
    return row, "\n".join(lines)


PHASES = (  # (module, attribute path) of the functions `phases` times; nested ones overlap
    ("mtbench.replay.engine", "_BatchRunner._execute"), ("mtbench.replay.engine", "_BatchRunner._plan"),
    ("mtbench.replay.engine", "_BatchRunner._forward"), ("mtbench.replay.engine", "_BatchRunner._pooled_inputs"),
    ("mtbench.replay.engine", "_BatchRunner._sample"), ("mtbench.replay.engine", "_BatchRunner._resolve_finished"),
    ("mtbench.replay.engine", "build_batch"), ("mtbench.replay.engine", "batch_to_device"),
    ("mtbench.replay.engine", "pooled_forward"), ("mtbench.model.pooled", "ForwardGraphs._prepare"),
    ("mtbench.model.pooled", "PooledInputs.from_batch"), ("mtbench.model.mtgr", "MTGR.scores"),
    ("mtbench.cache.manager", "CacheManager.plan"), ("mtbench.cache.manager", "CacheManager.refresh"),
    ("mtbench.cache.manager", "CacheManager.release"), ("mtbench.cache.manager", "CacheManager.pool_inputs"),
    ("mtbench.cache.manager", "CacheManager.wait_layer"), ("mtbench.cache.manager", "CacheManager._issue_stores"),
    ("mtbench.cache.transfer", "TransferEngine.load"), ("mtbench.cache.transfer", "TransferEngine.store_many"),
    ("mtbench.cache.layouts", "HybridLayout.load_layers"), ("mtbench.cache.layouts", "HybridLayout.store_many"),
    ("mtbench.cache.layouts", "HostLayout.row_views"), ("mtbench.cache.control", "ControlPlane.plan"),
    ("mtbench.cache.control", "ControlPlane.release"), ("mtbench.cache.control", "ControlPlane._lookup"),
    ("mtbench.cache.control", "ControlPlane._store_host"), ("mtbench.cache.control", "ControlPlane._loads_within_budget"),
    ("mtbench.cache.control", "ControlPlane._drop_other_versions"), ("mtbench.cache.control", "ControlPlane._admit_gpu"),
    ("mtbench.cache.extents", "ExtentAllocator.allocate"), ("mtbench.cache.extents", "ExtentAllocator.free"),
    ("mtbench.device", "PinnedStaging.upload"), ("mtbench.replay.engine", "_Recorder.resolve"),
    ("mtbench.model.pooled", "ForwardGraphs.run"), ("mtbench.model.mtgr", "MTGR.require_poolable"),
)


def phase_profile(run) -> tuple[dict, str]:
    totals: Counter = Counter()
    calls: Counter = Counter()
    restore = []
    for module_name, path in PHASES:
        module = importlib.import_module(module_name)
        owner_name, _, attribute = path.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        original = getattr(owner, attribute)
        if isinstance(original, classmethod):
            continue

        def timed(*args, __original=original, __name=path, **kwargs):
            began = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                totals[__name] += time.perf_counter() - began
                calls[__name] += 1

        setattr(owner, attribute, timed)
        restore.append((owner, attribute, original))
    try:
        row = run()
    finally:
        for owner, attribute, original in restore:
            setattr(owner, attribute, original)
    lines = ["phase                                    calls   ms per call   ms total (all batches, warm-up included)"]
    lines += [f"{name:40s} {calls[name]:6d}   {1e3 * totals[name] / calls[name]:10.3f}   {1e3 * totals[name]:9.1f}"
              for name in sorted(totals, key=lambda n: -totals[n])]
    return row, "\n".join(lines)


def no_profile(run) -> tuple[dict, str]:
    return run(), ""


PROFILERS = {"plain": no_profile, "python": python_profile, "api": api_profile, "segments": segment_profile, "timeline": timeline_profile, "phases": phase_profile}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--model", default="large")
    parser.add_argument("--requests", type=int, default=12000)
    parser.add_argument("--warmup", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--gpu-cache-bytes", type=int, default=2 * GIB)
    parser.add_argument("--host-cache-bytes", type=int, default=16 * GIB)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--modes", default="none,gpu,tiered/hybrid", help="runs, comma-separated")
    parser.add_argument("--what", default="python", choices=sorted(PROFILERS))
    parser.add_argument("--row-bucket", type=int, default=None, help="graph buckets' row granularity (default: the engine's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(get_config(args.model), device, dtype, seed=0)
    trace = open_trace(args.trace, get_config(args.model).limits())
    options = ReplayOptions(batch_size=args.batch, max_requests=args.requests, warmup=args.warmup)
    configs = cache_configs(args.gpu_cache_bytes, args.host_cache_bytes)
    if args.row_bucket is not None:
        engine.ForwardGraphs = functools.partial(engine.ForwardGraphs, row_bucket=args.row_bucket,
                                                 max_buckets=32768 // args.row_bucket)
    for label in args.modes.split(","):
        began = time.perf_counter()
        row, text = PROFILERS[args.what](lambda: replay_run(model, trace, configs[label], options, label).row)
        print(describe(label, row, time.perf_counter() - began, args.batch))
        if device.type == "cuda":
            print(f"device memory: allocated {torch.cuda.memory_allocated() / GIB:.2f} GiB, reserved "
                  f"{torch.cuda.memory_reserved() / GIB:.2f} GiB, peak allocated {torch.cuda.max_memory_allocated() / GIB:.2f} GiB")
        print(text, flush=True)


if __name__ == "__main__":
    main()
