"""The fast two-tier cache simulator: trace requests through a GPU tier and a host tier, no tensors.

Per request for entry key k = (user_id, static_version) of `size` bytes (whole pages, `sizes.py`):
1. stale: if the user's previous entry has another version and is still cached (either tier), it is
   dropped from both tiers and the request counts as *stale* (a miss caused by the new version);
2. GPU hit: served from the GPU tier;
3. host hit: copied host->GPU (`bytes_h2d`), promoted into the GPU tier; exclusive tiers drop the
   host copy, inclusive ones keep it;
4. miss: the prefix is recomputed and inserted into the GPU tier; write-through also copies it to
   the host at once (`bytes_d2h`).
Whenever the GPU tier evicts an entry that the host does not hold, it is demoted: copied GPU->host
(`bytes_d2h`) and admitted by the host policy (write-back). The host tier's own evictions drop
entries for good. `host_capacity == 0` means a single tier.

Lookahead (`lookahead = W > 0`): the keys of the next W queued requests are pinned in both tiers
(never evicted, the real tiers do the same for requests in flight) and announced to the policies
through `hint_upcoming` (mtserve uses it). Append variant (`append=True`, causal histories): an
entry of m tokens serves a request of n static tokens partially: min(m, n) tokens are reused and
the rest recomputed, and the entry grows to n tokens; without it a length mismatch is stale.

The run's estimated time comes from `CostModel.total_ms`; `est_speedup` divides the time of
recomputing every prefix (no cache) by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtbench.cache.policies import ReplacementPolicy, make_policy, policy_class
from mtbench.errors import MtbenchError
from mtbench.sim.costmodel import CostModel
from mtbench.sim.oracle import dense_ids, next_use_indices
from mtbench.sim.sizes import EntrySizer

GPU_HIT, HOST_HIT, MISS, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class TierSettings:
    """How the two tiers behave (everything except policy and capacities)."""

    write_back: bool = True
    inclusive: bool = True
    lookahead: int = 0
    append: bool = False


@dataclass
class Workload:
    """A trace prepared for simulation (picklable; shared by every run of a sweep).

    Per request i: `key[i]` dense id of (user, version); `user[i]` dense user id; `version[i]`;
    `ts[i]` seconds; `n_static`, `n_rt`, `n_cand`; `size[i]` entry bytes (units in unit mode);
    `next_use[i]` index of the next request for the same key (NEVER if none); `prev_key[i]` key of
    the same user's previous request (-1 if none).
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
    unit: bool = False
    key_user: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    key_version: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

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
            next_use=next_use_indices(key), prev_key=prev_key.astype(np.int64), unit=sizer.unit,
            key_user=dense_ids(uniques[:, 0])[0] if len(uniques) else np.empty(0, dtype=np.int64),
            key_version=uniques[:, 1].astype(np.int64) if len(uniques) else np.empty(0, dtype=np.int64),
        )

    def check_static_lengths(self, append: bool) -> None:
        """Every request of one (user, version) must have the same n_static unless prefixes may grow."""
        if append or self.n_requests == 0:
            return
        order = np.argsort(self.key, kind="stable")
        same_key = self.key[order][1:] == self.key[order][:-1]
        differs = same_key & (self.n_static[order][1:] != self.n_static[order][:-1])
        if differs.any():
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
                   unit=True, key_user=np.arange(int(key.max(initial=-1)) + 1, dtype=np.int64),
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
class SimResult:
    """Counters of one run (one policy, one pair of capacities)."""

    policy: str
    gpu_capacity: int
    host_capacity: int
    requests: int = 0
    gpu_hits: int = 0
    host_hits: int = 0
    misses: int = 0
    stale: int = 0
    static_tokens: int = 0
    reused_tokens: int = 0
    recomputed_tokens: int = 0
    bytes_h2d: int = 0
    bytes_d2h: int = 0
    gpu_evictions: int = 0
    host_evictions: int = 0
    outcomes: np.ndarray | None = None

    def row(self, cost: CostModel, workload: Workload, recomputed: np.ndarray) -> dict:
        """The summary row (field names of shared_schemas' compare-policies rows)."""
        n = max(self.requests, 1)
        n_new = workload.n_rt + workload.n_cand
        total_ms, exposed_ms = cost.total_ms(n_new, recomputed, float(self.bytes_h2d))
        baseline_ms, _ = cost.total_ms(n_new, workload.n_static, 0.0)
        return {
            "policy": self.policy, "gpu_capacity": self.gpu_capacity, "host_capacity": self.host_capacity,
            "requests": self.requests, "gpu_hits": self.gpu_hits, "host_hits": self.host_hits,
            "misses": self.misses, "stale": self.stale,
            "hit_ratio": (self.gpu_hits + self.host_hits) / n, "gpu_hit_ratio": self.gpu_hits / n,
            "token_hit_ratio": self.reused_tokens / max(self.static_tokens, 1),
            "bytes_h2d": self.bytes_h2d, "bytes_d2h": self.bytes_d2h,
            "gpu_evictions": self.gpu_evictions, "host_evictions": self.host_evictions,
            "est_ms_per_request": total_ms / n, "est_transfer_exposed_ms": exposed_ms / n,
            "est_speedup": baseline_ms / total_ms if total_ms > 0 else float("nan"),
        }


def build_policy(name: str, capacity: int, workload: Workload, cost: CostModel | None, reload: str,
                 tokens_per_byte: float) -> ReplacementPolicy:
    """A policy for one tier; cost-aware policies get what bringing an entry back costs in this tier.

    reload: "recompute" (host tier, or a GPU tier whose evictions are lost) or "h2d" (a GPU tier backed
    by a host tier). `tokens_per_byte` converts entry sizes back to tokens for the recompute cost.
    """
    options: dict = {}
    if name in ("mtserve", "gdsf") and cost is not None and not workload.unit:
        if reload == "h2d":
            def reload_ms(size: int) -> float:
                return float(cost.h2d_ms(size))
        else:
            def reload_ms(size: int) -> float:
                return float(cost.recompute_ms(size * tokens_per_byte))
        options["reload_ms" if name == "mtserve" else "cost_of"] = reload_ms
    if name == "mtserve":
        key_user, key_version = workload.key_user, workload.key_version
        options["user_of"] = key_user.__getitem__
        options["version_of"] = key_version.__getitem__
    return make_policy(name, capacity, **options)


def simulate(workload: Workload, policy: str, gpu_capacity: int, host_capacity: int = 0,
             settings: TierSettings = TierSettings(), cost: CostModel | None = None,
             tokens_per_byte: float = 0.0, keep_outcomes: bool = False) -> tuple[SimResult, np.ndarray]:
    """Run one policy at one pair of capacities; returns (counters, recomputed static tokens per request)."""
    policy_class(policy)
    workload.check_static_lengths(settings.append)
    result = SimResult(policy=policy, gpu_capacity=int(gpu_capacity), host_capacity=int(host_capacity))
    fast = (host_capacity == 0 and workload.unit and settings.lookahead == 0 and not settings.append
            and not workload.has_versions)
    mask = policy_class(policy).unit_hit_mask(workload.key.tolist(), int(gpu_capacity)) if fast else None
    if mask is not None:
        outcomes = np.where(mask, GPU_HIT, MISS).astype(np.int8)
        recomputed = np.where(mask, 0, workload.n_static)
        _count(result, workload, outcomes, recomputed)
        result.gpu_evictions = int(max(0, np.count_nonzero(~mask) - gpu_capacity))
        result.outcomes = outcomes if keep_outcomes else None
        return result, recomputed
    return _TwoTierRun(workload, policy, int(gpu_capacity), int(host_capacity), settings, cost,
                       tokens_per_byte).run(result, keep_outcomes)


def _count(result: SimResult, workload: Workload, outcomes: np.ndarray, recomputed: np.ndarray) -> None:
    counts = np.bincount(outcomes, minlength=4)
    result.requests = workload.n_requests
    result.gpu_hits, result.host_hits, result.misses, result.stale = (int(c) for c in counts[:4])
    result.static_tokens = int(workload.n_static.sum())
    result.recomputed_tokens = int(recomputed.sum())
    result.reused_tokens = result.static_tokens - result.recomputed_tokens


class _TwoTierRun:
    """State of one simulation run: the two policies plus per-key sizes/tokens (see module doc)."""

    def __init__(self, workload: Workload, policy: str, gpu_capacity: int, host_capacity: int,
                 settings: TierSettings, cost: CostModel | None, tokens_per_byte: float) -> None:
        self.w = workload
        self.settings = settings
        self.gpu = build_policy(policy, gpu_capacity, workload, cost, "h2d" if host_capacity else "recompute",
                                tokens_per_byte)
        self.host = build_policy(policy, host_capacity, workload, cost, "recompute", tokens_per_byte) if host_capacity else None
        n_keys = int(workload.key.max(initial=-1)) + 1
        self.key_size = [0] * n_keys
        self.key_tokens = [0] * n_keys
        self.key_next = [0] * n_keys
        self.d2h = self.h2d = self.gpu_evictions = self.host_evictions = 0

    def run(self, result: SimResult, keep_outcomes: bool) -> tuple[SimResult, np.ndarray]:
        w, gpu, host, settings = self.w, self.gpu, self.host, self.settings
        keys, ts, n_static, sizes = w.key.tolist(), w.ts.tolist(), w.n_static.tolist(), w.size.tolist()
        next_use, prev_key = w.next_use.tolist(), w.prev_key.tolist()
        n = len(keys)
        outcomes = np.empty(n, dtype=np.int8)
        recomputed = np.zeros(n, dtype=np.int64)
        oracle = gpu.uses_next_use
        lookahead = settings.lookahead
        tiers = (gpu,) if host is None else (gpu, host)
        hints = lookahead > 0 and type(gpu).hint_upcoming is not ReplacementPolicy.hint_upcoming
        for j in range(min(lookahead, n)):
            for tier in tiers:
                tier.pin(keys[j])
        for i in range(n):
            k, t = keys[i], ts[i]
            if lookahead:
                if i + lookahead < n:
                    for tier in tiers:
                        tier.pin(keys[i + lookahead])
                if hints:
                    upcoming = keys[i + 1:i + 1 + lookahead]
                    for tier in tiers:
                        tier.hint_upcoming(upcoming, t)
            self.key_next[k] = next_use[i]
            if oracle:
                for tier in tiers:
                    tier.set_next_use(k, next_use[i])
            stale = False
            old = prev_key[i]
            if old >= 0 and old != k and (old in gpu or (host is not None and old in host)):
                gpu.remove(old)
                if host is not None:
                    host.remove(old)
                stale = True
            outcome, redo = self._serve(k, n_static[i], sizes[i], t)
            if stale and outcome == MISS:
                outcome = STALE
            outcomes[i] = outcome
            recomputed[i] = redo
            if lookahead:
                for tier in tiers:
                    tier.unpin(k)
        _count(result, w, outcomes, recomputed)
        result.bytes_h2d, result.bytes_d2h = self.h2d, self.d2h
        result.gpu_evictions, result.host_evictions = self.gpu_evictions, self.host_evictions
        result.outcomes = outcomes if keep_outcomes else None
        return result, recomputed

    def _serve(self, k: int, n_static: int, size: int, t: float) -> tuple[int, int]:
        """Serve one request; returns (outcome, static tokens recomputed)."""
        gpu, host = self.gpu, self.host
        if gpu.access(k, t):
            if host is not None:
                host.access(k, t)
            return GPU_HIT, self._reuse(gpu, k, n_static, size, t)
        if host is not None and host.access(k, t):
            self.h2d += self.key_size[k]
            promoted = self._admit_gpu(k, self.key_size[k], t)
            if promoted and not self.settings.inclusive:
                host.remove(k)
            return HOST_HIT, self._reuse(gpu if promoted else host, k, n_static, size, t)
        self.key_size[k], self.key_tokens[k] = size, n_static
        self._admit_gpu(k, size, t)
        if host is not None and not self.settings.write_back and k not in host:
            self._admit_host(k, size, t)
        return MISS, n_static

    def _reuse(self, tier: ReplacementPolicy, k: int, n_static: int, size: int, t: float) -> int:
        """Static tokens recomputed on a hit; the append variant grows the entry to the request's prefix."""
        cached = self.key_tokens[k]
        if n_static <= cached:  # check_static_lengths made them equal unless the variant is append
            return 0
        old_size = self.key_size[k]
        tier.remove(k)
        if tier.admit(k, size, t) is None:
            tier.admit(k, old_size, t)
        else:
            self.key_size[k], self.key_tokens[k] = size, n_static
        return n_static - cached

    def _admit_gpu(self, k: int, size: int, t: float) -> bool:
        evicted = self.gpu.admit(k, size, t)
        if evicted is None:
            return False
        self.gpu_evictions += len(evicted)
        host = self.host
        if host is not None:
            for victim in evicted:
                if victim not in host:
                    if host.uses_next_use:
                        host.set_next_use(victim, self.key_next[victim])
                    self._admit_host(victim, self.key_size[victim], t)
        return True

    def _admit_host(self, k: int, size: int, t: float) -> None:
        evicted = self.host.admit(k, size, t)
        if evicted is not None:
            self.d2h += size
            self.host_evictions += len(evicted)
