"""Where does a replay's time go on the GPU? Host-side Python profile (cProfile) of one replay run per
cache mode, next to its measured time per batch. Guides work on the replay's host overheads.

    python3 scripts/gpu_profile_replay.py TRACE [--model large] [--requests 3000] [--batch 128]
"""

import argparse
import cProfile
import io
import pstats
import time

import torch

from mtbench.cache.manager import CacheConfig
from mtbench.model import get_config
from mtbench.replay.engine import ReplayOptions, replay_run
from mtbench.replay.runner import build_model
from mtbench.trace import open_trace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--model", default="large")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--gpu-cache", type=float, default=2.0, help="GiB")
    parser.add_argument("--host-cache", type=float, default=16.0, help="GiB")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--modes", default="none,gpu,tiered/user", help="Which runs to profile.")
    parser.add_argument("--kernels", action="store_true", help="Also print the device-time table of GPU kernels.")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(get_config(args.model), device, dtype, seed=0)
    trace = open_trace(args.trace, get_config(args.model).limits())
    options = ReplayOptions(batch_size=args.batch, max_requests=args.requests, warmup=args.requests // 4)
    gib = 1 << 30
    configs = {
        "none": CacheConfig(mode="none"),
        "gpu": CacheConfig(mode="gpu", gpu_capacity=int(args.gpu_cache * gib)),
    }
    for layout in ("user", "hybrid", "paged", "zerocopy"):
        configs[f"tiered/{layout}"] = CacheConfig(mode="tiered", gpu_capacity=int(args.gpu_cache * gib),
                                                  host_capacity=int(args.host_cache * gib), layout=layout)
    for label in args.modes.split(","):
        config = configs[label]
        profiler = cProfile.Profile()
        began = time.perf_counter()
        profiler.enable()
        if args.kernels and device.type == "cuda":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as kernel_profile:
                result = replay_run(model, trace, config, options, label)
        else:
            kernel_profile = None
            result = replay_run(model, trace, config, options, label)
        profiler.disable()
        row = result.row
        print(f"== {label}: {time.perf_counter() - began:.1f} s wall; batch p50 {row['batch_p50_ms']:.2f} ms; "
              f"hit {row['hit_ratio']:.3f} (gpu {row['gpu_hit_ratio']:.3f}); compute {row['compute_ms']:.0f} ms; "
              f"bookkeeping {row['bookkeeping_ms']:.0f} ms; measured {row['measured_ms']:.0f} ms")
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
        print("\n".join(line[:150] for line in text.getvalue().splitlines()[6:32]))
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        print("\n".join(line[:150] for line in text.getvalue().splitlines()[6:54]))
        if kernel_profile is not None:
            table = kernel_profile.key_averages().table(sort_by="self_device_time_total", row_limit=25)
            print("\n".join(line[:170] for line in table.splitlines()))


if __name__ == "__main__":
    main()
