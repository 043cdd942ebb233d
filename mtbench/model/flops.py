"""FLOPs of one MTGR request from its shapes: a miss computes U+S+R+C rows, a hit R+C rows.

Matrix-product FLOPs only (2 per multiply-add, the convention of torch.utils.flop_counter); attention
counts only unmasked (query, key) pairs: 2*d_model for q.k plus 2*d_model for a.v per pair and layer.
Elementwise work (SiLU, norms, masks) is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtbench.model.config import MTGRConfig


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one request split by where they go; `attention_pairs` is per layer."""

    embedding: int
    layers_linear: int
    attention: int
    head: int
    attention_pairs: int
    computed_tokens: int

    @property
    def linear(self) -> int:
        """Every dense matrix product outside attention (what a flop counter sees as mm/addmm)."""
        return self.embedding + self.layers_linear + self.head

    @property
    def total(self) -> int:
        return self.linear + self.attention


def attention_pairs(n_static: int, n_rt: int, n_cand: int, n_cached: int = 0, history: str = "bidirectional") -> int:
    """Unmasked (query, key) pairs of one request for one layer, over the rows a forward computes.

    Static row at position i sees all n_static static keys (bidirectional) or keys 0..i (causal);
    R row j sees n_static + j + 1 keys; a candidate sees n_static + n_rt + 1 keys.
    """
    if history == "causal":
        static = (n_static * (n_static + 1) - n_cached * (n_cached + 1)) // 2
    else:
        static = (n_static - n_cached) * n_static
    realtime = n_rt * n_static + n_rt * (n_rt + 1) // 2
    candidates = n_cand * (n_static + n_rt + 1)
    return static + realtime + candidates


def request_flops(cfg: MTGRConfig, n_static: int, n_rt: int, n_cand: int, n_cached: int = 0) -> FlopCount:
    """FLOPs of one request whose first n_cached static tokens come from a cache."""
    d, e, h = cfg.d_model, cfg.embed_dim, cfg.mlp_hidden
    new_user = max(0, min(n_static, cfg.n_user_tokens) - min(n_cached, cfg.n_user_tokens))
    new_seq = (n_static - n_cached) - new_user
    mlp_token = 2 * (4 * e * h + h * d)
    computed = n_static - n_cached + n_rt + n_cand
    pairs = attention_pairs(n_static, n_rt, n_cand, n_cached, cfg.history)
    return FlopCount(
        embedding=new_user * 2 * e * d + (new_seq + n_rt + n_cand) * mlp_token,
        layers_linear=cfg.n_layers * computed * 2 * (d * 4 * d + d * d),
        attention=cfg.n_layers * pairs * 4 * d,
        head=n_cand * 2 * d * 2,
        attention_pairs=pairs,
        computed_tokens=computed,
    )


def miss_and_hit_flops(cfg: MTGRConfig, n_static: int, n_rt: int, n_cand: int) -> tuple[FlopCount, FlopCount]:
    """(miss, hit): no static token cached vs the whole static prefix cached."""
    return request_flops(cfg, n_static, n_rt, n_cand, 0), request_flops(cfg, n_static, n_rt, n_cand, n_static)
