"""PyTorch reference for jagged HSTU attention with the MTGR mask (the contract every kernel meets).

A batch holds B requests. For request b the *computed rows* are, in order,
`n_new_static[b]` static rows (U+S tokens not in the cache), `n_rt[b]` real-time rows (R), and the
candidate rows (C); they occupy `q[offsets[b]:offsets[b+1]]` (and the same rows of k and v).
They are preceded by `n_cached[b]` static tokens whose K/V come from `prefix` (contiguous or paged).
Let N = n_cached + n_new_static (all static tokens) and r = n_rt. Key positions run over
[cached prefix | computed rows]. Row visibility (the MTGR dynamic mask):

- static row at position i: bidirectional mode sees static keys [0, N); causal-history mode sees [0, i].
- R row j (0-based within R): all N static keys and R rows 0..j.
- candidate row: all N static keys, all r R rows, and itself; never another candidate.

a_ij = silu(alpha * q_i . k_j) * M_ij / n_i, and o_i = sum_j a_ij v_j, where n_i is the number of keys
row i sees ("visible", cache-safe) or a constant ("constant"). The computation runs in the inputs'
dtype, like a plain PyTorch implementation would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NORMALIZERS = ("visible", "constant")


@dataclass(frozen=True)
class ContiguousPrefix:
    """Cached static K/V as jagged tensors: request b's tokens are k[offsets[b]:offsets[b+1]]."""

    k: torch.Tensor  # [T, H, D]
    v: torch.Tensor  # [T, H, D]
    offsets: torch.Tensor  # int64 [B+1]

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


@dataclass(frozen=True)
class PagedPrefix:
    """Cached static K/V in a page pool: token t of request b sits in page page_table[b, t // P], slot t % P.

    k_pages / v_pages are [n_pages, P, H, D] and may be strided views of one pool tensor
    shaped [pages, 2, P, H, D] (layer slice of [layers, pages, 2, P, H, D]).
    """

    k_pages: torch.Tensor
    v_pages: torch.Tensor
    page_table: torch.Tensor  # int32/int64 [B, max_pages]; unused slots may hold any value
    lengths_: torch.Tensor  # int64 [B], cached tokens per request

    @property
    def page_tokens(self) -> int:
        return self.k_pages.shape[1]

    def lengths(self) -> torch.Tensor:
        return self.lengths_


Prefix = ContiguousPrefix | PagedPrefix


@dataclass(frozen=True)
class AttentionSpec:
    alpha: float
    normalizer: str = "visible"
    norm_constant: float = 1.0
    causal_static: bool = False  # the append (causal-history) variant

    def __post_init__(self) -> None:
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {self.normalizer!r}")


def _pad_rows(x: torch.Tensor, offsets: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged [T, ...] -> padded [B, width, ...] plus validity [B, width]."""
    lengths = offsets[1:] - offsets[:-1]
    pos = torch.arange(width, device=x.device)
    valid = pos[None, :] < lengths[:, None]
    index = (offsets[:-1, None] + pos[None, :]).clamp(max=max(x.shape[0] - 1, 0))
    if x.shape[0] == 0:
        return x.new_zeros((len(lengths), width, *x.shape[1:])), valid
    return x[index] * valid.view(*valid.shape, *([1] * (x.dim() - 1))).to(x.dtype), valid


def _pad_prefix(prefix: Prefix | None, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cached K/V padded to [B, Mmax, H, D], and cached lengths [B]."""
    heads, dim = like.shape[1], like.shape[2]
    if prefix is None:
        empty = like.new_zeros((batch, 0, heads, dim))
        return empty, empty, torch.zeros(batch, dtype=torch.long, device=like.device)
    lengths = prefix.lengths().to(device=like.device, dtype=torch.long)
    width = int(lengths.max().item()) if batch else 0
    if isinstance(prefix, ContiguousPrefix):
        k, _ = _pad_rows(prefix.k, prefix.offsets.to(like.device), width)
        v, _ = _pad_rows(prefix.v, prefix.offsets.to(like.device), width)
        return k, v, lengths
    pos = torch.arange(width, device=like.device)
    page_size = prefix.page_tokens
    pages = prefix.page_table.to(like.device).long()
    if width:
        page_of = pages.gather(1, (pos // page_size)[None, :].expand(batch, -1).clamp(max=pages.shape[1] - 1))
    else:
        page_of = pages.new_zeros((batch, 0))
    valid = pos[None, :] < lengths[:, None]
    page_of = torch.where(valid, page_of, torch.zeros_like(page_of))
    slot = (pos % page_size)[None, :].expand(batch, -1)
    keep = valid[..., None, None].to(like.dtype)
    return prefix.k_pages[page_of, slot] * keep, prefix.v_pages[page_of, slot] * keep, lengths


def visible_key_mask(
    n_cached: torch.Tensor, n_new_static: torch.Tensor, n_rt: torch.Tensor, n_rows: torch.Tensor,
    q_width: int, prefix_width: int, causal_static: bool,
) -> torch.Tensor:
    """Boolean [B, q_width, prefix_width + q_width]: which key each padded query row sees."""
    device = n_rows.device
    qi = torch.arange(q_width, device=device)[None, :, None]  # row index among computed rows
    kj = torch.arange(prefix_width + q_width, device=device)[None, None, :]
    m = n_cached[:, None, None]
    s = n_new_static[:, None, None]
    r = n_rt[:, None, None]
    rows = n_rows[:, None, None]
    n_static = m + s
    q_pos = m + qi
    is_prefix_key = kj < prefix_width
    k_pos = torch.where(is_prefix_key, kj, m + (kj - prefix_width))
    k_valid = torch.where(is_prefix_key, kj < m, (kj - prefix_width) < rows)
    key_static = k_pos < n_static
    key_rt = (k_pos >= n_static) & (k_pos < n_static + r)
    row_static = q_pos < n_static
    row_rt = (q_pos >= n_static) & (q_pos < n_static + r)
    row_cand = (q_pos >= n_static + r) & (qi < rows)
    if causal_static:
        static_sees = key_static & (k_pos <= q_pos)
    else:
        static_sees = key_static
    rt_sees = key_static | (key_rt & (k_pos <= q_pos))
    cand_sees = key_static | key_rt | (k_pos == q_pos)
    mask = (row_static & static_sees) | (row_rt & rt_sees) | (row_cand & cand_sees)
    return mask & k_valid & (qi < rows)


def hstu_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    n_new_static: torch.Tensor,
    n_rt: torch.Tensor,
    spec: AttentionSpec,
    prefix: Prefix | None = None,
) -> torch.Tensor:
    """Padded dense reference. q, k, v: [T, H, D] jagged by `offsets` [B+1]. Returns [T, H, D]."""
    batch = offsets.numel() - 1
    offsets = offsets.to(q.device, torch.long)
    n_rows = offsets[1:] - offsets[:-1]
    q_width = int(n_rows.max().item()) if batch else 0
    q_pad, q_valid = _pad_rows(q, offsets, q_width)
    k_pad, _ = _pad_rows(k, offsets, q_width)
    v_pad, _ = _pad_rows(v, offsets, q_width)
    k_prefix, v_prefix, n_cached = _pad_prefix(prefix, batch, q)
    keys = torch.cat([k_prefix.to(q.dtype), k_pad], dim=1)
    values = torch.cat([v_prefix.to(q.dtype), v_pad], dim=1)
    mask = visible_key_mask(
        n_cached, n_new_static.to(q.device, torch.long), n_rt.to(q.device, torch.long), n_rows,
        q_width, k_prefix.shape[1], spec.causal_static,
    )
    scores = torch.einsum("bqhd,bkhd->bhqk", q_pad, keys) * spec.alpha
    weights = F.silu(scores) * mask[:, None].to(q.dtype)
    if spec.normalizer == "visible":
        weights = weights / mask.sum(-1).clamp(min=1)[:, None, :, None].to(q.dtype)
    else:
        weights = weights / spec.norm_constant
    out = torch.einsum("bhqk,bkhd->bqhd", weights, values)
    return out[q_valid]
