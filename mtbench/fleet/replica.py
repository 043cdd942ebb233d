"""One simulated cache replica (GPU + host tiers, one policy): the fleet's only door into the simulator.

Everything the fleet and the streaming simulation need from the simulator goes through this module,
so the control-plane merge (issue 12: one `ControlPlane` per replica) re-points this file alone:
- `simulate_subtrace`: a whole sub-trace (the requests a stateless router sent to one replica) through
  `mtbench.sim.simulator.simulate`, unchanged;
- `SimReplica`: the same two tiers served one request at a time, for the residency router (which must
  see the live tiers) and for the streaming simulator (which never holds the whole trace). It drives the
  one control plane (`mtbench.cache.control.ControlPlane`) with batches of one request, exactly as the
  simulator does at `--batch-size 1` (`ControlPlane.serve`: a batch of one, without building one); the
  plane keys entries by (user, version), so keys need not be dense or known in advance.
  `tests/test_fleet.py` checks request by request that both paths agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtbench.cache.control import ControlConfig, ControlPlane, Outcome, Request
from mtbench.cache.policies import policy_class
from mtbench.cache.sizes import EntrySizer
from mtbench.errors import MtbenchError
from mtbench.sim.costmodel import CostModel
from mtbench.sim.oracle import next_use_indices
from mtbench.sim.simulator import SimResult, TierSettings, Workload, _previous_of_group, simulate

OUTCOME_NAMES = {int(outcome): outcome.label for outcome in Outcome}


@dataclass(frozen=True)
class ReplicaSpec:
    """The cache of every replica of a fleet (each replica gets its own tiers of these sizes)."""

    policy: str
    gpu_capacity: int
    host_capacity: int
    settings: TierSettings = TierSettings()
    cost: CostModel | None = None

    def check_stepwise(self) -> None:
        """Request-by-request serving has no future: refuse what needs it."""
        if policy_class(self.policy).uses_next_use:
            raise MtbenchError(f"policy {self.policy} needs each request's next use, unknown when replicas are "
                               f"chosen request by request (residency router, streaming); use an online policy")
        if self.settings.lookahead or self.settings.batch_size != 1:
            raise MtbenchError("--lookahead and --batch-size > 1 are not supported request by request (residency "
                               "router, streaming)")


def subworkload(workload: Workload, indices: np.ndarray) -> Workload:
    """The requests `indices` (in trace order) as a workload of their own: same key ids and sizes, next
    use and each user's previous key recomputed within the sub-trace (what one replica sees)."""
    key, user = workload.key[indices], workload.user[indices]
    prev = _previous_of_group(user)
    return Workload(
        key=key, user=user, version=workload.version[indices], ts=workload.ts[indices],
        n_static=workload.n_static[indices], n_rt=workload.n_rt[indices], n_cand=workload.n_cand[indices],
        size=workload.size[indices], next_use=next_use_indices(key),
        prev_key=np.where(prev >= 0, key[np.maximum(prev, 0)], -1).astype(np.int64), sizer=workload.sizer,
        key_user=workload.key_user, key_version=workload.key_version,
    )


def simulate_subtrace(workload: Workload, indices: np.ndarray, spec: ReplicaSpec
                      ) -> tuple[SimResult, np.ndarray, Workload]:
    """One replica's sub-trace through the simulator: (counters with outcomes, recomputed tokens, sub-workload)."""
    sub = subworkload(workload, indices)
    result, recomputed = simulate(sub, spec.policy, spec.gpu_capacity, spec.host_capacity, spec.settings, spec.cost,
                                  keep_outcomes=True)
    return result, recomputed, sub


class SimReplica:
    """Two simulated tiers served one request at a time.

    State: one `ControlPlane` (its policies, counters and per-key token counts); `key_user`/`key_version`
    map a key id to its (user, version) entry key; they may grow while the replica runs (the streaming
    simulator appends to them); `outcome_counts[outcome]` counts each `Outcome`.
    """

    def __init__(self, spec: ReplicaSpec, key_user: Sequence[int], key_version: Sequence[int], sizer: EntrySizer) -> None:
        spec.check_stepwise()
        self._plane = ControlPlane(ControlConfig(spec.policy, spec.gpu_capacity, spec.host_capacity, sizer,
                                                 spec.settings, costs=spec.cost))
        self._key_user, self._key_version = key_user, key_version
        self.outcome_counts = [0] * len(Outcome)

    def _entry(self, key: int) -> tuple[int, int]:
        return (int(self._key_user[key]), int(self._key_version[key]))

    def holds(self, key: int) -> bool:
        """Whether either tier holds `key`."""
        entry = self._entry(key)
        return self._plane.in_gpu(entry) or self._plane.on_host(entry)

    def serve(self, key: int, n_static: int, t: float) -> tuple[int, int]:
        """Serve one request at trace time `t`: (outcome code, static tokens recomputed)."""
        outcome, cached = self._plane.serve(Request(self._entry(key), int(n_static), float(t)))
        self.outcome_counts[outcome] += 1
        return int(outcome), int(n_static) - cached

    @property
    def bytes_h2d(self) -> int:
        return self._plane.stats.bytes_h2d

    @property
    def bytes_d2h(self) -> int:
        return self._plane.stats.bytes_d2h

    @property
    def evictions(self) -> tuple[int, int]:
        """(GPU tier evictions, host tier evictions)."""
        return self._plane.stats.gpu_evictions, self._plane.stats.host_evictions
