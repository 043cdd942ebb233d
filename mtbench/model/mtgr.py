"""MTGR: an HSTU encoder over one jagged sequence per request [U | S | R | C] with per-candidate heads.

Layer l (no softmax, no FFN):
    x~         = GLN_in(x)                                  per-group (gamma, beta) for U, S, R, C
    u, v, q, k = split(silu(x~ @ W_uvqk + b))               each [T, d_model]
    o          = HSTU attention(q, k, v) with the MTGR mask  kernels.hstu_attention, alpha = 1/sqrt(head_dim)
    x          = x + (GLN_out(o) * u) @ W_o + b_o

We normalise the attention output and THEN gate it with u (HSTU's reading of the paper's
"MLP(GroupLN(V~ (.) U))"); every path (full, prefix, cached) goes through this one `HSTULayer.forward`.

Caching. U and S rows never see R or C, so their K/V at every layer depend on U+S alone; `encode_prefix`
returns them (`StaticKV`) and `forward_cached` computes only the remaining rows against them, exactly,
provided the normaliser does not depend on the request ("visible" or "constant", not the paper's "total").
With history="causal" a cached prefix may hold only the first n_cached static tokens: the rest are
computed against it and can be captured for appending. `forward_pooled` is the serving form of the same
pass: prefixes are read from a GPU page pool and newly computed static K/V are stored into it as each
layer produces them (`PoolIO`; `mtbench.model.pooled` adds one-copy uploads and CUDA graphs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels import AttentionSpec, ContiguousPrefix, PagedPrefix, Prefix
from mtbench.errors import MtbenchError
from mtbench.model.batch import GROUP_C, GROUP_R, GROUP_S, GROUP_U, N_GROUPS, RequestBatch
from mtbench.model.config import MTGRConfig


PrefixForLayer = Callable[[int], Prefix | None]


@dataclass(frozen=True)
class Scores:
    """Per-candidate outputs, candidates request after request (request b: offsets[b]:offsets[b+1]).

    ctr, ctcvr: float32 [sum n_cand] probabilities (ctcvr = ctr * cvr, ESMM style);
    logits: [sum n_cand, 2] (ctr logit, cvr logit) in the model dtype;
    hidden: [T, d_model] final hidden states of the rows this forward computed (the batch's row layout).
    """

    ctr: torch.Tensor
    ctcvr: torch.Tensor
    logits: torch.Tensor
    offsets: torch.Tensor
    hidden: torch.Tensor


@dataclass(frozen=True)
class StaticKV:
    """Per-layer K and V of static (U+S) tokens: k[l], v[l] are [sum n, H, D]; request b's tokens are
    rows offsets[b]:offsets[b+1], in static-position order (the thing a cache entry stores)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    offsets: torch.Tensor

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def request(self, b: int) -> torch.Tensor:
        """[layers, 2, n, H, D] copy of request b's tokens (K at index 0, V at 1)."""
        start, end = int(self.offsets[b]), int(self.offsets[b + 1])
        return torch.stack([torch.stack([k[start:end], v[start:end]]) for k, v in zip(self.k, self.v)])

    def as_prefix(self, layer: int) -> ContiguousPrefix:
        return ContiguousPrefix(self.k[layer], self.v[layer], self.offsets)


@dataclass(frozen=True)
class PoolIO:
    """How a serving forward (`forward_pooled`) reads cached prefixes from, and stores new ones into,
    a GPU page pool `kv` [layers, pages, 2, P, H, D].

    Request b's first lengths[b] static tokens are read at every layer from pages page_table[b]
    (int32 [B, W]; a hit has lengths[b] = n_static, a miss 0; W = 0: nothing is read, the attention runs
    without a prefix, as the plain forward's does). Computed row t's K and V are written at
    every layer l to rows store_k_rows[t] and store_v_rows[t] of `kv[l].view(-1, H * D)` (int32 [T]; -1 =
    not stored); `src_rows` is arange(T) (int32), the rows being read. Every tensor lives on kv's device.
    """

    kv: torch.Tensor
    page_table: torch.Tensor
    lengths: torch.Tensor
    store_k_rows: torch.Tensor
    store_v_rows: torch.Tensor
    src_rows: torch.Tensor


@dataclass(frozen=True)
class RowLayout:
    """What attention and GLN need to know about the computed rows of one pass."""

    offsets: torch.Tensor
    n_new_static: torch.Tensor
    n_rt: torch.Tensor
    group_ids: torch.Tensor
    row_scale: torch.Tensor | None  # [T, 1, 1] per-row factor for the "total" normaliser

    @classmethod
    def kernel_ready(cls, offsets: torch.Tensor, n_new_static: torch.Tensor, n_rt: torch.Tensor,
                     group_ids: torch.Tensor, row_scale: torch.Tensor | None) -> "RowLayout":
        """Counts as int32 once per forward: the kernels take int32, and converting them in every layer
        would add a few launches per layer to a forward that is bound by launch overhead on the GPU."""
        as_int32 = (lambda t: t.to(torch.int32))
        return cls(as_int32(offsets), as_int32(n_new_static), as_int32(n_rt), group_ids, row_scale)


class TokenMLP(nn.Sequential):
    """concat(feature embeddings) -> Linear -> SiLU -> Linear -> d_model."""

    def __init__(self, in_dim: int, hidden: int, d_model: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, d_model))


class GroupLayerNorm(nn.Module):
    """(gamma, beta) per token group: weight, bias [N_GROUPS, d]; the math is `kernels.group_layernorm`."""

    def __init__(self, d_model: int, eps: float, impl: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(N_GROUPS, d_model))
        self.bias = nn.Parameter(torch.zeros(N_GROUPS, d_model))
        self.eps = eps
        self.impl = impl

    def forward(self, x: torch.Tensor, group_ids: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return kernels.group_layernorm(x, group_ids, self.weight, self.bias, self.eps, gate=gate, impl=self.impl)


class HSTULayer(nn.Module):
    def __init__(self, cfg: MTGRConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.norm_in = GroupLayerNorm(cfg.d_model, cfg.ln_eps, cfg.kernel_impl)
        self.uvqk = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.norm_out = GroupLayerNorm(cfg.d_model, cfg.ln_eps, cfg.kernel_impl)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.impl = cfg.kernel_impl

    def forward(
        self, x: torch.Tensor, rows: RowLayout, spec: AttentionSpec, get_prefix: Callable[[], Prefix | None],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, d] -> (new x [T, d], k [T, H, D], v [T, H, D])."""
        heads = (self.n_heads, self.head_dim)
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x, rows.group_ids))).chunk(4, dim=-1)
        q, k, v = q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads)
        o = kernels.hstu_attention(q, k, v, rows.offsets, rows.n_new_static, rows.n_rt, spec,
                                   prefix=get_prefix(), impl=self.impl)
        if rows.row_scale is not None:
            o = o * rows.row_scale
        # Normalise, then gate with u (HSTU's order).
        gated = self.norm_out(o.flatten(1), rows.group_ids, gate=u)
        return x + self.out(gated), k, v


class MTGR(nn.Module):
    """The MTGR ranking model; parameters initialised deterministically from cfg.seed.

    Move it with `.to(device, dtype)`: parameters and compute run in that dtype (fp32 on CPU tests,
    bf16 on the GPU); scores come back as float32.
    """

    def __init__(self, cfg: MTGRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        e, d = cfg.embed_dim, cfg.d_model
        self.user_table = nn.Embedding(cfg.n_user_tokens * cfg.user_table_size, e)
        self.item_table = nn.Embedding(cfg.table_size, e)
        self.category_table = nn.Embedding(cfg.n_categories, e)
        self.action_table = nn.Embedding(cfg.n_actions, e)
        self.time_table = nn.Embedding(cfg.n_time_buckets, e)
        self.user_item_table = nn.Embedding(cfg.table_size, e)
        self.user_category_table = nn.Embedding(cfg.table_size, e)
        self.user_proj = nn.Linear(e, d)
        self.static_mlp = TokenMLP(4 * e, cfg.mlp_hidden, d)
        self.rt_mlp = TokenMLP(4 * e, cfg.mlp_hidden, d)
        self.cand_mlp = TokenMLP(4 * e, cfg.mlp_hidden, d)
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.n_layers))
        self.head_norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.head = nn.Linear(d, 2)
        self.attention_spec = AttentionSpec(
            alpha=1.0 / math.sqrt(cfg.head_dim),
            normalizer="constant" if cfg.normalizer in ("constant", "total") else "visible",
            norm_constant=cfg.norm_constant if cfg.normalizer == "constant" else 1.0,
            causal_static=cfg.history == "causal",
        )
        if not any(p.is_meta for p in self.parameters()):
            self._init_parameters()

    @torch.no_grad()
    def _init_parameters(self) -> None:
        """Seeded init: embeddings N(0,1), linear weights N(0, 1/fan_in), GLN gamma 1+N(0,.1^2), beta N(0,.1^2).

        GLN parameters differ per group from the start, like a trained model's.
        """
        generator = torch.Generator().manual_seed(self.cfg.seed)
        for name, param in self.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if isinstance(self.get_submodule(name.rsplit(".", 1)[0]), nn.Embedding):
                value = noise
            elif ".norm_" in name or name.startswith("head_norm"):
                value = 0.1 * noise + (1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("weight"):
                value = noise / math.sqrt(param.shape[1])
            else:
                value = 0.02 * noise
            param.copy_(value)

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    # ---- public entry points -------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, batch: RequestBatch, capture_prefix: bool = False) -> Scores | tuple[Scores, StaticKV]:
        """Full forward of every token. With capture_prefix, also the per-layer K/V of U+S."""
        if batch.any_cached:
            raise MtbenchError("MTGR.forward computes every token but the batch has cached static tokens; "
                               "use forward_cached")
        if capture_prefix:
            self._require_cache_safe("forward(capture_prefix=True)")
        rows = self._row_layout(batch, total_normaliser=self.cfg.normalizer == "total")
        hidden, captured = self._run(self.embed(batch), rows, batch, None, capture=capture_prefix)
        scores = self.score(hidden, batch)
        return (scores, captured) if capture_prefix else scores

    @torch.no_grad()
    def encode_prefix(self, batch: RequestBatch) -> StaticKV:
        """Per-layer K/V of the U+S tokens of every request (computes only static rows)."""
        self._require_cache_safe("encode_prefix")
        if batch.any_cached:
            raise MtbenchError("MTGR.encode_prefix encodes whole prefixes but the batch has cached static tokens; "
                               "use forward_cached(..., capture_new_static=True) to extend a prefix")
        static = batch.static_rows
        rows = RowLayout.kernel_ready(batch.new_static_offsets, batch.n_new_static, torch.zeros_like(batch.n_rt),
                                       batch.group_ids[static], None)
        _, captured = self._run(self.embed(batch)[static], rows, batch, None, capture=True, capture_all=True)
        return captured

    @torch.no_grad()
    def forward_cached(
        self, batch: RequestBatch, prefix_for_layer: PrefixForLayer, capture_new_static: bool = False,
        check_prefix: bool = True,
    ) -> Scores | tuple[Scores, StaticKV]:
        """Forward that takes each request's first n_cached static tokens' K/V from `prefix_for_layer(l)`
        (called just before layer l's attention) and computes the other rows against them.

        Bidirectional history needs n_cached in {0, n_static} per request (hits and misses may mix);
        causal history allows any 0 <= n_cached <= n_static. With capture_new_static, also returns the
        K/V of the static tokens computed here (to append to, or insert into, a cache).
        check_prefix compares the prefix lengths with the batch's n_cached (one device sync at layer 0).
        """
        self._require_cache_safe("forward_cached")
        self._require_exact_prefix(batch)
        rows = self._row_layout(batch, total_normaliser=False)
        hidden, captured = self._run(self.embed(batch), rows, batch, prefix_for_layer, capture=capture_new_static,
                                     check_prefix=check_prefix)
        scores = self.score(hidden, batch)
        return (scores, captured) if capture_new_static else scores

    @torch.no_grad()
    def forward_pooled(self, batch: RequestBatch, rows: "RowLayout", pool: PoolIO,
                       before_layer: Callable[[int], None] | None = None) -> Scores:
        """The serving forward: hits read their prefix from the pool, misses compute theirs and store its
        K/V into the pool rows `pool` names, layer by layer, inside the same pass (no capture, no copy
        afterwards). `rows` is the batch's row layout on the device (`mtbench.model.pooled` builds it and
        `pool` in one upload); `before_layer(l)` runs just before layer l (the cache makes the stream
        wait there for layer l's host loads)."""
        self.require_poolable(batch)
        hidden = self.embed(batch)
        for index in range(len(self.layers)):
            if before_layer is not None:
                before_layer(index)
            hidden = self.pooled_layer(index, hidden, rows, pool)
        return self.score(hidden, batch)

    def require_poolable(self, batch: RequestBatch) -> None:
        """MtbenchError unless the model and `batch` may use cached prefixes (what forward_pooled checks)."""
        self._require_cache_safe("forward_pooled")
        self._require_exact_prefix(batch)

    def pooled_layer(self, index: int, x: torch.Tensor, rows: "RowLayout", pool: PoolIO) -> torch.Tensor:
        """Layer `index` of `forward_pooled`: attention over the pool prefix, then the stores of new K/V."""
        layer_kv = pool.kv[index]
        prefix = (PagedPrefix(layer_kv[:, 0], layer_kv[:, 1], pool.page_table, pool.lengths)
                  if pool.page_table.shape[1] else None)
        x, k, v = self.layers[index](x, rows, self.attention_spec, lambda: prefix)
        token_rows = layer_kv.view(-1, self.cfg.n_heads * self.cfg.head_dim)
        kernels.copy_rows(k.flatten(1), pool.src_rows, token_rows, pool.store_k_rows)
        kernels.copy_rows(v.flatten(1), pool.src_rows, token_rows, pool.store_v_rows)
        return x

    # ---- internals -------------------------------------------------------------------------------

    def _require_cache_safe(self, entry_point: str) -> None:
        if not self.cfg.cache_safe:
            raise MtbenchError(
                f"MTGR.{entry_point}: normalizer {self.cfg.normalizer!r} depends on the request's total token "
                "count, so a cached prefix would be wrong from layer 2 on; use normalizer 'visible' or 'constant'")

    def _require_exact_prefix(self, batch: RequestBatch) -> None:
        if self.cfg.history == "causal":
            return
        for index, r in enumerate(batch.requests):
            if 0 < r.n_cached < r.n_static:
                raise MtbenchError(
                    f"MTGR.forward_cached: request {index} (user {r.user_id}) has n_cached={r.n_cached} of "
                    f"n_static={r.n_static}; with bidirectional history every static token sees all static tokens, "
                    "so a partial prefix is not exact (cache the whole prefix, or use history='causal')")

    def _row_layout(self, batch: RequestBatch, total_normaliser: bool) -> RowLayout:
        row_scale = None
        if total_normaliser:
            total = (batch.n_static + batch.n_rt + batch.n_cand).to(self.dtype)
            lengths = batch.offsets[1:] - batch.offsets[:-1]
            row_scale = total.reciprocal().repeat_interleave(lengths, output_size=batch.num_rows)[:, None, None]
        return RowLayout.kernel_ready(batch.offsets, batch.n_new_static, batch.n_rt, batch.group_ids, row_scale)

    def embed(self, batch: RequestBatch, out: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [T, d_model] of every computed row (written into `out` when given)."""
        x = out if out is not None else torch.empty(batch.num_rows, self.cfg.d_model, dtype=self.dtype, device=self.device)
        x.index_copy_(0, batch.user.rows, self.user_proj(self.user_table(batch.user.ids[:, 0])))
        for group, mlp in ((batch.static_seq, self.static_mlp), (batch.realtime, self.rt_mlp)):
            x.index_copy_(0, group.rows, mlp(self._behaviour_side(group.ids)))
        x.index_copy_(0, batch.cand.rows, self.cand_mlp(self._candidate_side(batch.cand.ids)))
        return x

    def embed_rows(self, group_ids: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        """`embed` row by row from each row's group and feature ids (`row_ids` [T, 4], a U row's table row
        in column 0): every row goes through every group's tables and MLP and keeps its own group's
        result, so no shape depends on the batch's mix of groups (what a CUDA graph needs). Costs the
        token MLPs on every row (~5% of MTGR-large's GEMM work) instead of on their own group's rows."""
        is_user, is_static, is_rt, is_cand = (group_ids[:, None] == g for g in (GROUP_U, GROUP_S, GROUP_R, GROUP_C))
        own = (lambda mine: torch.where(mine, row_ids, 0))  # other rows look up row 0 (in range), then drop it
        behaviour = self._behaviour_side(own(is_static | is_rt))
        x = self.cand_mlp(self._candidate_side(own(is_cand)))
        x = torch.where(is_user, self.user_proj(self.user_table(own(is_user)[:, 0])), x)
        x = torch.where(is_static, self.static_mlp(behaviour), x)
        return torch.where(is_rt, self.rt_mlp(behaviour), x)

    def _behaviour_side(self, ids: torch.Tensor) -> torch.Tensor:
        """S and R tokens' concatenated (item, category, action, time bucket) embeddings."""
        return torch.cat([self.item_table(ids[:, 0]), self.category_table(ids[:, 1]),
                          self.action_table(ids[:, 2]), self.time_table(ids[:, 3])], dim=-1)

    def _candidate_side(self, ids: torch.Tensor) -> torch.Tensor:
        """C tokens' concatenated (item, category, user x item, user x category) embeddings."""
        return torch.cat([self.item_table(ids[:, 0]), self.category_table(ids[:, 1]),
                          self.user_item_table(ids[:, 2]), self.user_category_table(ids[:, 3])], dim=-1)

    def _run(
        self, x: torch.Tensor, rows: RowLayout, batch: RequestBatch, prefix_for_layer: PrefixForLayer | None,
        capture: bool, capture_all: bool = False, check_prefix: bool = False,
    ) -> tuple[torch.Tensor, StaticKV | None]:
        """All layers over rows `x`; captures K/V of the static rows (all rows when capture_all)."""
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for index, layer in enumerate(self.layers):
            def get_prefix(index: int = index) -> Prefix | None:
                if prefix_for_layer is None:
                    return None
                prefix = prefix_for_layer(index)
                self._check_prefix(prefix, batch, index, check_lengths=check_prefix and index == 0)
                return prefix

            x, k, v = layer(x, rows, self.attention_spec, get_prefix)
            if capture:
                keys.append(k.contiguous() if capture_all else k[batch.static_rows])
                values.append(v.contiguous() if capture_all else v[batch.static_rows])
        return x, (StaticKV(keys, values, batch.new_static_offsets) if capture else None)

    def _check_prefix(self, prefix: Prefix | None, batch: RequestBatch, layer: int, check_lengths: bool) -> None:
        where = f"MTGR.forward_cached: prefix of layer {layer}"
        if prefix is None:
            if batch.any_cached:
                raise MtbenchError(f"{where} is None but the batch has cached static tokens")
            return
        if not isinstance(prefix, (ContiguousPrefix, PagedPrefix)):
            raise MtbenchError(f"{where} is a {type(prefix).__name__}, not a ContiguousPrefix or PagedPrefix")
        token_shape = tuple(prefix.k.shape[1:] if isinstance(prefix, ContiguousPrefix) else prefix.k_pages.shape[2:])
        if token_shape != (self.cfg.n_heads, self.cfg.head_dim):
            raise MtbenchError(f"{where} holds tokens of shape {token_shape}, the model needs "
                               f"{(self.cfg.n_heads, self.cfg.head_dim)}")
        lengths = prefix.lengths()
        if lengths.shape != (batch.batch_size,):
            raise MtbenchError(f"{where} has lengths of shape {tuple(lengths.shape)}, batch has {batch.batch_size} requests")
        if check_lengths and not torch.equal(lengths.to(batch.device, torch.long), batch.n_cached):
            raise MtbenchError(f"{where} has lengths {lengths.tolist()} but the batch caches {batch.n_cached.tolist()}")

    def score(self, hidden: torch.Tensor, batch: RequestBatch) -> Scores:
        return self.scores(self.head_logits(hidden[batch.cand.rows]), batch.cand_offsets, hidden)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, 2] (ctr, cvr) logits of hidden rows [n, d_model]."""
        return self.head(self.head_norm(hidden))

    def scores(self, logits: torch.Tensor, offsets: torch.Tensor, hidden: torch.Tensor) -> Scores:
        """Scores from the candidates' logits (request after request; `offsets` as `Scores.offsets`)."""
        probs = torch.sigmoid(logits.float())
        ctr = probs[:, 0]
        return Scores(ctr=ctr, ctcvr=ctr * probs[:, 1], logits=logits, offsets=offsets, hidden=hidden)


@dataclass(frozen=True)
class ParameterCount:
    embedding: int  # hashed embedding tables
    dense: int  # everything else (token MLPs, HSTU layers, heads)

    @property
    def total(self) -> int:
        return self.embedding + self.dense


def count_parameters(cfg: MTGRConfig) -> ParameterCount:
    """Parameter counts of MTGR(cfg), from a model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = MTGR(cfg)
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    return ParameterCount(embedding=embedding, dense=sum(p.numel() for p in model.parameters()) - embedding)
