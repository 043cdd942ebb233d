"""The real replay on several GPUs: one process per GPU, requests routed by the fleet's routers.

Launched by `torchrun --nproc-per-node N -m mtbench replay TRACE ... --router NAME` (or `mtbench replay
--gpus N`, which starts the same through `torch.distributed.run`). Every process (rank r of N):
1. reads the whole trace (first `--max-requests` rows) and computes the router's assignment of every
   request (`Router.assign`, the same code as `mtbench fleet`; every rank gets the same answer);
2. writes its own requests to a private sub-trace and runs the normal single-GPU replay on it
   (`mtbench.replay.runner.run_replay`, unchanged) with its own model copy and real tiers on
   `cuda:<local rank>` (or the CPU);
3. sends its summary rows and records to rank 0 with `torch.distributed.gather_object` (gloo: only
   metadata travels; no tensor collective runs, so NCCL is never initialised).
Rank 0 merges one report: per-rank rows (`run` = "rank<r>/<label>", `rank` = r) and one fleet row per
label (`run` = label): summed counts, and throughput = all timed requests / the slowest rank's time.
Warm-up counts global requests: rank r leaves out its requests whose trace index is below `--warmup`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.fleet.routers import STATELESS_ROUTER_NAMES, make_router, router_class
from mtbench.trace import open_trace
from mtbench.trace.writer import write_trace

COUNT_FIELDS = ("requests", "gpu_hits", "host_hits", "host_recomputes", "misses", "stale", "bytes_h2d", "bytes_d2h",
                "gpu_evictions", "host_evictions")
# NVLink multicast stays off (NCCL's NVLS, torch's symmetric memory, NVSHMEM): not every lent host enables it
LAUNCH_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls) -> "RankInfo | None":
        """This process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), or None outside one."""
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            return None
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def check_router(name: str) -> None:
    """Routers of the real replay must assign a whole trace up front (no live cache state across GPUs)."""
    router_class(name)
    if name not in STATELESS_ROUTER_NAMES:
        raise MtbenchError(f"--router {name}: the multi-GPU replay supports {', '.join(STATELESS_ROUTER_NAMES)} "
                           f"(the residency router needs every GPU's live cache state; use `mtbench fleet`)")


def rank_requests(trace_path: Path, router: str, world_size: int, rank: int, max_requests: int | None,
                  seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """(this rank's requests as a trace frame, their indices in the whole trace)."""
    frame = open_trace(trace_path).read()
    if max_requests is not None:
        frame = frame.iloc[:max_requests]
    assignment = make_router(router, world_size, seed).assign(frame["user_id"].to_numpy())
    indices = np.flatnonzero(assignment == rank)
    return frame.iloc[indices].reset_index(drop=True), indices


def run_rank(setup, router: str, info: RankInfo, progress_factory=None):
    """Replay this rank's share of the trace; returns (summary rows, records) with global request indices."""
    from mtbench.replay.runner import run_replay

    frame, indices = rank_requests(setup.trace, router, info.world_size, info.rank, setup.options.max_requests,
                                   setup.options.seed)
    if len(frame) == 0:
        raise MtbenchError(f"rank {info.rank}: router {router} sent no request to this GPU; use fewer GPUs or more requests")
    device = setup.device
    if device.startswith("cuda"):
        import torch

        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(info.local_rank)
    warmup = int(np.count_nonzero(indices < setup.options.warmup))
    with tempfile.TemporaryDirectory(prefix=f"mtbench-rank{info.rank}-") as scratch:
        sub_trace = write_trace(frame, Path(scratch) / "requests.parquet")
        rank_setup = replace(setup, trace=sub_trace, device=device,
                             options=replace(setup.options, max_requests=None, warmup=warmup))
        outcome = run_replay(rank_setup, progress_factory)
    records = outcome.records
    records.insert(0, "rank", info.rank)
    records["trace_index"] = indices[records["request_index"].to_numpy()]
    return outcome.summary, records


def merge(summaries: list[dict], records: list[pd.DataFrame], setup, router: str) -> tuple[dict, pd.DataFrame]:
    """One replay report of every rank: per-rank rows, then one fleet row per run label."""
    from mtbench.replay.runner import add_speedups

    rank_rows = []
    for rank, summary in enumerate(summaries):
        for row in summary["rows"]:
            rank_rows.append({**row, "run": f"rank{rank}/{row['run']}", "rank": rank})
    fleet_rows = [_fleet_row([s["rows"][i] for s in summaries]) for i in range(len(summaries[0]["rows"]))]
    add_speedups(fleet_rows)
    first = summaries[0]
    summary = {"kind": "replay", "trace": open_trace(setup.trace).fingerprint(), "model": first["model"],
               "dtype": first["dtype"], "device": f"{len(summaries)} x {first['device']}",
               "config": {**setup.config_dict(), "router": router, "world_size": len(summaries),
                          "device": setup.device},
               "rows": fleet_rows + rank_rows}
    if first.get("note"):
        summary["note"] = first["note"]
    return summary, pd.concat(records, ignore_index=True)


def _fleet_row(rows: list[dict]) -> dict:
    """Sum of the ranks' counts; the fleet's time is its slowest rank's (they run at once)."""
    merged = {key: rows[0][key] for key in ("run", "policy", "cache_mode", "layout", "sync", "gpu_capacity",
                                            "host_capacity", "kv_dtype", "lossy")}
    merged["gpus"] = len(rows)
    for key in COUNT_FIELDS:
        merged[key] = int(sum(row.get(key) or 0 for row in rows))
    n = merged["requests"]
    ratio = (lambda a, b: a / b if b else None)
    merged["hit_ratio"] = ratio(merged["gpu_hits"] + merged["host_hits"], n)
    merged["gpu_hit_ratio"] = ratio(merged["gpu_hits"], n)
    slowest_ms = max(row["measured_ms"] for row in rows)
    timed = sum(row["measured_ms"] / row["ms_per_request"] for row in rows if row.get("ms_per_request"))
    merged["measured_ms"] = slowest_ms
    merged["ms_per_request"] = ratio(slowest_ms, timed)
    merged["requests_per_s"] = ratio(timed, slowest_ms / 1e3)
    return merged


def run_distributed_replay(setup, router: str, progress_factory=None):
    """This rank's part of a multi-GPU replay; rank 0 returns the merged (summary, records), the others None."""
    import torch.distributed as dist

    check_router(router)
    info = RankInfo.from_env()
    if info is None:
        raise MtbenchError("a routed replay runs under torchrun (or `mtbench replay --gpus N`)")
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group("gloo")
    try:
        try:
            result, error = run_rank(setup, router, info, progress_factory if info.rank == 0 else None), None
        except MtbenchError as err:
            result, error = None, f"rank {info.rank}: {err}"
        gathered: list | None = [None] * info.world_size if info.rank == 0 else None
        dist.gather_object((result, error), gathered, dst=0)
        if info.rank != 0:
            if error:
                raise MtbenchError(error)
            return None
        errors = [e for _, e in gathered if e]
        if errors:
            raise MtbenchError(errors[0])
        return merge([r[0] for r, _ in gathered], [r[1] for r, _ in gathered], setup, router)
    finally:
        if started_here:
            dist.destroy_process_group()


def launch(gpus: int, argv: list[str]) -> None:
    """Run `python -m mtbench <argv>` as `gpus` local processes (torch.distributed's elastic launcher,
    what `torchrun --standalone` runs), with NVLink multicast off; MtbenchError when a rank fails."""
    import sys

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.update(LAUNCH_ENV)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=gpus, run_id=f"mtbench-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "mtbench", *argv)
    except ChildFailedError as err:
        codes = sorted({failure.exitcode for failure in err.failures.values()})
        raise MtbenchError(f"--gpus {gpus}: {len(err.failures)} rank(s) failed (exit code {', '.join(map(str, codes))}); "
                           f"their messages are above") from None
