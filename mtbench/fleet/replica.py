"""One simulated cache replica (GPU + host tiers, one policy): the fleet's only door into the simulator.

Everything the fleet and the streaming simulation need from the simulator goes through this module,
so the control-plane merge (issue 12: one `ControlPlane` per replica) re-points this file alone:
- `simulate_subtrace`: a whole sub-trace (the requests a stateless router sent to one replica) through
  `mtbench.sim.simulator.simulate`, unchanged;
- `SimReplica`: the same two tiers served one request at a time, for the residency router (which must
  see the live tiers) and for the streaming simulator (which never holds the whole trace). It drives the
  simulator's own per-request rule (`_TwoTierRun._serve`) and applies the stale-version drop exactly as
  `_TwoTierRun.run` does; per-key state lives in dicts, so keys need not be dense or known in advance.
  `tests/test_fleet.py` checks request by request that both paths give the same outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtbench.cache.policies import NEVER, policy_class
from mtbench.errors import MtbenchError
from mtbench.sim.costmodel import CostModel
from mtbench.sim.oracle import next_use_indices
from mtbench.sim.simulator import (
    GPU_HIT, HOST_HIT, MISS, STALE, SimResult, TierSettings, Workload, _previous_of_group, _TwoTierRun, simulate,
)

OUTCOME_NAMES = {GPU_HIT: "gpu_hit", HOST_HIT: "host_hit", MISS: "miss", STALE: "stale"}


@dataclass(frozen=True)
class ReplicaSpec:
    """The cache of every replica of a fleet (each replica gets its own tiers of these sizes)."""

    policy: str
    gpu_capacity: int
    host_capacity: int
    settings: TierSettings = TierSettings()
    cost: CostModel | None = None
    tokens_per_byte: float = 0.0

    def check_stepwise(self) -> None:
        """Request-by-request serving has no future: refuse what needs it."""
        if policy_class(self.policy).uses_next_use:
            raise MtbenchError(f"policy {self.policy} needs each request's next use, unknown when replicas are "
                               f"chosen request by request (residency router, streaming); use an online policy")
        if self.settings.lookahead:
            raise MtbenchError("--lookahead is not supported request by request (residency router, streaming)")


def subworkload(workload: Workload, indices: np.ndarray) -> Workload:
    """The requests `indices` (in trace order) as a workload of their own: same key ids and sizes, next
    use and each user's previous key recomputed within the sub-trace (what one replica sees)."""
    key, user = workload.key[indices], workload.user[indices]
    prev = _previous_of_group(user)
    return Workload(
        key=key, user=user, version=workload.version[indices], ts=workload.ts[indices],
        n_static=workload.n_static[indices], n_rt=workload.n_rt[indices], n_cand=workload.n_cand[indices],
        size=workload.size[indices], next_use=next_use_indices(key),
        prev_key=np.where(prev >= 0, key[np.maximum(prev, 0)], -1).astype(np.int64), unit=workload.unit,
        key_user=workload.key_user, key_version=workload.key_version,
    )


def simulate_subtrace(workload: Workload, indices: np.ndarray, spec: ReplicaSpec
                      ) -> tuple[SimResult, np.ndarray, Workload]:
    """One replica's sub-trace through the simulator: (counters with outcomes, recomputed tokens, sub-workload)."""
    sub = subworkload(workload, indices)
    result, recomputed = simulate(sub, spec.policy, spec.gpu_capacity, spec.host_capacity, spec.settings, spec.cost,
                                  spec.tokens_per_byte, keep_outcomes=True)
    return result, recomputed, sub


class SimReplica:
    """Two simulated tiers served one request at a time.

    State: the simulator's run object (`_run`: the GPU and host policies, byte counters) with its per-key
    tables (`key_size`, `key_tokens`, `key_next`) as dicts; `_last_key[user]`, the key of the user's
    previous request on this replica (the stale-version rule compares against it); `outcome_counts`.
    `key_user`/`key_version` map a key id to its user and version (mtserve asks); they may grow while
    the replica runs (the streaming simulator appends to them).
    """

    def __init__(self, spec: ReplicaSpec, key_user: Sequence[int], key_version: Sequence[int], unit: bool) -> None:
        spec.check_stepwise()
        empty = np.empty(0, dtype=np.int64)
        shell = Workload(key=empty, user=empty, version=empty, ts=empty.astype(np.float64), n_static=empty,
                         n_rt=empty, n_cand=empty, size=empty, next_use=empty, prev_key=empty, unit=unit,
                         key_user=key_user, key_version=key_version)  # type: ignore[arg-type]
        self._run = _TwoTierRun(shell, spec.policy, spec.gpu_capacity, spec.host_capacity, spec.settings, spec.cost,
                                spec.tokens_per_byte)
        self._run.key_size, self._run.key_tokens, self._run.key_next = {}, {}, {}  # type: ignore[assignment]
        self._last_key: dict[int, int] = {}
        self.outcome_counts = [0, 0, 0, 0]

    def holds(self, key: int) -> bool:
        """Whether either tier holds `key`."""
        run = self._run
        return key in run.gpu or (run.host is not None and key in run.host)

    def serve(self, key: int, user: int, n_static: int, size: int, t: float) -> tuple[int, int]:
        """Serve one request at trace time `t`: (outcome code, static tokens recomputed)."""
        run = self._run
        run.key_next[key] = NEVER
        old = self._last_key.get(user, -1)
        self._last_key[user] = key
        stale = old >= 0 and old != key and self.holds(old)
        if stale:
            run.gpu.remove(old)
            if run.host is not None:
                run.host.remove(old)
        outcome, recomputed = run._serve(key, n_static, size, t)
        if stale and outcome == MISS:
            outcome = STALE
        self.outcome_counts[outcome] += 1
        return outcome, recomputed

    @property
    def bytes_h2d(self) -> int:
        return self._run.h2d

    @property
    def bytes_d2h(self) -> int:
        return self._run.d2h

    @property
    def evictions(self) -> tuple[int, int]:
        """(GPU tier evictions, host tier evictions)."""
        return self._run.gpu_evictions, self._run.host_evictions
