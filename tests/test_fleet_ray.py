"""The Ray backend (a local Ray instance) gives the same numbers as the local backend, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from test_fleet import COST, SIZER, fleet_trace, random_columns

from mtbench.fleet.backend import LocalBackend, RayBackend, check_backend
from mtbench.fleet.simulate import plan_tasks, run_task, summary_row
from mtbench.sim.simulator import TierSettings, Workload
from mtbench.sim.sweep import SweepPoint, run_sweep

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_backend():
    backend = RayBackend(num_cpus=2)
    yield backend
    backend.close()


def test_ray_backend_gives_identical_summary_rows_to_the_local_backend(ray_backend: RayBackend) -> None:
    columns = random_columns(np.random.default_rng(8), 2000, 90)
    trace = fleet_trace(columns)
    routers, counts = ["round-robin", "user-hash", "consistent-hash", "residency"], [1, 3]
    tasks = plan_tasks(routers, counts, shard=2)

    def rows(backend) -> list[dict]:
        by_point: dict = {}
        for stats in backend.map(run_task, tasks, trace):
            for s in stats:
                by_point.setdefault((s.router, s.n_replicas), []).append(s)
        return [summary_row(by_point[(r, n)], trace) for r in routers for n in counts]

    assert rows(ray_backend) == rows(LocalBackend(1))

    workload = Workload.from_columns(columns, SIZER)
    size = int(workload.size.mean())
    points = [SweepPoint(p, c * size, 20 * size) for p in ("lru", "s3fifo", "mtserve") for c in (3, 9)]
    args = (workload, points, TierSettings(), COST, None)
    assert run_sweep(*args, backend=ray_backend) == run_sweep(*args, workers=1)


def test_a_running_ray_answers_the_address_probe(ray_backend: RayBackend) -> None:
    gcs = ray.get_runtime_context().gcs_address  # the local instance's "host:port", as `--ray-address` takes it
    check_backend("ray", gcs)  # raises MtbenchError when nothing (or no gRPC server) answers there
