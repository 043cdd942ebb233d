"""Policy x capacity sweeps in parallel worker processes (the workload is sent once per worker)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import TierSettings, Workload, simulate


@dataclass(frozen=True)
class SweepPoint:
    policy: str
    gpu_capacity: int
    host_capacity: int


_WORKER_STATE: dict = {}


def _init_worker(workload: Workload, settings: TierSettings, cost: CostModel, tokens_per_byte: float) -> None:
    _WORKER_STATE.update(workload=workload, settings=settings, cost=cost, tokens_per_byte=tokens_per_byte)


def _run_point(point: SweepPoint) -> dict:
    state = _WORKER_STATE
    result, recomputed = simulate(state["workload"], point.policy, point.gpu_capacity, point.host_capacity,
                                  state["settings"], state["cost"], state["tokens_per_byte"])
    return result.row(state["cost"], state["workload"], recomputed)


def _point_row(point: SweepPoint, shared: tuple[Workload, TierSettings, CostModel, float]) -> dict:
    """One point as a task of `mtbench.fleet.backend.Backend.map` (the workload travels as `shared`)."""
    _init_worker(*shared)
    return _run_point(point)


def run_sweep(workload: Workload, points: Sequence[SweepPoint], settings: TierSettings, cost: CostModel,
              tokens_per_byte: float, workers: int | None = None,
              on_done: Callable[[dict], None] | None = None, backend: Any = None) -> list[dict]:
    """Rows of every point, in the order of `points`; `on_done(row)` is called as each finishes.

    workers: processes to use (None: every core); 1 runs in this process. backend: a
    `mtbench.fleet.backend.Backend` (e.g. Ray) that runs the points instead of the local pool.
    """
    if backend is not None:
        return backend.map(_point_row, list(points), (workload, settings, cost, tokens_per_byte), on_done)
    workers = max(1, min(workers or os.cpu_count() or 1, len(points)))
    _init_worker(workload, settings, cost, tokens_per_byte)
    rows: list[dict | None] = [None] * len(points)
    if workers == 1:
        for index, point in enumerate(points):
            rows[index] = _run_point(point)
            if on_done:
                on_done(rows[index])
        return rows  # type: ignore[return-value]
    with ProcessPoolExecutor(workers, initializer=_init_worker,
                             initargs=(workload, settings, cost, tokens_per_byte)) as pool:
        futures = {pool.submit(_run_point, point): index for index, point in enumerate(points)}
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            if on_done:
                on_done(rows[futures[future]])
    return rows  # type: ignore[return-value]
