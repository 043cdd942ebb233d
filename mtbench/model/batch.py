"""Jagged request batches for MTGR: which rows a forward computes and the feature ids of each row.

Layout. Request b has n_static static tokens (U then S), n_rt real-time tokens (R) and n_cand candidates
(C). The first n_cached static tokens come from a cache (their K/V are a `kernels.Prefix`); the forward
computes the remaining rows, in order [new static (positions n_cached..n_static-1) | R | C], packed
request after request: request b owns rows offsets[b]:offsets[b+1] of every [T, ...] tensor
(T = sum over requests of n_static - n_cached + n_rt + n_cand). No padding anywhere.

Invariants: 0 <= n_cached <= n_static, 1 <= n_static <= cfg.max_static, 0 <= n_rt <= cfg.max_rt,
1 <= n_cand <= cfg.max_cand; every GroupFeatures' rows are sorted and the four groups' rows partition
[0, T); `cand.rows` lists candidates request after request, the order of `Scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mtbench.errors import MtbenchError
from mtbench.model.config import MTGRConfig
from mtbench.model.features import candidate_ids, realtime_ids, static_seq_ids, user_token_ids

GROUP_U, GROUP_S, GROUP_R, GROUP_C = 0, 1, 2, 3
GROUP_NAMES = ("U", "S", "R", "C")
N_GROUPS = 4


@dataclass(frozen=True)
class RequestSpec:
    """One request as the model sees it: the cache key (user_id, static_version), a request_key that
    seeds its R and C features, token counts, and how many leading static tokens are served from cache."""

    user_id: int
    static_version: int
    request_key: int
    n_static: int
    n_rt: int
    n_cand: int
    n_cached: int = 0

    @property
    def n_new_static(self) -> int:
        return self.n_static - self.n_cached


@dataclass(frozen=True)
class GroupFeatures:
    """The tokens of one group in a batch: `rows` [n] int64 (indices into the batch's computed rows)
    and `ids` [n, F] int64 (rows of the group's embedding tables, columns as in mtbench.model.features)."""

    rows: torch.Tensor
    ids: torch.Tensor


@dataclass(frozen=True)
class RequestBatch:
    """A jagged batch of requests, on one device (see the module docstring for the layout).

    Per-request tensors are int64 [B]; `offsets` [B+1] delimits computed rows, `cand_offsets` [B+1]
    the candidates (scores), `new_static_offsets` [B+1] the newly computed static rows (captured K/V).
    `static_rows` [sum n_new_static] lists the computed static rows (U and S) request after request.
    """

    requests: tuple[RequestSpec, ...]
    offsets: torch.Tensor
    cand_offsets: torch.Tensor
    new_static_offsets: torch.Tensor
    n_static: torch.Tensor
    n_cached: torch.Tensor
    n_new_static: torch.Tensor
    n_rt: torch.Tensor
    n_cand: torch.Tensor
    group_ids: torch.Tensor
    static_rows: torch.Tensor
    user: GroupFeatures
    static_seq: GroupFeatures
    realtime: GroupFeatures
    cand: GroupFeatures
    num_rows: int

    @property
    def batch_size(self) -> int:
        return len(self.requests)

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    @property
    def any_cached(self) -> bool:
        return any(r.n_cached for r in self.requests)

    def request_rows(self) -> torch.Tensor:
        """Indices of the R and C rows, request after request: the same list whatever is cached."""
        return (self.group_ids >= GROUP_R).nonzero().flatten()


def _check(requests: Sequence[RequestSpec], cfg: MTGRConfig) -> None:
    if not requests:
        raise MtbenchError("model batch: no requests given")
    for index, r in enumerate(requests):
        problem = None
        if not 1 <= r.n_static <= cfg.max_static:
            problem = f"n_static={r.n_static} outside [1, {cfg.max_static}] (U={cfg.n_user_tokens} + max_seq={cfg.max_seq})"
        elif not 0 <= r.n_rt <= cfg.max_rt:
            problem = f"n_rt={r.n_rt} outside [0, {cfg.max_rt}]"
        elif not 1 <= r.n_cand <= cfg.max_cand:
            problem = f"n_cand={r.n_cand} outside [1, {cfg.max_cand}]"
        elif not 0 <= r.n_cached <= r.n_static:
            problem = f"n_cached={r.n_cached} outside [0, n_static={r.n_static}]"
        if problem:
            raise MtbenchError(f"model batch: request {index} (user {r.user_id}) has {problem} for model {cfg.name!r}")


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For jagged segments of `lengths`: (segment index, position within segment) of every element."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return owner, np.arange(int(lengths.sum()), dtype=np.int64) - starts[owner]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def build_batch(requests: Sequence[RequestSpec], cfg: MTGRConfig, device: torch.device | str = "cpu") -> RequestBatch:
    """Lay out `requests` as one jagged batch and derive every token's feature ids (deterministic).

    Raises MtbenchError naming the first request whose counts break the model's limits.
    """
    _check(requests, cfg)
    col = {name: np.array([getattr(r, name) for r in requests], dtype=np.int64)
           for name in ("user_id", "static_version", "request_key", "n_static", "n_rt", "n_cand", "n_cached")}
    user, version, key = col["user_id"], col["static_version"], col["request_key"]
    n_new = col["n_static"] - col["n_cached"]
    offsets = _offsets(n_new + col["n_rt"] + col["n_cand"])
    group_ids = np.empty(int(offsets[-1]), dtype=np.int64)

    owner, pos = _segments(n_new)
    static_position = col["n_cached"][owner] + pos
    static_rows = offsets[owner] + pos
    is_user = static_position < cfg.n_user_tokens
    group_ids[static_rows] = np.where(is_user, GROUP_U, GROUP_S)
    user_tokens = (static_rows[is_user],
                   user_token_ids(user, version, owner[is_user], static_position[is_user], cfg))
    seq = ~is_user
    static_seq = (static_rows[seq],
                  static_seq_ids(user, version, owner[seq], static_position[seq] - cfg.n_user_tokens, cfg))

    owner, pos = _segments(col["n_rt"])
    rt_rows = offsets[owner] + n_new[owner] + pos
    group_ids[rt_rows] = GROUP_R
    realtime = (rt_rows, realtime_ids(user, key, owner, pos, cfg))

    owner, pos = _segments(col["n_cand"])
    cand_rows = offsets[owner] + n_new[owner] + col["n_rt"][owner] + pos
    group_ids[cand_rows] = GROUP_C
    cand = (cand_rows, candidate_ids(user, key, owner, pos, cfg))

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    def features(pair: tuple[np.ndarray, np.ndarray]) -> GroupFeatures:
        return GroupFeatures(rows=tensor(pair[0]), ids=tensor(pair[1]))

    return RequestBatch(
        requests=tuple(requests),
        offsets=tensor(offsets),
        cand_offsets=tensor(_offsets(col["n_cand"])),
        new_static_offsets=tensor(_offsets(n_new)),
        n_static=tensor(col["n_static"]),
        n_cached=tensor(col["n_cached"]),
        n_new_static=tensor(n_new),
        n_rt=tensor(col["n_rt"]),
        n_cand=tensor(col["n_cand"]),
        group_ids=tensor(group_ids),
        static_rows=tensor(static_rows),
        user=features(user_tokens),
        static_seq=features(static_seq),
        realtime=features(realtime),
        cand=features(cand),
        num_rows=int(offsets[-1]),
    )


def sample_requests(
    cfg: MTGRConfig, batch_size: int, n_static: int | None = None, n_rt: int | None = None,
    n_cand: int | None = None, seed: int = 0, cached: bool = False,
) -> list[RequestSpec]:
    """`batch_size` requests of distinct users; a count given is used for every request, a count left
    None is drawn per request (jagged) within the model's limits. cached=True marks whole prefixes cached."""
    if batch_size < 1:
        raise MtbenchError(f"model batch: batch size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)

    def draw(fixed: int | None, low: int, high: int) -> list[int]:
        if fixed is not None:
            return [fixed] * batch_size
        return rng.integers(low, high + 1, size=batch_size).tolist()

    statics = draw(n_static, 1, min(cfg.max_static, cfg.n_user_tokens + 64))
    rts = draw(n_rt, 0, min(cfg.max_rt, 16))
    cands = draw(n_cand, 1, min(cfg.max_cand, 16))
    users = rng.choice(10_000_000, size=batch_size, replace=False).tolist()
    requests = [
        RequestSpec(user_id=u, static_version=int(rng.integers(0, 4)), request_key=int(rng.integers(0, 1 << 40)),
                    n_static=s, n_rt=r, n_cand=c, n_cached=s if cached else 0)
        for u, s, r, c in zip(users, statics, rts, cands)
    ]
    _check(requests, cfg)
    return requests
