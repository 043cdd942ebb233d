"""Policy x capacity sweeps in parallel worker processes (the workload is sent once per worker)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from mtbench.cache.extents import HostGeometry
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload, simulate


@dataclass(frozen=True)
class SweepPoint:
    policy: str
    gpu_capacity: int
    host_capacity: int


_WORKER_STATE: dict = {}


def _init_worker(workload: Workload, settings: TierSettings, cost: CostModel, host_geometry: HostGeometry | None) -> None:
    _WORKER_STATE.update(workload=workload, settings=settings, cost=cost, host_geometry=host_geometry)


def _run_point(point: SweepPoint) -> dict:
    state = _WORKER_STATE
    result, recomputed = simulate(state["workload"], point.policy, point.gpu_capacity, point.host_capacity,
                                  state["settings"], state["cost"], host_geometry=state["host_geometry"])
    return result.row(state["cost"], state["workload"], recomputed)


def run_sweep(workload: Workload, points: Sequence[SweepPoint], settings: TierSettings, cost: CostModel,
              host_geometry: HostGeometry | None, workers: int | None = None,
              on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Rows of every point, in the order of `points`; `on_done(row)` is called as each finishes.

    workers: processes to use (None: every core); 1 runs in this process.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(points)))
    _init_worker(workload, settings, cost, host_geometry)
    rows: list[dict | None] = [None] * len(points)
    if workers == 1:
        for index, point in enumerate(points):
            rows[index] = _run_point(point)
            if on_done:
                on_done(rows[index])
        return rows  # type: ignore[return-value]
    with ProcessPoolExecutor(workers, initializer=_init_worker,
                             initargs=(workload, settings, cost, host_geometry)) as pool:
        futures = {pool.submit(_run_point, point): index for index, point in enumerate(points)}
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            if on_done:
                on_done(rows[futures[future]])
    return rows  # type: ignore[return-value]
