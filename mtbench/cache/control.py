"""The cache control plane: every tier decision of the GPU + host hierarchy, on keys and sizes only.

ONE implementation serves the simulator (`mtbench.sim.simulator`, null data plane, cost-model clock)
and the real tiers (`mtbench.cache.manager`, whose data plane moves pool pages and host extents).
Both drive it the same way, batch by batch:

    plan = plane.plan(requests, load_budget)   # classify, pin, admit, promote, demote, evict
    ...                                        # (pipelined: the next batch may be planned here)
    plane.release(plan)                        # write to the host, unpin, drop stale, count

or, one request at a time with nothing in flight (the simulator at batch size 1, fleet replicas,
streaming), `plane.serve(request)`: the same decisions by the same code, without a batch's objects.

State: two replacement policies (`gpu`, `host`; host is None for a single tier) over keys
`(user_id, static_version)` sized by `EntrySizer.size_of` / `host_size_of` (page-rounded bytes of the
GPU pool's / the host tier's KV dtype; copies move `moved_bytes`, the host's); per resident key its
token count in each tier (`gpu_tokens`, `host_tokens`); the host extents of each host key
(`host_offsets`, placed by `ExtentAllocator` when a `HostGeometry` is given, so host fragmentation is
part of the host capacity check); the cached versions of each user; stale keys whose drop waits for
their pins (`doomed`). Invariants: `set(gpu_tokens) == set(gpu)`, `set(host_tokens) == set(host)`;
a pinned key is never evicted; the clock `now` (trace seconds, the request's `ts`) never goes back.

Per request of a batch (first request of a key; repeats of a key in the batch reuse its decision):
1. pins: every key of the batch is pinned in both tiers until `release`; the batch's keys are
   hinted to the policies (`hint_upcoming`) and OPT gets each request's next use (`set_next_use`).
2. stale: other versions of the user are dropped from both tiers (later, at `release`, while
   pinned); the request is STALE if it then misses.
3. lookup: GPU hit (PARTIAL_HIT when an append-variant entry is shorter than the request: the cached
   tokens are reused, the rest computed and the entry grows); else a host hit: loaded into a new GPU
   entry (promotion; exclusive tiers drop the host copy at `release`), or into scratch pages when the
   GPU tier has no unpinned room, or not at all when the batch's load budget is spent
   (HOST_RECOMPUTE: computed into a new GPU entry instead); else MISS: computed into a new GPU entry,
   or into scratch pages when the GPU tier refuses it and a host tier exists.
4. GPU evictions: a victim the host lacks (or holds shorter) is copied to the host first (demotion;
   with write-through this only happens for entries the host refused earlier).
5. `release`: entries the batch computed are copied to the host when the host lacks them: all of
   them with write-through, the scratch ones (refused by the GPU tier) with write-back, so a host
   tier with room never loses an entry.
Asynchrony never changes a decision: a host copy counts as on the host from the moment it is
decided (the data plane orders the copies), and transfer faults are the data plane's fallbacks.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

from mtbench.cache.extents import ExtentAllocator, HostGeometry
from mtbench.cache.policies import ReplacementPolicy, make_policy, policy_class
from mtbench.cache.policies.base import NEVER
from mtbench.cache.sizes import EntrySizer
from mtbench.errors import MtbenchError
from mtbench.units import format_bytes

Key = tuple[int, int]


class Outcome(IntEnum):
    """What a request got from the cache (`label` is the name records and reports use)."""

    GPU_HIT = 0
    HOST_HIT = 1
    MISS = 2
    STALE = 3
    HOST_RECOMPUTE = 4
    PARTIAL_HIT = 5

    @property
    def label(self) -> str:
        return self.name.lower()


OUTCOME_LABELS: tuple[str, ...] = tuple(outcome.label for outcome in Outcome)
READS_CACHE = frozenset({Outcome.GPU_HIT, Outcome.HOST_HIT, Outcome.PARTIAL_HIT})


class MissKind(IntEnum):
    """Why a MISS / STALE request missed: first request of its user (compulsory), first request of a
    new version of a known user (stale), or its key was requested in an earlier batch (capacity: an
    unlimited host tier would have served it)."""

    COMPULSORY = 0
    STALE = 1
    CAPACITY = 2


# Plain module names for the members: the per-request path reads them millions of times.
GPU_HIT, HOST_HIT, MISS, STALE, HOST_RECOMPUTE, PARTIAL_HIT = Outcome
COMPULSORY, STALE_VERSION, CAPACITY = MissKind
_KINDS = len(MissKind)
_ZERO_TALLY = array("q", bytes(8 * len(Outcome) * _KINDS))
"""An empty tally: requests by outcome and miss kind, cell `_tally_cell(outcome, kind)` (a C array when compiled,
in the control plane too: a count is a C increment)."""


def _tally_cell(outcome: int, kind: int) -> int:
    return outcome * _KINDS + kind


@dataclass(frozen=True)
class TierSettings:
    """How the two tiers behave, besides policy and capacities.

    write_back: copy an entry to the host when the GPU evicts it (False: write-through, copy every
    new entry at once); inclusive: a promoted entry keeps its host copy; lookahead: batches planned
    before the oldest planned one is released (the replay pipelines one batch; with batch size 1 it
    is the number of queued requests in flight); append: prefixes may grow (partial hits);
    batch_size: requests per planned batch (the simulator's; the replay batches by itself);
    load_budget: bytes of host hits a batch may load (None: all; the rest are recomputed).
    """

    write_back: bool = True
    inclusive: bool = True
    lookahead: int = 0
    append: bool = False
    batch_size: int = 1
    load_budget: int | None = None

    def __post_init__(self) -> None:
        if self.lookahead < 0:
            raise MtbenchError(f"lookahead must be >= 0, got {self.lookahead}")
        if self.batch_size < 1:
            raise MtbenchError(f"batch size must be >= 1, got {self.batch_size}")


class ReloadCosts(Protocol):
    """What bringing an entry back costs (`mtbench.sim.costmodel.CostModel` is one)."""

    def h2d_ms(self, n_bytes: float) -> Any: ...

    def recompute_ms(self, n_static: float) -> Any: ...


@dataclass(frozen=True)
class ControlConfig:
    """Everything that decides how the tiers behave (picklable: sweeps send it to worker processes).

    host_geometry: the host arena's extent geometry; when given, a host admission also needs a free
    extent (the real tiers always give it; the simulator gives the replay's default layout).
    costs: reload costs for the cost-aware policies (mtserve, gdsf); None leaves them cost-blind.
    """

    policy: str
    gpu_capacity: int
    host_capacity: int = 0
    sizer: EntrySizer = EntrySizer(1, 1, unit=True)
    settings: TierSettings = TierSettings()
    host_geometry: HostGeometry | None = None
    costs: ReloadCosts | None = None


class Request(NamedTuple):
    """What the control plane needs of one request (a tuple: the simulator builds millions)."""

    key: Key
    n_static: int
    ts: float
    next_use: int = NEVER  # index of the next request for the key (OPT only)


@dataclass
class CacheStats:
    """Counters over the released requests (tiers) plus the data plane's own (transfers)."""

    requests: int = 0
    gpu_hits: int = 0
    host_hits: int = 0
    partial_hits: int = 0
    host_recomputes: int = 0
    misses: int = 0
    stale: int = 0
    misses_compulsory: int = 0
    misses_stale: int = 0
    misses_capacity: int = 0
    static_tokens: int = 0
    hit_tokens: int = 0
    bytes_h2d: int = 0
    bytes_d2h: int = 0
    gpu_evictions: int = 0
    host_evictions: int = 0
    gpu_admission_failures: int = 0
    host_admission_failures: int = 0
    transfer_fallbacks: int = 0
    writeback_failures: int = 0

    def minus(self, earlier: "CacheStats") -> "CacheStats":
        return CacheStats(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})

    def miss_columns(self) -> dict[str, float | int]:
        """The miss classification of a report row: counts, the cold-miss limit (best hit ratio any
        cache reaches on these requests) and the hit ratio an unlimited host tier would add."""
        n = max(self.requests, 1)
        return {"misses_compulsory": self.misses_compulsory, "misses_stale": self.misses_stale,
                "misses_capacity": self.misses_capacity,
                "cold_miss_limit": 1.0 - (self.misses_compulsory + self.misses_stale) / n,
                "unlimited_host_gain": self.misses_capacity / n}


@dataclass
class StoreDecision:
    """A request row whose forward computes tokens [first, n_tokens) of its entry into pages: the
    entry's GPU pages, or scratch pages (`scratch`) when no tier keeps it on the GPU."""

    key: Key
    first: int
    n_tokens: int
    scratch: bool


@dataclass
class BatchDecisions:
    """The control plane's decisions for one batch; row i is request i."""

    serial: int
    requests: list[Request]
    outcomes: list[Outcome]
    cached: list[int]  # tokens each request reads from its pages (0 unless READS_CACHE)
    kinds: list[MissKind | None]
    stores: dict[int, StoreDecision] = field(default_factory=dict)
    promoted: list[Key] = field(default_factory=list)  # host hits moved to the GPU (exclusive drops them)
    loaded: set[Key] = field(default_factory=set)  # host hits loaded (into GPU entries or scratch pages)

    @property
    def labels(self) -> list[str]:
        return [outcome.label for outcome in self.outcomes]


class DataPlane(Protocol):
    """What carries out the decisions (the real tiers' pages and extents); called in decision order.

    GPU entries: `gpu_admit` (new pages for key), `gpu_grow` (more pages, same key), `gpu_evict`
    (after any `host_store` of it). `scratch` gives pages outside the GPU tier for one batch. `load`
    copies a host entry into the key's GPU pages or scratch pages. `host_store` copies the key's GPU
    (or the batch's scratch) pages into new host extents at `offsets`; `host_evict` drops a copy.
    """

    def gpu_admit(self, key: Key, n_tokens: int) -> None: ...

    def gpu_grow(self, key: Key, n_tokens: int) -> None: ...

    def gpu_evict(self, key: Key) -> None: ...

    def scratch(self, key: Key, n_tokens: int) -> None: ...

    def load(self, key: Key, n_tokens: int, scratch: bool) -> None: ...

    def host_store(self, key: Key, n_tokens: int, offsets: Sequence[int], scratch: bool) -> None: ...

    def host_evict(self, key: Key) -> None: ...


class NullDataPlane:
    """The simulator's data plane: nothing to move."""

    def gpu_admit(self, key: Key, n_tokens: int) -> None:
        pass

    def gpu_grow(self, key: Key, n_tokens: int) -> None:
        pass

    def gpu_evict(self, key: Key) -> None:
        pass

    def scratch(self, key: Key, n_tokens: int) -> None:
        pass

    def load(self, key: Key, n_tokens: int, scratch: bool) -> None:
        pass

    def host_store(self, key: Key, n_tokens: int, offsets: Sequence[int], scratch: bool) -> None:
        pass

    def host_evict(self, key: Key) -> None:
        pass


def require_fits(what: str, capacity: int, largest: int, tokens: int) -> None:
    """The one capacity check: a tier must hold the largest entry (MtbenchError otherwise)."""
    if capacity < largest:
        raise MtbenchError(f"{what} of {format_bytes(capacity)} cannot hold one entry: the largest request needs "
                           f"{format_bytes(largest)} ({tokens} static tokens)")


def policy_options(name: str, reload: str, costs: ReloadCosts | None, sizer: EntrySizer,
                   host_tier: bool = False, gpu_policy: ReplacementPolicy | None = None) -> dict[str, Any]:
    """Constructor options of policy `name` for one tier: what bringing an entry back costs there.

    reload: "h2d" (a GPU tier backed by a host tier) or "recompute" (a host tier, or a lone GPU tier);
    host_tier: the tier's sizes are host sizes (`EntrySizer.host_size_of`); gpu_policy: the GPU tier's
    policy when this is the host tier's (both are accessed and hinted for every request, in that order,
    so mtserve's host tier reads the request statistics the GPU tier's learns).
    Keys are (user_id, static_version) tuples; mtserve reads the user and version from them.
    """
    options: dict[str, Any] = {}
    if name == "mtserve" and gpu_policy is not None:
        options["traffic"] = gpu_policy.traffic
    if name not in ("mtserve", "gdsf") or costs is None or sizer.unit:
        return options
    if reload == "h2d":  # a GPU entry of `size` bytes comes back as its host copy's bytes (fp8: fewer)
        def reload_ms(size: int) -> float:
            return float(costs.h2d_ms(size / sizer.bytes_per_token * sizer.host_token_bytes))
    else:
        per_token = sizer.host_token_bytes if host_tier else sizer.bytes_per_token

        def reload_ms(size: int) -> float:
            return float(costs.recompute_ms(size / per_token))
    options["reload_ms" if name == "mtserve" else "cost_of"] = reload_ms
    return options


class ControlPlane:
    """One replica's GPU + host tiers (see the module docstring); no global state."""

    def __init__(self, config: ControlConfig, data: DataPlane | None = None) -> None:
        name = policy_class(config.policy).name
        self.config = config
        self.settings = config.settings
        self.sizer = sizer = config.sizer
        self.data: DataPlane = data if data is not None else NullDataPlane()
        two_tiers = config.host_capacity > 0
        self.gpu: ReplacementPolicy = make_policy(
            name, config.gpu_capacity, **policy_options(name, "h2d" if two_tiers else "recompute", config.costs, sizer))
        self.host: ReplacementPolicy | None = make_policy(
            name, config.host_capacity, **policy_options(name, "recompute", config.costs, sizer, host_tier=True,
                                                         gpu_policy=self.gpu)) if two_tiers else None
        self.extents: ExtentAllocator | None = (config.host_geometry.allocator()
                                                if two_tiers and config.host_geometry is not None else None)
        self._tiers = (self.gpu,) if self.host is None else (self.gpu, self.host)
        self._oracle = self.gpu.uses_next_use
        self._hints = type(self.gpu).hint_upcoming is not ReplacementPolicy.hint_upcoming
        self.gpu_tokens: dict[Key, int] = {}
        self.host_tokens: dict[Key, int] = {}
        self.host_offsets: dict[Key, Sequence[int]] = {}
        self._stats = CacheStats()
        # requests by outcome and miss kind, and their tokens, not yet added to `_stats` (see `stats`)
        self._tally = _ZERO_TALLY[:]
        self._static_tokens = self._hit_tokens = 0  # static tokens, tokens read from the cache
        self.now = float("-inf")
        self._versions: dict[Hashable, set[int]] = {}
        self._doomed: set[Key] = set()
        self._in_flight: dict[Hashable, dict[int, int]] = {}  # user -> version -> requests planned, not released
        self._next_use: dict[Key, int] = {}
        self._first_batch: dict[Key, int] = {}
        self._user_first_key: dict[Hashable, Key] = {}
        self._serial = 0
        self._single = BatchDecisions(0, [], [MISS], [0], [None])  # `serve`'s plan, reused (no request list)
        self._budget = self.settings.load_budget
        self._plain = not self._oracle and self._budget is None  # `serve` skips `_announce`
        self._deferred: Key | None = None  # `serve`'s key until it takes its pins (`_take_deferred`)

    # ------------------------------------------------------------------ queries
    @property
    def stats(self) -> CacheStats:
        """The counters of every released request (and the data plane's own, which it adds here)."""
        tally, stats = list(self._tally), self._stats
        rows = [tally[cell:cell + _KINDS] for cell in range(0, len(tally), _KINDS)]  # one per outcome
        gpu_hits, host_hits, misses, stale, host_recomputes, partial_hits = (sum(row) for row in rows)
        stats.gpu_hits += gpu_hits
        stats.host_hits += host_hits
        stats.partial_hits += partial_hits
        stats.host_recomputes += host_recomputes
        stats.misses += misses
        stats.stale += stale
        stats.requests += gpu_hits + host_hits + misses + stale + host_recomputes + partial_hits
        missed = [m + s for m, s in zip(rows[MISS], rows[STALE])]
        stats.misses_compulsory += missed[COMPULSORY]
        stats.misses_stale += missed[STALE_VERSION]
        stats.misses_capacity += missed[CAPACITY]
        stats.static_tokens += self._static_tokens
        stats.hit_tokens += self._hit_tokens
        self._tally = _ZERO_TALLY[:]
        self._static_tokens = self._hit_tokens = 0
        return stats

    def gpu_keys(self) -> set[Key]:
        return set(self.gpu_tokens)

    def host_keys(self) -> set[Key]:
        return set(self.host_tokens)

    @property
    def gpu_used_bytes(self) -> int:
        return self.gpu.used

    @property
    def host_used_bytes(self) -> int:
        return self.host.used if self.host is not None else 0

    def host_fragmentation(self) -> float:
        return self.extents.fragmentation() if self.extents is not None else 0.0

    def in_gpu(self, key: Key) -> bool:
        return key in self.gpu_tokens

    def on_host(self, key: Key) -> bool:
        return key in self.host_tokens

    def is_pinned(self, key: Key) -> bool:
        return self.gpu.is_pinned(key)

    def serve(self, request: Request) -> tuple[Outcome, int]:
        """One request on its own, when no batch is in flight: exactly `plan([request])` + `release`, by the
        same code, without building a batch (the per-request API: the simulator at batch size 1, fleet
        replicas, streaming). Returns (outcome, tokens read from the cache).

        Its pins and in-flight mark wait for its first admission or eviction (`_take_deferred`): with
        nothing else in flight only those see them, and a GPU hit has none, so it pins nothing. Nor is
        its key hinted (`hint_upcoming`), which `plan` does for a batch so that the batch's later requests
        stay while earlier ones are decided: nothing is queued behind a request served alone, and its own
        key is looked up (`access`) before anything can be evicted, so the hint would tell no policy more
        than that lookup does."""
        key, n_static, ts, next_use = request
        outcome = self._serve(key, n_static, ts, next_use)
        return outcome, self._single.cached[0]

    def serve_each(self, keys: list[Key], n_static: list[int], ts: list[float], next_use: list[int],
                   outcomes: list[Outcome], cached: list[int]) -> None:
        """`serve` the requests given as columns (request i is `Request(keys[i], n_static[i], ts[i], next_use[i])`)
        in order, appending each one's outcome and tokens read (the simulator's loop: no tuple per request)."""
        single = self._single
        for i in range(len(keys)):
            outcomes.append(self._serve(keys[i], n_static[i], ts[i], next_use[i]))
            cached.append(single.cached[0])

    def _serve(self, key: Key, n_static: int, ts: float, next_use: int) -> Outcome:
        """`serve` of the request with these fields; returns its outcome, its tokens read are `_single.cached[0]`."""
        if self._in_flight:
            raise RuntimeError("ControlPlane.serve with batches in flight: use plan/release")
        plan = self._single
        plan.serial = self._serial = self._serial + 1
        self._deferred = key
        plan.cached[0] = 0
        now = self._tick(ts)
        outcome = self._decide(plan, 0, key, n_static, now, True if self._plain else self._announce(key, next_use))
        cached = plan.cached[0]
        self._tally[_tally_cell(outcome, plan.kinds[0])] += 1  # as `_count`
        self._static_tokens += n_static
        self._hit_tokens += cached
        if self._deferred is None:
            self._release_single(plan, key)
        else:
            self._deferred = None
        return outcome

    def _announce(self, key: Key, next_use: int) -> bool:
        """What `plan` does for a batch before deciding it, for `serve`'s request, less the hint (see `serve`):
        OPT's next use and the load budget. Returns whether a host hit may be loaded."""
        if self._oracle:
            self._tell_next_use(key, next_use)
        if self._budget is None:
            return True
        loads = self._loads_within_budget([key], self._budget)
        return loads is None or key in loads

    def _take_deferred(self) -> None:
        """Pin `serve`'s request and mark it in flight, as `plan` does up front for a batch."""
        key, self._deferred = self._deferred, None
        for tier in self._tiers:
            tier.pin(key)
        self._in_flight[key[0]] = {key[1]: 1}

    def _release_single(self, plan: BatchDecisions, key: Key) -> None:
        """`release` of `serve`'s request once it took its pins (already counted)."""
        if plan.stores or plan.promoted:
            self._copy_to_host(plan)
        for tier in self._tiers:
            tier.unpin(key)
        del self._in_flight[key[0]]
        if self._doomed:
            self._drop_doomed()
        if plan.stores:
            plan.stores.clear()
        if plan.promoted:
            plan.promoted.clear()
        if plan.loaded:
            plan.loaded.clear()

    # ------------------------------------------------------------------ 1. plan
    def plan(self, requests: Sequence[Request], load_budget: int | None = None) -> BatchDecisions:
        """Decide a batch (see the module docstring); `load_budget` overrides the settings' budget."""
        budget = load_budget if load_budget is not None else self.settings.load_budget
        serial = self._serial = self._serial + 1
        n = len(requests)
        plan = BatchDecisions(serial, list(requests), [MISS] * n, [0] * n, [None] * n)
        if not n:
            return plan
        keys = [r.key for r in requests]
        tiers = self._tiers
        for tier in tiers:
            for key in keys:
                tier.pin(key)
        for user, version in keys:
            versions = self._in_flight.setdefault(user, {})
            versions[version] = versions.get(version, 0) + 1
        now = self._tick(requests[0].ts)
        if self._hints:
            for tier in tiers:
                tier.hint_upcoming(keys, now)
        loads = self._loads_within_budget(keys, budget)
        first_row: dict[Key, int] = {}
        for i, request in enumerate(requests):
            key = request.key
            now = self._tick(request.ts)
            if self._oracle:
                self._tell_next_use(key, request.next_use)
            row = first_row.get(key)
            if row is not None:
                self._repeat(plan, i, row, now)
                continue
            first_row[key] = i
            self._decide(plan, i, key, request.n_static, now, loads is None or key in loads)
        return plan

    def _tell_next_use(self, key: Key, next_use: int) -> None:
        self._next_use[key] = next_use
        for tier in self._tiers:
            tier.set_next_use(key, next_use)

    def _decide(self, plan: BatchDecisions, i: int, key: Key, n: int, now: float, load: bool) -> Outcome:
        """Row i, the first request of its key (of n static tokens) in the batch: its miss kind, stale drops,
        then the lookup: a GPU hit here, else `_gpu_entry_short` or `_not_on_gpu`."""
        user, version = key
        serial = plan.serial
        # miss kind: the key was first requested in an earlier batch (capacity), else it is the user's first
        # key (compulsory) or a new version of the user (stale)
        if self._first_batch.setdefault(key, serial) != serial:
            plan.kinds[i] = CAPACITY
        else:
            plan.kinds[i] = COMPULSORY if self._user_first_key.setdefault(user, key) == key else STALE_VERSION
        cached = self._versions.get(user)
        flying = self._in_flight.get(user) if self._in_flight else None
        stale = False
        if (cached and (len(cached) > 1 or version not in cached)) or (flying and len(flying) > 1):
            stale = self._drop_other_versions(key)  # the user has other versions (in flight: besides this one)
        if self.gpu.access(key, now):
            host = self.host
            if host is not None:
                host.access(key, now)
            tokens = self.gpu_tokens[key]
            if n <= tokens:
                plan.cached[i] = n
                plan.outcomes[i] = GPU_HIT
                return GPU_HIT
            outcome = self._gpu_entry_short(plan, i, key, tokens, n, now)
        else:
            outcome = self._not_on_gpu(plan, i, key, n, now, load)
        if outcome is MISS and stale:
            outcome = STALE
        plan.outcomes[i] = outcome
        return outcome

    def _tick(self, ts: float) -> float:
        if ts > self.now:
            self.now = float(ts)
        return self.now

    def _loads_within_budget(self, keys: list[Key], budget: int | None) -> set[Key] | None:
        """Host entries of the batch worth loading: all without a budget; otherwise the ones asked for
        most often in the batch (a recompute recomputes every request of the key), in order of first
        request, while their bytes fit the budget. None = no limit."""
        if budget is None or self.host is None:
            return None
        counts: dict[Key, int] = {}
        for key in keys:
            if key not in self.gpu_tokens and key in self.host_tokens:
                counts[key] = counts.get(key, 0) + 1
        chosen: set[Key] = set()
        for key in sorted(counts, key=lambda k: -counts[k]):
            moved = self.sizer.moved_bytes(self.host_tokens[key])
            if moved <= budget:
                chosen.add(key)
                budget -= moved
        return chosen

    def _repeat(self, plan: BatchDecisions, i: int, row: int, now: float) -> None:
        """A later request of a key the batch already decided: it reads what the first one read (the
        forward computes the entry once) and computes the rest without storing it."""
        request = plan.requests[i]
        for tier in self._tiers:
            tier.access(request.key, now)
        if plan.outcomes[row] in READS_CACHE:
            cached = plan.cached[i] = min(plan.cached[row], request.n_static)
            if cached < request.n_static:
                plan.outcomes[i] = PARTIAL_HIT
            else:
                plan.outcomes[i] = HOST_HIT if request.key in plan.loaded else GPU_HIT
        else:
            plan.outcomes[i] = MISS
            plan.kinds[i] = plan.kinds[row]

    def _gpu_entry_short(self, plan: BatchDecisions, i: int, key: Key, cached: int, n: int, now: float) -> Outcome:
        """A GPU entry of `cached` tokens, shorter than the request's n (append variant)."""
        plan.cached[i] = cached
        if self._deferred is not None:
            self._take_deferred()
        if self._grow(plan, i, key, cached, n, now):
            return PARTIAL_HIT
        plan.cached[i] = 0
        self._compute(plan, i, key, 0, n, now, keep_scratch=self.host is not None)
        return MISS

    def _not_on_gpu(self, plan: BatchDecisions, i: int, key: Key, n: int, now: float, load: bool) -> Outcome:
        """A host hit (loaded unless `load` is False) or a miss."""
        if self._deferred is not None:
            self._take_deferred()
        host = self.host
        if host is not None and host.access(key, now):
            host_tokens = self.host_tokens[key]
            if not load:
                self._compute(plan, i, key, 0, n, now, keep_scratch=False)
                return HOST_RECOMPUTE
            self._stats.bytes_h2d += self.sizer.moved_bytes(host_tokens)
            tokens = max(host_tokens, n)  # a promoted entry gets its grown size at once (append variant)
            promoted = self._admit_gpu(key, tokens, now)
            if promoted:
                self.data.gpu_admit(key, tokens)
                plan.promoted.append(key)
            else:
                self.data.scratch(key, tokens)
            self.data.load(key, host_tokens, scratch=not promoted)
            plan.loaded.add(key)
            plan.cached[i] = min(host_tokens, n)
            if n <= host_tokens:
                return HOST_HIT
            plan.stores[i] = StoreDecision(key, host_tokens, n, scratch=not promoted)
            return PARTIAL_HIT
        self._compute(plan, i, key, 0, n, now, keep_scratch=host is not None)
        return MISS

    def _compute(self, plan: BatchDecisions, i: int, key: Key, first: int, n: int, now: float, keep_scratch: bool) -> None:
        """Room for an entry the batch computes: a new GPU entry, else scratch pages whose copy goes
        to the host at `release` (`keep_scratch`), else nothing (the forward computes and drops it)."""
        if key in self._doomed:
            return
        if self._admit_gpu(key, n, now):
            self.data.gpu_admit(key, n)
            plan.stores[i] = StoreDecision(key, first, n, scratch=False)
        elif keep_scratch:
            self.data.scratch(key, n)
            plan.stores[i] = StoreDecision(key, first, n, scratch=True)

    def _grow(self, plan: BatchDecisions, i: int, key: Key, cached: int, n: int, now: float) -> bool:
        """Append variant: the GPU entry of `key` (cached tokens) grows to n tokens and the request stores
        the new ones. Growth appends pages and never moves the entry's pages or its first `cached` tokens,
        so an earlier batch in flight that reads (or writes) them is unaffected, as long as the entry stays.
        The policy resizes by remove + admit: without room for the larger entry the entry keeps its old
        size (nothing stored). Only an admission rule can refuse the old size back (S3-FIFO's size rule):
        while an earlier batch in flight holds the entry it is then not resized at all; otherwise a
        refused entry leaves the GPU tier (demoted like any victim) and False tells the caller to
        recompute the request whole."""
        old_size, new_size = self.sizer.size_of(cached), self.sizer.size_of(n)
        if new_size != old_size:
            gpu = self.gpu
            if not gpu.readmits(old_size) and self._held_by_earlier_batch(plan, key):
                self.stats.gpu_admission_failures += 1
                return True
            gpu.remove(key)
            evicted = gpu.admit(key, new_size, now)
            if evicted is None:
                self.stats.gpu_admission_failures += 1
                evicted = gpu.admit(key, old_size, now)
                if evicted is None:
                    self._evicted_from_gpu([key], now)
                    return False
                self._evicted_from_gpu(evicted, now)
                return True
            self._evicted_from_gpu(evicted, now)
        self.gpu_tokens[key] = n
        self.data.gpu_grow(key, n)
        plan.stores[i] = StoreDecision(key, cached, n, scratch=False)
        return True

    def _held_by_earlier_batch(self, plan: BatchDecisions, key: Key) -> bool:
        """Whether a batch planned before `plan` and not released yet has a request of `key` (never for `serve`'s
        request: `serve` runs with nothing else in flight)."""
        if plan is self._single:
            return False
        in_this_batch = sum(1 for request in plan.requests if request.key == key)
        return self._in_flight[key[0]][key[1]] > in_this_batch

    def _admit_gpu(self, key: Key, n_tokens: int, now: float) -> bool:
        """Admit `key` to the GPU tier, demoting and evicting victims; False when it does not fit."""
        evicted = self.gpu.admit(key, self.sizer.size_of(n_tokens), now)
        if evicted is None:
            self._stats.gpu_admission_failures += 1
            return False
        self._evicted_from_gpu(evicted, now)
        self.gpu_tokens[key] = n_tokens
        self._note_version(key)
        return True

    def _evicted_from_gpu(self, evicted: list[Key], now: float) -> None:
        for victim in evicted:
            self._stats.gpu_evictions += 1
            tokens = self.gpu_tokens.pop(victim)
            if self.host is not None and self.host_tokens.get(victim, -1) < tokens:
                self._store_host(victim, tokens, now, scratch=False)
            self.data.gpu_evict(victim)
            self._forget_version(victim)

    def _store_host(self, key: Key, n_tokens: int, now: float, scratch: bool) -> bool:
        """Copy an entry to the host tier (a shorter copy there is replaced); False when it does not fit."""
        host = self.host
        if key in self.host_tokens:
            self._drop_host(key)
        if host.uses_next_use:
            host.set_next_use(key, self._next_use.get(key, NEVER))
        evicted = host.admit(key, self.sizer.host_size_of(n_tokens), now)
        if evicted is None:
            self._stats.host_admission_failures += 1
            return False
        for victim in evicted:
            self._stats.host_evictions += 1
            self._free_host(victim)
        offsets: Sequence[int] = ()  # no extents without a geometry (and no object per host entry)
        if self.extents is not None:
            placed = self.extents.place(self.config.host_geometry.lengths(n_tokens))
            if placed is None:  # fragmentation: the policy had room, the arena has no extent
                host.remove(key)
                self._stats.host_admission_failures += 1
                return False
            offsets = placed
        self.host_tokens[key] = n_tokens
        self.host_offsets[key] = offsets
        self._note_version(key)
        self._stats.bytes_d2h += self.sizer.moved_bytes(n_tokens)
        self.data.host_store(key, n_tokens, offsets, scratch)
        return True

    def _drop_host(self, key: Key) -> None:
        self.host.remove(key)
        self._free_host(key)

    def _free_host(self, key: Key) -> None:
        """Bookkeeping of a key that just left the host policy."""
        del self.host_tokens[key]
        offsets = self.host_offsets.pop(key)
        if self.extents is not None:
            self.extents.free_all(offsets)
        self.data.host_evict(key)
        self._forget_version(key)

    # ------------------------------------------------------------------ versions
    def _note_version(self, key: Key) -> None:
        versions = self._versions.get(key[0])
        if versions is None:
            self._versions[key[0]] = {key[1]}
        else:
            versions.add(key[1])

    def _forget_version(self, key: Key) -> None:
        if key not in self.gpu_tokens and key not in self.host_tokens:
            versions = self._versions.get(key[0])
            if versions is not None:
                versions.discard(key[1])
                if not versions:
                    del self._versions[key[0]]

    def _drop_other_versions(self, key: Key) -> bool:
        """Remove the user's other versions: cached ones now, those of batches in flight once released
        (they are then never written to the host). True if a cached one was still live (not already
        waiting for its drop)."""
        user, version = key
        cached = self._versions.get(user, ())
        flying = self._in_flight.get(user, {})
        stale = False
        for other in sorted(set(cached) | set(flying)):
            old = (user, other)
            if other == version or old in self._doomed:
                continue
            stale = stale or other in cached
            if other in flying:
                self._doomed.add(old)
            else:
                self._remove(old)
        return stale

    def _remove(self, key: Key) -> None:
        if key in self.gpu_tokens:
            self.gpu.remove(key)
            del self.gpu_tokens[key]
            self.data.gpu_evict(key)
            self._forget_version(key)
        if key in self.host_tokens:
            self._drop_host(key)

    # ------------------------------------------------------------------ 2. release
    def release(self, plan: BatchDecisions) -> None:
        """The batch's forward is issued: copy what the host lacks, drop exclusive copies, count,
        unpin, drop stale versions that were in flight."""
        self._copy_to_host(plan)
        self._count(plan)
        keys = [request.key for request in plan.requests]
        for tier in self._tiers:
            for key in keys:
                tier.unpin(key)
        in_flight = self._in_flight
        for user, version in keys:
            versions = in_flight[user]
            versions[version] -= 1
            if not versions[version]:
                del versions[version]
                if not versions:
                    del in_flight[user]
        if self._doomed:
            self._drop_doomed()

    def _copy_to_host(self, plan: BatchDecisions) -> None:
        """Host copies decided at release: entries the host lacks (write-through: all the batch computed;
        write-back: the scratch ones), and exclusive tiers drop the host copy of promoted entries."""
        if self.host is None:
            return
        now = self.now
        write_through = not self.settings.write_back
        for store in plan.stores.values():
            if ((store.scratch or write_through) and store.key not in self._doomed
                    and self.host_tokens.get(store.key, -1) < store.n_tokens):
                self._store_host(store.key, store.n_tokens, now, scratch=store.scratch)
        if not self.settings.inclusive:
            for key in plan.promoted:
                if key in self.host_tokens and key in self.gpu_tokens:
                    self._drop_host(key)

    def _drop_doomed(self) -> None:
        """Stale versions whose requests are all released leave the tiers."""
        for key in sorted(self._doomed):
            if key[1] not in self._in_flight.get(key[0], ()):
                self._doomed.discard(key)
                self._remove(key)

    def _count(self, plan: BatchDecisions) -> None:
        for request, outcome, cached, kind in zip(plan.requests, plan.outcomes, plan.cached, plan.kinds):
            self._tally[_tally_cell(outcome, kind or 0)] += 1  # a repeat of a hit has no miss kind: kind 0, never read
            self._static_tokens += request.n_static
            self._hit_tokens += cached  # 0 unless the request read the cache

    # ------------------------------------------------------------------ data-plane faults
    def forget_host(self, key: Key) -> None:
        """The data plane could not write the host copy of `key` (a store fault): drop it."""
        if key in self.host_tokens:
            self._drop_host(key)

    def check_invariants(self) -> None:
        assert set(self.gpu_tokens) == set(self.gpu), "GPU token counts differ from the GPU policy's keys"
        if self.host is not None:
            assert set(self.host_tokens) == set(self.host), "host token counts differ from the host policy's keys"


def run_batches(plane: ControlPlane, batches: Iterable[Sequence[Request]],
                on_release: Callable[[BatchDecisions], None] | None = None,
                budgets: Sequence[int | None] | None = None) -> None:
    """Drive `plane` over batches the way the replay does: plan up to `settings.lookahead` batches
    ahead of the oldest one, release in order; `budgets[b]` is batch b's load budget (default: the
    settings')."""
    depth = plane.settings.lookahead
    pending: list[BatchDecisions] = []
    for index, batch in enumerate(batches):
        pending.append(plane.plan(batch, budgets[index] if budgets is not None else None))
        if len(pending) > depth:
            _release(plane, pending.pop(0), on_release)
    for plan in pending:
        _release(plane, plan, on_release)


def _release(plane: ControlPlane, plan: BatchDecisions, on_release: Callable[[BatchDecisions], None] | None) -> None:
    plane.release(plan)
    if on_release is not None:
        on_release(plan)
