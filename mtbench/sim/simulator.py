"""The fast cache simulator: a trace's requests through the control plane, no tensors.

Every tier decision (outcomes, admission, promotion, demotion, write-through / write-back,
inclusive / exclusive, stale drops, pins, hints, load budget, append growth) is made by
`mtbench.cache.control.ControlPlane`, the same code the real tiers run; the simulator adds only the
cost model's clock. Requests go through in batches of `TierSettings.batch_size` (1 by default: per
request, as libCacheSim), planned `lookahead` batches ahead of the one being released, exactly as the
replay drives its `CacheManager` (batch size B, lookahead 1), so the two decide identically; one
request at a time without lookahead goes through `ControlPlane.serve` (the same decisions, no batch).
Entry sizes are whole pages (`mtbench.cache.sizes`); `host_capacity == 0` means a single tier.

Fast path: one tier, unit sizes, no lookahead, no append, no version changes: the policy's
`unit_hit_mask` (libCacheSim speed), which the tests hold equal to the generic path.

The run's estimated time comes from `CostModel.total_ms`; `est_speedup` divides the time of
recomputing every prefix (no cache) by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice, repeat
from dataclasses import dataclass, field

import numpy as np

from mtbench.cache.control import (
    CacheStats, ControlConfig, ControlPlane, Key, Outcome, Request, TierSettings, run_batches,
)
from mtbench.cache.extents import HostGeometry
from mtbench.cache.policies import policy_class
from mtbench.cache.policies.base import NEVER
from mtbench.cache.sizes import EntrySizer
from mtbench.errors import MtbenchError
from mtbench.sim.costmodel import CostModel
from mtbench.sim.oracle import dense_ids, next_use_indices

GPU_HIT, HOST_HIT, MISS, STALE, HOST_RECOMPUTE, PARTIAL_HIT = (int(o) for o in Outcome)
__all__ = ["GPU_HIT", "HOST_HIT", "HOST_RECOMPUTE", "MISS", "PARTIAL_HIT", "STALE", "SimResult", "TierSettings",
           "Workload", "control_config", "request_batches", "simulate"]


@dataclass
class Workload:
    """A trace prepared for simulation (picklable; shared by every run of a sweep).

    Per request i: `key[i]` dense id of (user, version); `user[i]` dense user id; `version[i]`;
    `ts[i]` seconds; `n_static`, `n_rt`, `n_cand`; `size[i]` entry bytes (units in unit mode);
    `next_use[i]` index of the next request for the same key (NEVER if none); `prev_key[i]` key of
    the same user's previous request (-1 if none); per dense key k: `key_user[k]` its user_id and
    `key_version[k]` its static_version (the control plane's keys are these pairs).
    """

    key: np.ndarray
    user: np.ndarray
    version: np.ndarray
    ts: np.ndarray
    n_static: np.ndarray
    n_rt: np.ndarray
    n_cand: np.ndarray
    size: np.ndarray
    next_use: np.ndarray
    prev_key: np.ndarray
    sizer: EntrySizer = EntrySizer(1, 1, unit=True)
    key_user: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    key_version: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def unit(self) -> bool:
        return self.sizer.unit

    @property
    def n_requests(self) -> int:
        return int(self.key.shape[0])

    @property
    def has_versions(self) -> bool:
        """Whether some user changes static version (then stale drops can happen)."""
        return bool(np.any((self.prev_key >= 0) & (self.prev_key != self.key)))

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], sizer: EntrySizer) -> "Workload":
        """From trace columns ts, user_id, static_version, n_static, n_rt, n_cand (numpy arrays)."""
        user_id = np.asarray(columns["user_id"], dtype=np.int64)
        version = np.asarray(columns["static_version"], dtype=np.int64)
        pairs = np.stack([user_id, version], axis=1)
        uniques, key = np.unique(pairs, axis=0, return_inverse=True)
        key = key.reshape(-1).astype(np.int64)
        user, _ = dense_ids(user_id)
        prev_same_user = _previous_of_group(user)
        prev_key = np.where(prev_same_user >= 0, key[np.maximum(prev_same_user, 0)], -1)
        n_static = np.asarray(columns["n_static"], dtype=np.int64)
        return cls(
            key=key, user=user, version=version, ts=np.asarray(columns["ts"], dtype=np.float64),
            n_static=n_static, n_rt=np.asarray(columns["n_rt"], dtype=np.int64),
            n_cand=np.asarray(columns["n_cand"], dtype=np.int64), size=sizer.entry_bytes(n_static),
            next_use=next_use_indices(key), prev_key=prev_key.astype(np.int64), sizer=sizer,
            key_user=uniques[:, 0].astype(np.int64) if len(uniques) else np.empty(0, dtype=np.int64),
            key_version=uniques[:, 1].astype(np.int64) if len(uniques) else np.empty(0, dtype=np.int64),
        )

    def check_static_lengths(self, append: bool) -> None:
        """Every request of one (user, version) must have the same n_static unless prefixes may grow."""
        if append or self.n_requests == 0:
            return
        some_request = np.empty(int(self.key.max()) + 1, dtype=np.int64)
        some_request[self.key] = self.n_static  # one request's n_static per key: a scatter, no sort
        if np.array_equal(some_request[self.key], self.n_static):
            return
        order = np.argsort(self.key, kind="stable")  # some key differs: name the first row that does
        same_key = self.key[order][1:] == self.key[order][:-1]
        differs = same_key & (self.n_static[order][1:] != self.n_static[order][:-1])
        row = int(order[1:][np.flatnonzero(differs)[0]])
        raise MtbenchError(f"row {row}: n_static {int(self.n_static[row])} differs from an earlier request of the same "
                           f"(user_id, static_version); a version's prefix must not change (or use the append variant)")

    @classmethod
    def from_keys(cls, keys: np.ndarray) -> "Workload":
        """A cache trace of plain keys: unit sizes, one user per key, version 0, time = request index."""
        key, _ = dense_ids(keys)
        n = key.shape[0]
        ones = np.ones(n, dtype=np.int64)
        return cls(key=key, user=key, version=np.zeros(n, dtype=np.int64), ts=np.arange(n, dtype=np.float64),
                   n_static=ones, n_rt=np.zeros(n, dtype=np.int64), n_cand=ones, size=ones,
                   next_use=next_use_indices(key), prev_key=np.where(_previous_of_group(key) >= 0, key, -1),
                   key_user=np.arange(int(key.max(initial=-1)) + 1, dtype=np.int64),
                   key_version=np.zeros(int(key.max(initial=-1)) + 1, dtype=np.int64))


def _previous_of_group(group: np.ndarray) -> np.ndarray:
    """prev[i] = index of the previous element with the same group id, or -1."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    prev = np.full(group.shape[0], -1, dtype=np.int64)
    same = sorted_group[1:] == sorted_group[:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


@dataclass
class SimResult(CacheStats):
    """The control plane's counters of one run (one policy, one pair of capacities)."""

    policy: str = ""
    gpu_capacity: int = 0
    host_capacity: int = 0
    outcomes: np.ndarray | None = None

    @property
    def reused_tokens(self) -> int:
        return self.hit_tokens

    @property
    def recomputed_tokens(self) -> int:
        return self.static_tokens - self.hit_tokens

    def row(self, cost: CostModel, workload: Workload, recomputed: np.ndarray) -> dict:
        """The summary row (field names of the README's compare-policies row table)."""
        s = self  # the counters
        n = max(s.requests, 1)
        n_new = workload.n_rt + workload.n_cand
        total_ms, exposed_ms = cost.total_ms(n_new, recomputed, float(s.bytes_h2d))
        baseline_ms, _ = cost.total_ms(n_new, workload.n_static, 0.0)
        hits = s.gpu_hits + s.host_hits + s.partial_hits
        return {
            "policy": self.policy, "gpu_capacity": self.gpu_capacity, "host_capacity": self.host_capacity,
            "requests": s.requests, "gpu_hits": s.gpu_hits, "host_hits": s.host_hits, "partial_hits": s.partial_hits,
            "host_recomputes": s.host_recomputes, "misses": s.misses, "stale": s.stale,
            "hit_ratio": hits / n, "gpu_hit_ratio": s.gpu_hits / n,
            "token_hit_ratio": s.hit_tokens / max(s.static_tokens, 1), "reused_tokens": s.reused_tokens,
            "computed_tokens": s.recomputed_tokens, **s.miss_columns(),
            "bytes_h2d": s.bytes_h2d, "bytes_d2h": s.bytes_d2h,
            "gpu_evictions": s.gpu_evictions, "host_evictions": s.host_evictions,
            "est_ms_per_request": total_ms / n, "est_transfer_exposed_ms": exposed_ms / n,
            "est_speedup": baseline_ms / total_ms if total_ms > 0 else float("nan"),
        }


def simulate(workload: Workload, policy: str, gpu_capacity: int, host_capacity: int = 0,
             settings: TierSettings = TierSettings(), cost: CostModel | None = None, keep_outcomes: bool = False,
             host_geometry: HostGeometry | None = None) -> tuple[SimResult, np.ndarray]:
    """Run one policy at one pair of capacities; returns (counters, recomputed static tokens per request).

    `cost` gives the cost-aware policies (mtserve, gdsf) their reload costs; `host_geometry` makes host
    admissions need a free extent, as in the real host arena.
    """
    policy_class(policy)
    workload.check_static_lengths(settings.append)
    result = SimResult(policy=policy, gpu_capacity=int(gpu_capacity), host_capacity=int(host_capacity))
    fast = (host_capacity == 0 and workload.unit and settings.lookahead == 0 and settings.batch_size == 1
            and not settings.append and not workload.has_versions)
    mask = policy_class(policy).unit_hit_mask(workload.key.tolist(), int(gpu_capacity)) if fast else None
    if mask is not None:
        _count_unit_hits(result, workload, mask, int(gpu_capacity))
        recomputed = np.where(mask, 0, workload.n_static)
        result.outcomes = np.where(mask, GPU_HIT, MISS).astype(np.int8) if keep_outcomes else None
        return result, recomputed
    plane = ControlPlane(control_config(workload, policy, gpu_capacity, host_capacity, settings, cost, host_geometry))
    outcomes: list[int] = []
    cached: list[int] = []
    if settings.batch_size == 1 and settings.lookahead == 0:
        plane.serve_each(*request_columns(workload, next_use=policy_class(policy).uses_next_use), outcomes, cached)
    else:
        def released(plan) -> None:
            outcomes.extend(plan.outcomes)
            cached.extend(plan.cached)

        run_batches(plane, request_batches(workload, settings.batch_size), released)
    result = SimResult(**vars(plane.stats), policy=policy, gpu_capacity=int(gpu_capacity),
                       host_capacity=int(host_capacity),
                       outcomes=np.array(outcomes, dtype=np.int8) if keep_outcomes else None)
    return result, workload.n_static - np.fromiter(cached, dtype=np.int64, count=len(cached))


def control_config(workload: Workload, policy: str, gpu_capacity: int, host_capacity: int = 0,
                   settings: TierSettings = TierSettings(), cost: CostModel | None = None,
                   host_geometry: HostGeometry | None = None) -> ControlConfig:
    """The control plane's configuration of one simulated run."""
    return ControlConfig(policy, int(gpu_capacity), int(host_capacity), workload.sizer, settings,
                         host_geometry if host_capacity else None, cost)


def request_columns(workload: Workload, next_use: bool = True) -> tuple[list[Key], list[int], list[float], list[int]]:
    """The fields of the workload's requests as columns, in `Request`'s order; keys are (user_id,
    static_version) pairs, as the real tiers use, one tuple per distinct key. Without `next_use` every
    next use is NEVER (only a policy that `uses_next_use` reads it)."""
    pairs = list(zip(workload.key_user.tolist(), workload.key_version.tolist()))
    return ([pairs[k] for k in workload.key.tolist()], workload.n_static.tolist(), workload.ts.tolist(),
            workload.next_use.tolist() if next_use else [NEVER] * workload.n_requests)


def requests(workload: Workload) -> Iterator[Request]:
    """The workload's requests in order, as the control plane takes them."""
    return map(tuple.__new__, repeat(Request), zip(*request_columns(workload)))  # Request(*row), no Python call per row


def request_batches(workload: Workload, batch_size: int) -> Iterator[list[Request]]:
    """The workload's requests as control-plane batches of `batch_size`, in order."""
    stream = requests(workload)
    while batch := list(islice(stream, batch_size)):
        yield batch


def _count_unit_hits(stats: CacheStats, workload: Workload, mask: np.ndarray, capacity: int) -> None:
    """Counters of a fast-path run (one tier, no versions: every miss of a key after its first is a
    capacity miss)."""
    n = workload.n_requests
    hits = int(np.count_nonzero(mask))
    keys = int(workload.key.max(initial=-1)) + 1  # keys are dense ids: every id in range is used
    stats.requests, stats.gpu_hits, stats.misses = n, hits, n - hits
    stats.misses_compulsory, stats.misses_capacity = keys, n - hits - keys
    stats.static_tokens = int(workload.n_static.sum())
    stats.hit_tokens = int(workload.n_static[mask].sum())
    stats.gpu_evictions = int(max(0, (n - hits) - capacity))
