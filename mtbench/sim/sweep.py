"""Policy x capacity sweeps in parallel worker processes (the workload is sent once per worker)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

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


def _init_pool_worker(*state: object) -> None:
    """A pool worker leaves Ctrl-C to the parent, which terminates the pool (no worker tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(*state)  # type: ignore[arg-type]


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Kill the workers now (they ignore SIGINT and would finish their points first) and cancel the
    queued points, without waiting. Before Python 3.14 (`terminate_workers`) the executor has no public
    way to do it; its process table is read before `shutdown`, which clears it."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    wakeup = getattr(pool, "_executor_manager_thread_wakeup", None)
    manager = getattr(pool, "_executor_manager_thread", None)
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    # Python 3.11's exit hook writes to every executor's wake-up pipe that is not marked closed; after
    # the workers were killed that pipe can already be gone ("OSError: Bad file descriptor" printed at
    # exit). Let the manager thread finish, then mark the pipe closed.
    if manager is not None:
        manager.join(timeout=5.0)
    if wakeup is not None and not (manager is not None and manager.is_alive()):
        with contextlib.suppress(OSError):
            wakeup.close()


def _run_point(point: SweepPoint) -> dict:
    state = _WORKER_STATE
    result, recomputed = simulate(state["workload"], point.policy, point.gpu_capacity, point.host_capacity,
                                  state["settings"], state["cost"], host_geometry=state["host_geometry"])
    return result.row(state["cost"], state["workload"], recomputed)


def _point_row(point: SweepPoint, shared: tuple[Workload, TierSettings, CostModel, HostGeometry | None]) -> dict:
    """One point as a task of `mtbench.fleet.backend.Backend.map` (the workload travels as `shared`)."""
    _init_worker(*shared)
    return _run_point(point)


def run_sweep(workload: Workload, points: Sequence[SweepPoint], settings: TierSettings, cost: CostModel,
              host_geometry: HostGeometry | None, workers: int | None = None,
              on_done: Callable[[dict], None] | None = None, backend: Any = None) -> list[dict]:
    """Rows of every point, in the order of `points`; `on_done(row)` is called as each finishes.

    workers: processes to use (None: every core); 1 runs in this process. backend: a
    `mtbench.fleet.backend.Backend` (e.g. Ray) that runs the points instead of the local pool.
    """
    if backend is not None:
        return backend.map(_point_row, list(points), (workload, settings, cost, host_geometry), on_done)
    workers = max(1, min(workers or os.cpu_count() or 1, len(points)))
    _init_worker(workload, settings, cost, host_geometry)
    rows: list[dict | None] = [None] * len(points)
    if workers == 1:
        for index, point in enumerate(points):
            rows[index] = _run_point(point)
            if on_done:
                on_done(rows[index])
        return rows  # type: ignore[return-value]
    pool = ProcessPoolExecutor(workers, initializer=_init_pool_worker, initargs=(workload, settings, cost, host_geometry))
    try:
        futures = {pool.submit(_run_point, point): index for index, point in enumerate(points)}
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            if on_done:
                on_done(rows[futures[future]])
    except BaseException:  # Ctrl-C (mtbench.errors.Interrupted), a failed point: stop, do not wait
        _terminate(pool)
        raise
    pool.shutdown()
    return rows  # type: ignore[return-value]
