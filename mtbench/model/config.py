"""MTGR model configuration and the presets of the MTGR paper (Table 2).

An `MTGRConfig` fixes every shape of the model: the HSTU stack (layers, width, heads), the token groups
(U profile tokens, at most `max_seq` S tokens, `max_rt` R tokens, `max_cand` C tokens per request),
the hashed embedding tables, and the two settings that decide whether a static prefix may be cached:
`normalizer` (how attention rows are normalised) and `history` (bidirectional U+S, or causal/append).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch

from kernels.fp8_rows_ref import fp8_token_bytes
from mtbench.errors import MtbenchError

if TYPE_CHECKING:
    from mtbench.trace.loader import TraceLimits

NORMALIZERS = ("visible", "constant", "total")
CACHE_SAFE_NORMALIZERS = ("visible", "constant")
HISTORY_MODES = ("bidirectional", "causal")
KERNEL_IMPLS = ("auto", "reference", "triton")


@dataclass(frozen=True)
class MTGRConfig:
    """Shapes and settings of one MTGR model.

    Invariants (checked in __post_init__): d_model divisible by n_heads; every size positive;
    `normalizer` in NORMALIZERS; `history` in HISTORY_MODES.
    normalizer: "visible" divides row i by the number of keys it sees (cache-safe); "constant" by
    `norm_constant` (cache-safe); "total" by the request's total token count (the paper's choice,
    NOT cache-safe: the cached paths refuse it).
    history: "bidirectional" = MTGR (U+S tokens see all of U+S); "causal" = plain HSTU history
    (static token i sees static tokens 0..i), whose cached prefix can be extended by appending.
    """

    name: str = "custom"
    n_layers: int = 2
    d_model: int = 32
    n_heads: int = 2
    n_user_tokens: int = 4
    max_seq: int = 1000
    max_rt: int = 100
    max_cand: int = 1024
    normalizer: str = "visible"
    norm_constant: float = 1024.0
    history: str = "bidirectional"
    embed_dim: int = 8
    mlp_hidden: int = 32
    table_size: int = 1000
    user_table_size: int = 64
    n_categories: int = 50
    n_actions: int = 4
    n_time_buckets: int = 16
    n_raw_items: int = 1 << 24
    ln_eps: float = 1e-5
    kernel_impl: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("n_layers", "d_model", "n_heads", "n_user_tokens", "max_seq", "max_cand", "embed_dim",
                    "mlp_hidden", "table_size", "user_table_size", "n_categories", "n_actions",
                    "n_time_buckets", "n_raw_items")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise MtbenchError(f"model config {self.name}: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_rt, int) or self.max_rt < 0:
            raise MtbenchError(f"model config {self.name}: max_rt must be >= 0, got {self.max_rt!r}")
        if self.d_model % self.n_heads:
            raise MtbenchError(
                f"model config {self.name}: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.normalizer not in NORMALIZERS:
            raise MtbenchError(
                f"model config {self.name}: normalizer {self.normalizer!r} unknown (choose from {', '.join(NORMALIZERS)})")
        if self.norm_constant <= 0:
            raise MtbenchError(f"model config {self.name}: norm_constant must be > 0, got {self.norm_constant}")
        if self.history not in HISTORY_MODES:
            raise MtbenchError(
                f"model config {self.name}: history {self.history!r} unknown (choose from {', '.join(HISTORY_MODES)})")
        if self.kernel_impl not in KERNEL_IMPLS:
            raise MtbenchError(
                f"model config {self.name}: kernel_impl {self.kernel_impl!r} unknown (choose from {', '.join(KERNEL_IMPLS)})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_static(self) -> int:
        """Most U+S tokens one request may carry."""
        return self.n_user_tokens + self.max_seq

    @property
    def cache_safe(self) -> bool:
        """True when a cached static prefix is exact (the normaliser does not depend on the request)."""
        return self.normalizer in CACHE_SAFE_NORMALIZERS

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes of K and V one static token holds across all layers."""
        return self.n_layers * 2 * self.d_model * _element_size(dtype)

    def kv_bytes(self, n_static: int, dtype: torch.dtype) -> int:
        """Bytes of one user's cache entry of `n_static` tokens."""
        return n_static * self.kv_bytes_per_token(dtype)

    def limits(self) -> TraceLimits:
        """The per-request maxima of this model, as trace limits (for `open_trace`)."""
        from mtbench.trace.loader import TraceLimits  # lazy: the trace package pulls in pandas/pyarrow

        return TraceLimits(max_static=self.max_static, max_rt=self.max_rt, max_cand=self.max_cand)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    """"fp32" | "bf16" | "fp16" -> torch dtype; MtbenchError otherwise."""
    if name not in DTYPES:
        raise MtbenchError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


KV_DTYPES: tuple[str, ...] = (*DTYPES, "fp8")


def kv_bytes_per_token(config: MTGRConfig, kv_dtype: str) -> int:
    """Bytes of K and V one static token holds across all layers when the KV is stored as `kv_dtype`
    ("fp32" | "bf16" | "fp16" | "fp8"). fp8 is the host tier's row format (kernels/fp8_rows_ref.py):
    per layer and K/V row, d_model e4m3 bytes plus one scale byte per head."""
    if kv_dtype == "fp8":
        return fp8_token_bytes(config.n_layers, config.n_heads, config.head_dim)
    if kv_dtype not in DTYPES:
        raise MtbenchError(f"unknown KV dtype {kv_dtype!r} (choose from {', '.join(KV_DTYPES)})")
    return config.kv_bytes_per_token(DTYPES[kv_dtype])


# Paper presets: MTGR Table 2 (small 3x512x2, medium 5x768x3, large 15x768x3 with head_dim 256).
_PAPER_TABLES = dict(embed_dim=64, mlp_hidden=1024, table_size=1 << 17, user_table_size=1024,
                     n_categories=4096, n_actions=8, n_time_buckets=32)
PRESETS: dict[str, MTGRConfig] = {
    "tiny": MTGRConfig(name="tiny", n_layers=2, d_model=32, n_heads=2, n_user_tokens=4, max_seq=1000,
                       max_rt=100, max_cand=1024),
    # CPU-sized, with the paper's U=32 token layout so it reads the same traces (demo, CPU replays).
    "mini": MTGRConfig(name="mini", n_layers=2, d_model=64, n_heads=2, n_user_tokens=32, embed_dim=16,
                       mlp_hidden=64, table_size=4096, user_table_size=64),
    "small": MTGRConfig(name="small", n_layers=3, d_model=512, n_heads=2, n_user_tokens=32, **_PAPER_TABLES),
    "medium": MTGRConfig(name="medium", n_layers=5, d_model=768, n_heads=3, n_user_tokens=32, **_PAPER_TABLES),
    "large": MTGRConfig(name="large", n_layers=15, d_model=768, n_heads=3, n_user_tokens=32, **_PAPER_TABLES),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
# GFLOPs per example the paper reports for its presets (for reference in `mtbench model info`).
PAPER_GFLOPS: dict[str, float] = {"small": 5.47, "medium": 18.59, "large": 55.76}


def get_config(name: str, **overrides: Any) -> MTGRConfig:
    """Preset `name` with fields replaced by `overrides` (None values are ignored).

    Raises MtbenchError for an unknown preset or an unknown field.
    """
    if name not in PRESETS:
        raise MtbenchError(f"unknown model preset {name!r} (choose from {', '.join(PRESET_NAMES)})")
    known = {f.name for f in fields(MTGRConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise MtbenchError(f"unknown model config field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
