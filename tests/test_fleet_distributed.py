"""Two gloo processes replaying their routed shares of a trace (CPU tensors, tiny model) give, request by
request, the outcomes the simulator gives each replica's sub-trace under the same router, and the fleet
simulation (`run_task`, what `mtbench fleet` runs) gives the merged report's hit ratios.

Both sides run as `scripts/gpu_fleet_bench.sh` runs them: the replay pipelined (batches of 4 planned one
batch ahead, write-back, inclusive: the defaults) after a warm-up, the simulator with the same batch size,
lookahead 1 and warm-up; a load budget of "all" stands in for the replay's "auto", which loads everything
on the CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fleet import random_columns

from mtbench.fleet.distributed import rank_requests, run_distributed_replay
from mtbench.fleet.replica import OUTCOME_NAMES, ReplicaSpec, simulate_subtrace
from mtbench.fleet.simulate import FleetSettings, FleetTrace, ShardTask, run_task, summary_row
from mtbench.model import get_config
from mtbench.replay.engine import ReplayOptions
from mtbench.replay.runner import ReplaySetup
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload
from mtbench.sim.sizes import EntrySizer
from mtbench.trace.writer import write_trace

ROUTERS = ("user-hash", "round-robin")
BATCH = 4
WARMUP = 37  # not a whole number of batches on either rank


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, port: int, setup: ReplaySetup, results: multiprocessing.Queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    for router in ROUTERS:
        merged = run_distributed_replay(setup, router)
        if rank == 0:
            results.put((router, merged))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, ReplaySetup, Workload]:
    columns = random_columns(np.random.default_rng(21), 160, 25)
    columns["n_cand"] = np.minimum(columns["n_cand"], 4)
    path = write_trace(columns, tmp_path_factory.mktemp("dist") / "trace.parquet")
    sizer = EntrySizer(get_config("tiny").kv_bytes_per_token(torch.float32), 32)
    workload = Workload.from_columns(columns, sizer)
    mean = int(workload.size.mean())
    setup = ReplaySetup(trace=path, model="tiny", dtype="fp32", device="cpu", cache="tiered", gpu_capacity=4 * mean,
                        host_capacity=12 * mean, options=ReplayOptions(batch_size=BATCH, load_budget="all", warmup=WARMUP))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    port = _free_port()
    ranks = [context.Process(target=_rank, args=(r, port, setup, queue)) for r in range(2)]
    for process in ranks:
        process.start()
    results = dict(queue.get(timeout=300) for _ in ROUTERS)
    for process in ranks:
        process.join(timeout=60)
        assert process.exitcode == 0
    return results, setup, workload


@pytest.mark.parametrize("router", ROUTERS)
def test_two_gloo_ranks_match_the_simulator_request_by_request(replayed, router: str) -> None:
    results, setup, workload = replayed
    summary, records = results[router]
    assert sorted(records["trace_index"].tolist()) == list(range(workload.n_requests))
    settings = TierSettings(write_back=setup.write_back, inclusive=setup.inclusive, lookahead=1, batch_size=BATCH)
    spec = ReplicaSpec("lru", setup.gpu_capacity, setup.host_capacity, settings)
    for rank in range(2):
        _, indices = rank_requests(setup.trace, router, 2, rank, None)
        mine = records[records["rank"] == rank].sort_values("trace_index")
        assert mine["trace_index"].tolist() == indices.tolist()
        result, _, _ = simulate_subtrace(workload, indices, spec)
        assert mine["outcome"].tolist() == [OUTCOME_NAMES[o] for o in result.outcomes.tolist()]
    fleet_row, *rank_rows = summary["rows"]
    assert fleet_row["gpus"] == 2 and [r["rank"] for r in rank_rows] == [0, 1]
    assert fleet_row["requests"] == sum(r["requests"] for r in rank_rows)
    assert fleet_row["gpu_hits"] == sum(r["gpu_hits"] for r in rank_rows)
    assert fleet_row["measured_ms"] == max(r["measured_ms"] for r in rank_rows)
    cost = CostModel(static_token_ms=0.001, new_token_ms=0.002)
    settings = FleetSettings(replace(spec, cost=cost), cost, 1.0, warmup=WARMUP)
    trace = FleetTrace.prepare(workload, workload.key_user[workload.key], settings)
    replicas = run_task(ShardTask(router, 2, (0, 1)), trace)
    assert [s.requests for s in replicas] == [r["requests"] for r in rank_rows]  # the same warm-up batches left out
    simulated = summary_row(replicas, trace)
    assert simulated["hit_ratio"] == fleet_row["hit_ratio"] and simulated["gpu_hit_ratio"] == fleet_row["gpu_hit_ratio"]
