"""The one entry-size function: whole pages of P tokens, all layers, K and V, as the paged GPU pool stores
them; both tiers charge an entry this size (`KVShape.sizer` gives the real tiers' sizer). A host tier that
stores another KV dtype (fp8) charges the same whole pages at its own bytes per token, and copies
between the tiers move the host's bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError

DEFAULT_PAGE_TOKENS = 32


@dataclass(frozen=True)
class EntrySizer:
    """bytes(n_static) = bytes_per_token * ceil(n_static / page_tokens) * page_tokens; unit mode: 1 per entry.

    `bytes_per_token` is `cfg.kv_bytes_per_token(dtype)` (= n_layers * 2 * d_model * element size), the
    GPU pool's; `host_bytes_per_token` the host tier's when it stores another KV dtype (0: the same;
    `kv_bytes_per_token(cfg, "fp8")` for the fp8 host tier).
    """

    bytes_per_token: int
    page_tokens: int = DEFAULT_PAGE_TOKENS
    unit: bool = False
    host_bytes_per_token: int = 0

    def __post_init__(self) -> None:
        if self.page_tokens < 1:
            raise MtbenchError(f"--page-tokens must be >= 1, got {self.page_tokens}")
        if self.bytes_per_token < 1 or self.host_bytes_per_token < 0:
            raise MtbenchError(f"bytes per token must be >= 1, got {self.bytes_per_token} (host {self.host_bytes_per_token})")

    @property
    def host_token_bytes(self) -> int:
        """Bytes of one token's K and V in the host tier (and over PCIe)."""
        return self.host_bytes_per_token or self.bytes_per_token

    @classmethod
    def for_model(cls, model: str, dtype: str, page_tokens: int = DEFAULT_PAGE_TOKENS, unit: bool = False) -> "EntrySizer":
        """Sizer of model preset `model` (e.g. "large") stored as `dtype` ("bf16", "fp16", "fp32")."""
        from mtbench.model import get_config
        from mtbench.model.config import parse_dtype

        return cls(get_config(model).kv_bytes_per_token(parse_dtype(dtype)), page_tokens, unit)

    def padded_tokens(self, n_static: np.ndarray | int) -> np.ndarray:
        """Token slots the pool reserves: n_static rounded up to whole pages."""
        n = np.asarray(n_static, dtype=np.int64)
        return -(-n // self.page_tokens) * self.page_tokens

    def entry_bytes(self, n_static: np.ndarray | int, host: bool = False) -> np.ndarray:
        """Size of each entry in the GPU tier, or the host tier with `host` (int64 array; ones in unit mode)."""
        n = np.asarray(n_static, dtype=np.int64)
        if self.unit:
            return np.ones_like(n)
        return self.padded_tokens(n) * (self.host_token_bytes if host else self.bytes_per_token)

    def size_of(self, n_static: int) -> int:
        """`entry_bytes` of one GPU entry, as a Python int (the control plane's per-request path)."""
        if self.unit:
            return 1
        return -(-n_static // self.page_tokens) * self.page_tokens * self.bytes_per_token

    def host_size_of(self, n_static: int) -> int:
        """`entry_bytes(host=True)` of one host entry, as a Python int."""
        if self.unit:
            return 1
        return -(-n_static // self.page_tokens) * self.page_tokens * self.host_token_bytes

    def moved_bytes(self, n_static: int) -> int:
        """Bytes a copy of the entry moves between the tiers: its tokens (not the page padding) in the
        host's KV dtype, which the copy kernels (de)quantise on the GPU side; 1 in unit mode."""
        return 1 if self.unit else n_static * self.host_token_bytes
