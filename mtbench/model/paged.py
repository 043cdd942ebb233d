"""A standalone paged copy of a `StaticKV`, in the GPU pool's shape, for benchmarks and exactness tests.

The pool is ONE tensor [layers, pages, 2, P, heads, head_dim] (dim 2: 0 = K, 1 = V), as the
cache's GPU tier lays it out. Request b's static token t sits in page page_table[b, t // P], slot t % P;
pages are handed out in a random order so readers cannot rely on contiguity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from kernels import PagedPrefix
from mtbench.model.mtgr import StaticKV


@dataclass(frozen=True)
class PagedKV:
    """pool [layers, pages, 2, P, H, D]; page_table int32 [B, max_pages] (-1 = unused); lengths int32 [B]."""

    pool: torch.Tensor
    page_table: torch.Tensor
    lengths: torch.Tensor

    @property
    def page_tokens(self) -> int:
        return self.pool.shape[3]

    def prefix(self, layer: int) -> PagedPrefix:
        """Layer `layer`'s view as a kernels.PagedPrefix (strided views of the pool, no copy)."""
        pool_layer = self.pool[layer]
        return PagedPrefix(pool_layer[:, 0], pool_layer[:, 1], self.page_table, self.lengths)


def page_static_kv(kv: StaticKV, page_tokens: int = 32, seed: int = 0, spare_pages: int = 3) -> PagedKV:
    """Copy `kv` into a fresh pool with pages in random order (plus `spare_pages` never-used pages)."""
    lengths = kv.lengths().cpu()
    pages_per_request = (lengths + page_tokens - 1) // page_tokens
    n_pages = int(pages_per_request.sum()) + spare_pages
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_pages, generator=generator)
    width = max(int(pages_per_request.max()), 1)
    page_table = torch.full((len(lengths), width), -1, dtype=torch.int32)
    slots = []
    used = 0
    for b, (n_tokens, n_req_pages) in enumerate(zip(lengths.tolist(), pages_per_request.tolist())):
        pages = order[used:used + n_req_pages]
        used += n_req_pages
        page_table[b, :n_req_pages] = pages.to(torch.int32)
        token = torch.arange(n_tokens)
        slots.append(pages[token // page_tokens] * page_tokens + token % page_tokens)
    slot_index = torch.cat(slots).to(kv.k[0].device)
    first = kv.k[0]
    pool = torch.zeros((kv.num_layers, n_pages, 2, page_tokens, *first.shape[1:]), dtype=first.dtype, device=first.device)
    for layer in range(kv.num_layers):
        kernels.scatter_to_pages(torch.stack([kv.k[layer], kv.v[layer]]), pool[layer], slot_index)
    return PagedKV(pool=pool, page_table=page_table.to(first.device), lengths=lengths.to(first.device, torch.int32))
