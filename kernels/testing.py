"""Random jagged attention batches for the kernel tests and the kernel benchmark (CPU or GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.hstu_attention_ref import ContiguousPrefix, PagedPrefix, Prefix


@dataclass(frozen=True)
class AttentionCase:
    """One jagged batch: computed rows per request are [new static | R | C] after `n_cached` prefix tokens."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    offsets: torch.Tensor
    n_new_static: torch.Tensor
    n_rt: torch.Tensor
    prefix_k: torch.Tensor  # [sum n_cached, H, D]
    prefix_v: torch.Tensor
    n_cached: torch.Tensor

    def contiguous_prefix(self) -> ContiguousPrefix:
        offsets = torch.zeros(len(self.n_cached) + 1, dtype=torch.long, device=self.q.device)
        offsets[1:] = self.n_cached.cumsum(0)
        return ContiguousPrefix(self.prefix_k, self.prefix_v, offsets)

    def paged_prefix(self, page_tokens: int, generator: torch.Generator) -> PagedPrefix:
        """The same prefix tokens spread over pages in random order of a [pages, 2, P, H, D] pool."""
        heads, dim = self.q.shape[1:]
        device = self.q.device
        n_cached = self.n_cached.cpu()
        pages_per_request = (n_cached + page_tokens - 1) // page_tokens
        n_pages = int(pages_per_request.sum()) + 3  # a few pages nobody uses
        pool = torch.randn(n_pages, 2, page_tokens, heads, dim, generator=generator).to(device=device, dtype=self.q.dtype)
        width = max(int(pages_per_request.max()), 1)
        page_index = torch.arange(width)[None, :]
        used = page_index < pages_per_request[:, None]
        table = torch.full((len(n_cached), width), -7, dtype=torch.int32)
        table[used] = torch.randperm(n_pages, generator=generator)[: int(used.sum())].to(torch.int32)
        request = torch.repeat_interleave(torch.arange(len(n_cached)), n_cached)
        starts = torch.cumsum(n_cached, 0) - n_cached
        position = torch.arange(int(n_cached.sum())) - starts[request]
        pages = table[request, position // page_tokens].long().to(device)
        within = (position % page_tokens).to(device)
        pool[pages, 0, within] = self.prefix_k
        pool[pages, 1, within] = self.prefix_v
        return PagedPrefix(pool[:, 0], pool[:, 1], table.to(device), self.n_cached.clone())

    def prefix(self, kind: str, generator: torch.Generator, page_tokens: int = 8) -> Prefix | None:
        if kind == "none":
            return None
        return self.contiguous_prefix() if kind == "contiguous" else self.paged_prefix(page_tokens, generator)


def random_case(
    generator: torch.Generator, batch: int, heads: int, head_dim: int, max_static: int, max_rt: int,
    max_cand: int, cached: bool, dtype: torch.dtype = torch.float32, device: str = "cpu",
) -> AttentionCase:
    """Random lengths (R may be 0, at least one candidate); with `cached`, part of each static run is cached."""
    def randint(lo: int, hi: int, n: int) -> torch.Tensor:
        return torch.randint(lo, hi + 1, (n,), generator=generator)

    n_static = randint(1, max_static, batch)
    n_cached = (n_static * torch.rand(batch, generator=generator)).long() if cached else torch.zeros(batch, dtype=torch.long)
    n_new = n_static - n_cached
    n_rt = randint(0, max_rt, batch)
    n_cand = randint(1, max_cand, batch)
    rows = n_new + n_rt + n_cand
    offsets = torch.zeros(batch + 1, dtype=torch.long)
    offsets[1:] = rows.cumsum(0)
    total, n_prefix = int(offsets[-1]), int(n_cached.sum())

    def tensor(n: int) -> torch.Tensor:
        return torch.randn(n, heads, head_dim, generator=generator).to(dtype).to(device)

    return AttentionCase(
        tensor(total), tensor(total), tensor(total), offsets.to(device), n_new.to(device), n_rt.to(device),
        tensor(n_prefix), tensor(n_prefix), n_cached.to(device),
    )


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30))
