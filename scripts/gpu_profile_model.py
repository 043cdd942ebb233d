"""Where does a forward's time go on the GPU? Host (launch) time vs device time, and the top ops.

    python3 scripts/gpu_profile_model.py [--preset large] [--batch 16]
"""

import argparse
import time
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from mtbench.model import MTGR, build_batch, get_config, sample_requests
from mtbench.model.paged import page_static_kv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="large")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    device = torch.device("cuda")
    cfg = get_config(args.preset)
    model = MTGR(cfg).to(device, torch.bfloat16).eval()
    requests = sample_requests(cfg, args.batch, n_static=cfg.n_user_tokens + 1000, n_rt=100, n_cand=200)
    miss = build_batch(requests, cfg, device)
    hit = build_batch([replace(r, n_cached=r.n_static) for r in requests], cfg, device)
    paged = page_static_kv(model.encode_prefix(miss), 32)
    calls = {"full": lambda: model(miss),
             "cached": lambda: model.forward_cached(hit, paged.prefix, check_prefix=False)}
    for name, fn in calls.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(10):
            fn()
        host_ms = (time.perf_counter() - began) / 10 * 1e3
        torch.cuda.synchronize()
        total_ms = (time.perf_counter() - began) / 10 * 1e3
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        events = prof.key_averages()
        device_ms = sum(e.self_device_time_total for e in events) / 1e3
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx"))
        print(f"== {name}: host issue {host_ms:.2f} ms/forward, issue+sync {total_ms:.2f} ms, "
              f"device busy {device_ms:.2f} ms, kernel launches {launches}")
        print(events.table(sort_by="self_cpu_time_total", row_limit=22))


if __name__ == "__main__":
    main()
