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
"""

from __future__ import annotations

import numpy as np

from mtbench.model.config import MTGRConfig

FEATURE_COLUMNS = 4  # id columns of the widest group (S, R, C); U uses the first

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)

# One salt per derived quantity, so that e.g. an item id and an action id of one token are independent.
_SALT = {name: np.uint64(((i + 1) * 0x2545F4914F6CDD1D) % (1 << 64)) for i, name in enumerate((
    "user_feature", "static_item", "static_action", "rt_item", "rt_action", "cand_item",
    "item_row", "category", "user_item", "user_category",
))}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


def _as_u64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)


def hash_columns(salt: str, *columns: np.ndarray) -> np.ndarray:
    """uint64 hash of equally long int64 columns, row by row (a pure function of salt and values)."""
    h = np.full(len(columns[0]), _SALT[salt], dtype=np.uint64)
    for column in columns:
        h = _splitmix64(h ^ _as_u64(column))
    return h


def _bucket(h: np.ndarray, size: int) -> np.ndarray:
    return (h % np.uint64(size)).astype(np.int64)


def _log_bucket(position: np.ndarray, first: int, count: int) -> np.ndarray:
    """Time bucket floor(log2(position + 1)) in [first, first + count): older/further events share buckets."""
    raw = np.floor(np.log2(position.astype(np.float64) + 1.0)).astype(np.int64)
    return first + np.minimum(raw, count - 1)


def _item_side(raw_item: np.ndarray, cfg: MTGRConfig) -> tuple[np.ndarray, np.ndarray]:
    """(item table row, category id) of raw item ids; the category is a property of the item."""
    return _bucket(hash_columns("item_row", raw_item), cfg.table_size), _bucket(hash_columns("category", raw_item), cfg.n_categories)


def user_token_ids(user: np.ndarray, version: np.ndarray, position: np.ndarray, cfg: MTGRConfig) -> np.ndarray:
    """[n, 1] U-table rows of profile tokens at static positions `position` (< n_user_tokens)."""
    value = _bucket(hash_columns("user_feature", user, version, position), cfg.user_table_size)
    return (position * cfg.user_table_size + value)[:, None]


def static_seq_ids(user: np.ndarray, version: np.ndarray, seq_position: np.ndarray, cfg: MTGRConfig) -> np.ndarray:
    """[n, 4] (item, category, action, time bucket) of S tokens; seq_position counts from the oldest S token."""
    raw_item = _bucket(hash_columns("static_item", user, version, seq_position), cfg.n_raw_items)
    item, category = _item_side(raw_item, cfg)
    action = _bucket(hash_columns("static_action", user, version, seq_position), cfg.n_actions)
    half = max(cfg.n_time_buckets // 2, 1)
    time_bucket = _log_bucket(seq_position, cfg.n_time_buckets - half, half)
    return np.stack([item, category, action, time_bucket], axis=1)


def realtime_ids(user: np.ndarray, request_key: np.ndarray, rt_position: np.ndarray, cfg: MTGRConfig) -> np.ndarray:
    """[n, 4] (item, category, action, time bucket) of R tokens (own half of the time buckets)."""
    raw_item = _bucket(hash_columns("rt_item", user, request_key, rt_position), cfg.n_raw_items)
    item, category = _item_side(raw_item, cfg)
    action = _bucket(hash_columns("rt_action", user, request_key, rt_position), cfg.n_actions)
    time_bucket = _log_bucket(rt_position, 0, max(cfg.n_time_buckets - cfg.n_time_buckets // 2, 1))
    return np.stack([item, category, action, time_bucket], axis=1)


def candidate_ids(user: np.ndarray, request_key: np.ndarray, cand_position: np.ndarray, cfg: MTGRConfig) -> np.ndarray:
    """[n, 4] (item, category, user x item, user x category) of C tokens."""
    raw_item = _bucket(hash_columns("cand_item", user, request_key, cand_position), cfg.n_raw_items)
    item, category = _item_side(raw_item, cfg)
    user_item = _bucket(hash_columns("user_item", user, raw_item), cfg.table_size)
    user_category = _bucket(hash_columns("user_category", user, category), cfg.table_size)
    return np.stack([item, category, user_item, user_category], axis=1)
