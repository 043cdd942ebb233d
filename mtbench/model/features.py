"""Deterministic categorical features of MTGR tokens, hashed into embedding-table rows.

Traces carry no item-level data, so every feature id is a hash of who/what/where:
- static tokens (U and S) of request (user, static_version) at static position p depend ONLY on
  (user_id, static_version, p): never on the request time or request_key, so the same user and version
  always give the same static tokens (the condition that makes a cached prefix exact), and in the
  causal/append variant the first tokens do not change when more are appended;
- real-time (R) and candidate (C) tokens depend on (user_id, request_key, position).

Id columns per group (each already a row of its table, see `TABLE_COLUMNS`):
- U: [user_feature]            row `f * user_table_size + hash % user_table_size` of the U tables
                                (profile feature f at static position f has its own table slice)
- S, R: [item, category, action, time_bucket]
- C: [item, category, user_x_item, user_x_category]  (the cross features MTGR keeps from DLRM)
Hashing is splitmix64 on uint64 (wrapping arithmetic), computed with numpy on the host.

The token functions take per-request columns ([B]) and, per token, its request (`owner`, [n] indices
into them) and position. A hash folds its columns left to right, so the per-request columns are folded
once per request and only the position once per token: the same ids as folding every column per token,
for a third to a half of the work (this runs on the serving host for every batch).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mtbench.model.config import MTGRConfig

FEATURE_COLUMNS = 4  # id columns of the widest group (S, R, C); U uses the first

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))

# One salt per derived quantity, so that e.g. an item id and an action id of one token are independent.
_SALT = {name: np.uint64(((i + 1) * 0x2545F4914F6CDD1D) % (1 << 64)) for i, name in enumerate((
    "user_feature", "static_item", "static_action", "rt_item", "rt_action", "cand_item",
    "item_row", "category", "user_item", "user_category",
))}


def _mix_into(h: np.ndarray, column: np.ndarray) -> np.ndarray:
    """h = splitmix64(h ^ column), in place on `h` (uint64; wrapping arithmetic); returns h."""
    h ^= _as_u64(column)
    h += _GOLDEN
    scratch = h >> _SHIFTS[0]
    h ^= scratch
    h *= _MUL1
    np.right_shift(h, _SHIFTS[1], out=scratch)
    h ^= scratch
    h *= _MUL2
    np.right_shift(h, _SHIFTS[2], out=scratch)
    h ^= scratch
    return h


def _as_u64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)


def hash_columns(salt: str, *columns: np.ndarray) -> np.ndarray:
    """uint64 hash of equally long int64 columns, row by row (a pure function of salt and values)."""
    h = np.full(len(columns[0]), _SALT[salt], dtype=np.uint64)
    for column in columns:
        _mix_into(h, column)
    return h


def _hash_per_token(salt: str, request_columns: tuple[np.ndarray, ...], owner: np.ndarray,
                    position: np.ndarray) -> np.ndarray:
    """hash_columns(salt, *(c[owner] for c in request_columns), position), folding the request columns
    once per request."""
    return _mix_into(hash_columns(salt, *request_columns)[owner], position)


def _bucket(h: np.ndarray, size: int) -> np.ndarray:
    """h mod size as int64 (a mask when size is a power of two: the same value, no division)."""
    reduced = h & np.uint64(size - 1) if size & (size - 1) == 0 else h % np.uint64(size)
    return reduced.view(np.int64)


@lru_cache(maxsize=16)
def _log2_floor_table(length: int) -> np.ndarray:
    """floor(log2(p + 1)) for p in [0, length)."""
    return np.floor(np.log2(np.arange(length, dtype=np.float64) + 1.0)).astype(np.int64)


def _log_bucket(position: np.ndarray, first: int, count: int) -> np.ndarray:
    """Time bucket floor(log2(position + 1)) in [first, first + count): older/further events share buckets."""
    length = 1 << (int(position.max(initial=0)) + 1).bit_length()  # a power of two: few distinct tables
    return first + np.minimum(_log2_floor_table(length)[position], count - 1)


def _item_side(raw_item: np.ndarray, cfg: MTGRConfig, out: np.ndarray) -> None:
    """Write (item table row, category id) of raw item ids into out[:, 0] and out[:, 1]; the category is
    a property of the item."""
    out[:, 0] = _bucket(hash_columns("item_row", raw_item), cfg.table_size)
    out[:, 1] = _bucket(hash_columns("category", raw_item), cfg.n_categories)


def user_token_ids(user: np.ndarray, version: np.ndarray, owner: np.ndarray, position: np.ndarray,
                   cfg: MTGRConfig) -> np.ndarray:
    """[n, 1] U-table rows of profile tokens at static positions `position` (< n_user_tokens) of
    requests `owner` (indices into the per-request `user` and `version`)."""
    value = _bucket(_hash_per_token("user_feature", (user, version), owner, position), cfg.user_table_size)
    return (position * cfg.user_table_size + value)[:, None]


def _behaviour_ids(kind: str, request_columns: tuple[np.ndarray, np.ndarray], owner: np.ndarray,
                   position: np.ndarray, time_buckets: tuple[int, int], cfg: MTGRConfig) -> np.ndarray:
    """[n, 4] (item, category, action, time bucket) of behaviour tokens (S or R: `kind` "static" or
    "rt"), the time bucket in [first, first + count) of `time_buckets`."""
    ids = np.empty((len(owner), FEATURE_COLUMNS), dtype=np.int64)
    raw_item = _bucket(_hash_per_token(f"{kind}_item", request_columns, owner, position), cfg.n_raw_items)
    _item_side(raw_item, cfg, ids)
    ids[:, 2] = _bucket(_hash_per_token(f"{kind}_action", request_columns, owner, position), cfg.n_actions)
    ids[:, 3] = _log_bucket(position, *time_buckets)
    return ids


def static_seq_ids(user: np.ndarray, version: np.ndarray, owner: np.ndarray, seq_position: np.ndarray,
                   cfg: MTGRConfig) -> np.ndarray:
    """[n, 4] (item, category, action, time bucket) of S tokens; seq_position counts from the oldest S token."""
    half = max(cfg.n_time_buckets // 2, 1)
    return _behaviour_ids("static", (user, version), owner, seq_position, (cfg.n_time_buckets - half, half), cfg)


def realtime_ids(user: np.ndarray, request_key: np.ndarray, owner: np.ndarray, rt_position: np.ndarray,
                 cfg: MTGRConfig) -> np.ndarray:
    """[n, 4] (item, category, action, time bucket) of R tokens (own half of the time buckets)."""
    buckets = (0, max(cfg.n_time_buckets - cfg.n_time_buckets // 2, 1))
    return _behaviour_ids("rt", (user, request_key), owner, rt_position, buckets, cfg)


def candidate_ids(user: np.ndarray, request_key: np.ndarray, owner: np.ndarray, cand_position: np.ndarray,
                  cfg: MTGRConfig) -> np.ndarray:
    """[n, 4] (item, category, user x item, user x category) of C tokens."""
    ids = np.empty((len(owner), FEATURE_COLUMNS), dtype=np.int64)
    raw_item = _bucket(_hash_per_token("cand_item", (user, request_key), owner, cand_position), cfg.n_raw_items)
    _item_side(raw_item, cfg, ids)
    ids[:, 2] = _bucket(_mix_into(hash_columns("user_item", user)[owner], raw_item), cfg.table_size)
    ids[:, 3] = _bucket(_mix_into(hash_columns("user_category", user)[owner], ids[:, 1]), cfg.table_size)
    return ids
