"""Replacement policies behind one interface (`base.ReplacementPolicy`) and their registry.

`make_policy(name, capacity, **options)` builds one by name; `POLICY_NAMES` lists the names in the
order reports show them. Unknown names raise MtbenchError.
"""

from __future__ import annotations

from typing import Any

from mtbench.cache.policies.arc import ARC
from mtbench.cache.policies.base import NEVER, Key, ReplacementPolicy
from mtbench.cache.policies.fifo import FIFO
from mtbench.cache.policies.gdsf import GDSF
from mtbench.cache.policies.lfu import LFU
from mtbench.cache.policies.lru import LRU
from mtbench.cache.policies.mtserve import MTServe
from mtbench.cache.policies.opt import OPT
from mtbench.cache.policies.s3fifo import S3FIFO
from mtbench.cache.policies.sieve import SIEVE
from mtbench.errors import MtbenchError

POLICIES: dict[str, type[ReplacementPolicy]] = {
    cls.name: cls for cls in (LRU, FIFO, LFU, ARC, S3FIFO, SIEVE, GDSF, MTServe, OPT)
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)
CLASSIC_POLICY_NAMES: tuple[str, ...] = ("lru", "fifo", "lfu", "arc", "s3fifo", "sieve", "gdsf")
"""Online policies from the literature (what `mtserve` is measured against; OPT is the offline bound)."""


def policy_class(name: str) -> type[ReplacementPolicy]:
    """The class registered under `name` (case-insensitive); MtbenchError if unknown."""
    cls = POLICIES.get(str(name).strip().lower())
    if cls is None:
        raise MtbenchError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")
    return cls


def make_policy(name: str, capacity: int, **options: Any) -> ReplacementPolicy:
    """A fresh policy `name` for a tier of `capacity` bytes (or units); options go to its constructor."""
    return policy_class(name)(capacity, **options)


def parse_policy_list(text: str) -> list[str]:
    """'lru, arc,OPT' -> ['lru', 'arc', 'opt'], validating every name (MtbenchError on the first bad one)."""
    names = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if not names:
        raise MtbenchError("--policies: no policy given")
    for name in names:
        policy_class(name)
    return list(dict.fromkeys(names))


__all__ = [
    "ARC", "FIFO", "GDSF", "LFU", "LRU", "MTServe", "NEVER", "OPT", "POLICIES", "POLICY_NAMES",
    "CLASSIC_POLICY_NAMES", "S3FIFO", "SIEVE", "Key", "ReplacementPolicy", "make_policy", "parse_policy_list",
    "policy_class",
]
