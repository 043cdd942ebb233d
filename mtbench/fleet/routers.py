"""Request routers: which replica of a fleet serves each request (pure logic, no cache, no tensors).

The same classes route the fleet simulation (`mtbench fleet`) and the real multi-GPU replay
(`mtbench replay --router`, `mtbench.fleet.distributed`), so both see the same assignment.

Two kinds:
- stateless routers (`assign(user_ids) -> replica per request`): round-robin, random (seeded),
  user-hash and consistent hashing with bounded loads. Their assignment depends on the request order and
  user ids only, so it is computed for a whole trace at once (numpy) and every replica's sub-trace can be
  simulated on its own;
- the residency- and load-aware router (`route(user, key, view)`), which needs the fleet's live state:
  whether a replica holds the user's entry and how much work is queued there (`FleetView`).

User ids are the trace's raw `user_id` (never dense ids), hashed with splitmix64, so a user lands on the
same replica whatever trace or process computes the assignment (no Python `hash` randomisation).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import ClassVar, Protocol

import numpy as np

from mtbench.errors import MtbenchError

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of every value (uint64 array): a fast, well-mixed, portable integer hash."""
    z = np.asarray(values, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) & _MASK64


class FleetView(Protocol):
    """What a stateful router may ask about the fleet at the current request's arrival time."""

    def holds(self, replica: int, key: Hashable) -> bool:
        """Whether `replica` holds entry `key` in one of its tiers."""

    def backlog_ms(self, replica: int) -> float:
        """Work queued at `replica` (ms of service not yet done) when the current request arrives."""

    def backlogs_ms(self) -> list[float]:
        """`backlog_ms` of every replica, in replica order."""


class Router(ABC):
    """Chooses a replica in [0, n_replicas) for every request."""

    name: ClassVar[str] = "base"
    stateful: ClassVar[bool] = False
    """True when the choice needs the fleet's live state (`route`); False when `assign` works alone."""

    def __init__(self, n_replicas: int, seed: int = 0) -> None:
        if n_replicas < 1:
            raise MtbenchError(f"router {self.name}: the fleet needs at least 1 replica, got {n_replicas}")
        self.n_replicas = int(n_replicas)
        self.seed = int(seed)

    @abstractmethod
    def assign(self, user_ids: np.ndarray) -> np.ndarray:
        """Replica of each request (int64 array) of a trace whose requests have `user_ids`, in order."""

    def route(self, user: int, key: Hashable, view: FleetView) -> int:
        """Replica of one request; stateless routers must be used through `assign`."""
        raise TypeError(f"router {self.name} assigns whole traces (assign), not single requests")


class RoundRobinRouter(Router):
    """Request i goes to replica i mod n: perfectly balanced counts, a user's requests scatter."""

    name = "round-robin"

    def assign(self, user_ids: np.ndarray) -> np.ndarray:
        return np.arange(len(user_ids), dtype=np.int64) % self.n_replicas


class RandomRouter(Router):
    """Every request to a uniformly random replica (numpy PCG64 seeded with `seed`)."""

    name = "random"

    def assign(self, user_ids: np.ndarray) -> np.ndarray:
        return np.random.default_rng(self.seed).integers(0, self.n_replicas, size=len(user_ids), dtype=np.int64)


class UserHashRouter(Router):
    """Sticky: replica = splitmix64(user_id) mod n, so a user's entry stays on one replica."""

    name = "user-hash"

    def assign(self, user_ids: np.ndarray) -> np.ndarray:
        return (splitmix64(user_ids) % np.uint64(self.n_replicas)).astype(np.int64)


class ConsistentHashRouter(Router):
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018), over users.

    Ring: `virtual_nodes` points per replica at splitmix64(replica * virtual_nodes + v + seed * 2^32),
    sorted. Users are placed in the order of their first request: a user goes to the first replica
    clockwise from splitmix64(user_id) whose user count is below the bound
    `ceil(balance * users / n_replicas)`, and stays there (sticky).
    Invariant: no replica holds more than the bound's users; a user's requests all go to one replica.
    """

    name = "consistent-hash"

    def __init__(self, n_replicas: int, seed: int = 0, balance: float = 1.25, virtual_nodes: int = 64) -> None:
        super().__init__(n_replicas, seed)
        if not balance >= 1.0:
            raise MtbenchError(f"router {self.name}: the load bound factor must be >= 1, got {balance}")
        self.balance = float(balance)
        points = np.arange(n_replicas * virtual_nodes, dtype=np.int64) + (self.seed << 32)
        positions = splitmix64(points)
        order = np.argsort(positions, kind="stable")
        self._ring_positions = positions[order]
        self._ring_replicas = (order // virtual_nodes).astype(np.int64)

    def bound(self, n_users: int) -> int:
        """Most users one replica may hold."""
        return max(1, math.ceil(self.balance * n_users / self.n_replicas))

    def assign(self, user_ids: np.ndarray) -> np.ndarray:
        user_ids = np.asarray(user_ids, dtype=np.int64)
        users, first, inverse = np.unique(user_ids, return_index=True, return_inverse=True)
        arrival_order = np.argsort(first, kind="stable")
        starts = np.searchsorted(self._ring_positions, splitmix64(users[arrival_order]))
        cap = self.bound(len(users))
        ring = self._ring_replicas.tolist()
        size = len(ring)
        counts = [0] * self.n_replicas
        replica_of_user = np.empty(len(users), dtype=np.int64)
        for user_index, start in zip(arrival_order.tolist(), starts.tolist()):
            slot = start % size
            while counts[ring[slot]] >= cap:
                slot = (slot + 1) % size
            counts[ring[slot]] += 1
            replica_of_user[user_index] = ring[slot]
        return replica_of_user[inverse.reshape(-1)]


class ResidencyRouter(Router):
    """Residency- and load-aware: to the replica holding the user's entry unless its queue is too long.

    State: `_last[user]`, the replica that served the user's previous request (the only place the
    user's newest entry can be); `_routed[r]`, requests routed to replica r so far. A request goes to
    `_last[user]` when that replica still holds the entry (`key`) and its backlog is at most
    `queue_bound_ms`; otherwise to the least loaded replica: smallest backlog, then fewest requests
    routed so far (idle replicas share new users evenly), then lowest index.
    Invariant: the chosen replica holds the entry with a backlog <= bound, or has the smallest backlog.
    """

    name = "residency"
    stateful = True

    def __init__(self, n_replicas: int, seed: int = 0, queue_bound_ms: float = 50.0) -> None:
        super().__init__(n_replicas, seed)
        if not queue_bound_ms >= 0:
            raise MtbenchError(f"router {self.name}: --queue-bound-ms must be >= 0, got {queue_bound_ms}")
        self.queue_bound_ms = float(queue_bound_ms)
        self._last: dict[int, int] = {}
        self._routed = [0] * self.n_replicas

    def assign(self, user_ids: np.ndarray) -> np.ndarray:
        raise TypeError(f"router {self.name} needs the fleet's live state: route one request at a time")

    def route(self, user: int, key: Hashable, view: FleetView) -> int:
        holder = self._last.get(user)
        if holder is None or not view.holds(holder, key) or view.backlog_ms(holder) > self.queue_bound_ms:
            backlogs, routed = view.backlogs_ms(), self._routed
            holder = min(range(self.n_replicas), key=lambda r: (backlogs[r], routed[r]))
        self._last[user] = holder
        self._routed[holder] += 1
        return holder


ROUTERS: dict[str, type[Router]] = {
    cls.name: cls for cls in (RoundRobinRouter, RandomRouter, UserHashRouter, ConsistentHashRouter, ResidencyRouter)
}
ROUTER_NAMES: tuple[str, ...] = tuple(ROUTERS)
STATELESS_ROUTER_NAMES: tuple[str, ...] = tuple(name for name, cls in ROUTERS.items() if not cls.stateful)


def router_class(name: str) -> type[Router]:
    """The router registered under `name`; MtbenchError naming the known ones otherwise."""
    cls = ROUTERS.get(str(name).strip().lower())
    if cls is None:
        raise MtbenchError(f"unknown router {name!r} (known: {', '.join(ROUTER_NAMES)})")
    return cls


def make_router(name: str, n_replicas: int, seed: int = 0, queue_bound_ms: float = 50.0,
                balance: float = 1.25) -> Router:
    """A fresh router `name` for `n_replicas` replicas (options reach the routers that use them)."""
    cls = router_class(name)
    if cls is ResidencyRouter:
        return cls(n_replicas, seed, queue_bound_ms=queue_bound_ms)
    if cls is ConsistentHashRouter:
        return cls(n_replicas, seed, balance=balance)
    return cls(n_replicas, seed)


def parse_router_list(text: str) -> list[str]:
    """'user-hash, residency' -> ['user-hash', 'residency'], each name checked."""
    names = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if not names:
        raise MtbenchError("--router: no router given")
    for name in names:
        router_class(name)
    return list(dict.fromkeys(names))
