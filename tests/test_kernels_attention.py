"""Triton HSTU attention vs the PyTorch reference on random jagged batches.

Without CUDA the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest.py before
any kernel module is imported) at small sizes; with CUDA the same checks run compiled, plus real MTGR sizes.
"""

import zlib

import pytest
import torch

CUDA = torch.cuda.is_available()

from kernels import AttentionSpec, ContiguousPrefix, hstu_attention
from kernels.hstu_attention_ref import hstu_attention_reference
from kernels.hstu_attention_triton import AttentionConfig, hstu_attention_triton
from kernels.testing import AttentionCase, random_case, relative_error

DEVICE = "cuda" if CUDA else "cpu"
SMALL_TILES = AttentionConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)
TALL_TILES = AttentionConfig(block_m=32, block_n=16, num_warps=4, num_stages=1)
PREFIX_KINDS = ("none", "contiguous", "paged")


def _run_both(case, spec, prefix, config=SMALL_TILES):
    args = (case.q, case.k, case.v, case.offsets, case.n_new_static, case.n_rt, spec)
    return hstu_attention_triton(*args, prefix, config=config), hstu_attention_reference(*args, prefix)


@pytest.mark.parametrize("prefix_kind", PREFIX_KINDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalizer", ["visible", "constant"])
def test_matches_reference_fp32(prefix_kind, causal, normalizer):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{prefix_kind}{causal}{normalizer}".encode()))
    for config in (SMALL_TILES, TALL_TILES):
        batch, head_dim = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.tensor([16, 24, 32])[torch.randint(0, 3, (1,), generator=gen)])
        case = random_case(gen, batch, heads=2, head_dim=head_dim, max_static=37, max_rt=9, max_cand=11,
                           cached=prefix_kind != "none", device=DEVICE)
        spec = AttentionSpec(alpha=head_dim ** -0.5, normalizer=normalizer, norm_constant=13.0, causal_static=causal)
        # 16 = BLOCK_N of SMALL_TILES: whole key blocks in one page; 4, 8: blocks spanning pages.
        page_tokens = 16 if config is SMALL_TILES else int(torch.tensor([4, 8])[torch.randint(0, 2, (1,), generator=gen)])
        out, ref = _run_both(case, spec, case.prefix(prefix_kind, gen, page_tokens), config)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        assert relative_error(out, ref) < 1e-5


def test_descriptor_page_loads_and_split_prefix_match_reference():
    """tma=True: the paged prefix read through tensor descriptors, whole page rows, pages in random order
    (head_dim 24 is no power of two: that case falls back to pointer loads and must agree too); split_k:
    prefix slices in several programs added atomically, with descriptors, pointers and contiguous prefixes."""
    gen = torch.Generator().manual_seed(21)
    tma = AttentionConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, tma=True)
    tma_split = AttentionConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, tma=True, split_k=3, heads_inner=True)
    pointer_split = AttentionConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, split_k=2, heads_inner=True)
    cases = ((tma, 16, 16, "paged"), (tma, 32, 32, "paged"), (tma, 24, 16, "paged"), (tma_split, 16, 32, "paged"),
             (pointer_split, 24, 16, "paged"), (pointer_split, 16, 16, "contiguous"))
    for index, (config, head_dim, page_tokens, kind) in enumerate(cases):
        causal = index % 2 == 1
        case = random_case(gen, 3, heads=2, head_dim=head_dim, max_static=45, max_rt=6, max_cand=7, cached=True,
                           device=DEVICE)
        spec = AttentionSpec(alpha=head_dim ** -0.5, causal_static=causal)
        out, ref = _run_both(case, spec, case.prefix(kind, gen, page_tokens), config)
        assert out.dtype == ref.dtype and relative_error(out, ref) < 1e-5


def test_tail_tiles_match_reference():
    """tail_m: a request's last block of <= tail_m rows runs as a shorter tile (a second tile height in the
    same launch); last blocks of more rows keep the full height. Random lengths give both kinds (checked),
    every prefix source, pages in random order, descriptors and pointers, causal and not."""
    gen = torch.Generator().manual_seed(33)
    tail = AttentionConfig(block_m=32, block_n=16, num_warps=4, num_stages=1, tail_m=16)
    tail_tma = AttentionConfig(block_m=32, block_n=16, num_warps=4, num_stages=1, tma=True, heads_inner=True, tail_m=16)
    tail_split = AttentionConfig(block_m=64, block_n=16, num_warps=4, num_stages=1, split_k=2, tail_m=32)
    remainders = set()
    for index, (config, kind) in enumerate([(tail, "none"), (tail, "contiguous"), (tail_tma, "paged"),
                                            (tail_tma, "paged"), (tail_split, "paged"), (tail, "paged")]):
        case = random_case(gen, 4, heads=2, head_dim=16, max_static=60, max_rt=9, max_cand=20,
                           cached=kind != "none", device=DEVICE)
        rows = (case.offsets[1:] - case.offsets[:-1]).cpu()
        last = rows - (rows - 1) // config.block_m * config.block_m
        remainders |= {"tail" if r <= config.tail_m else "full" for r in last.tolist()}
        spec = AttentionSpec(alpha=0.25, causal_static=index % 2 == 1)
        out, ref = _run_both(case, spec, case.prefix(kind, gen, page_tokens=16), config)
        assert out.dtype == ref.dtype and relative_error(out, ref) < 1e-5
    assert remainders == {"tail", "full"}
    with pytest.raises(ValueError, match="tail_m"):
        AttentionConfig(block_m=64, block_n=32, num_warps=4, num_stages=2, tail_m=24)


def test_edge_shapes_empty_rt_single_candidate_all_cached():
    """Request 0: no R and one candidate; request 1: every static token cached; request 2: no prefix."""
    gen = torch.Generator().manual_seed(7)
    n_cached = torch.tensor([5, 19, 0], device=DEVICE)
    n_new = torch.tensor([4, 0, 17], device=DEVICE)
    n_rt = torch.tensor([0, 6, 3], device=DEVICE)
    rows = n_new + n_rt + torch.tensor([1, 2, 3], device=DEVICE)
    offsets = torch.zeros(4, dtype=torch.long, device=DEVICE)
    offsets[1:] = rows.cumsum(0)
    q, k, v = (torch.randn(int(offsets[-1]), 1, 16, generator=gen).to(DEVICE) for _ in range(3))
    prefix_k, prefix_v = (torch.randn(int(n_cached.sum()), 1, 16, generator=gen).to(DEVICE) for _ in range(2))
    edge = AttentionCase(q, k, v, offsets, n_new, n_rt, prefix_k, prefix_v, n_cached)
    for kind in ("contiguous", "paged"):
        for causal in (False, True):
            out, ref = _run_both(edge, AttentionSpec(alpha=0.25, causal_static=causal), edge.prefix(kind, gen, page_tokens=4))
            assert relative_error(out, ref) < 1e-5


def test_fp16_meets_precision_rule():
    gen = torch.Generator().manual_seed(11)
    for prefix_kind in PREFIX_KINDS:
        case64 = random_case(gen, 3, heads=2, head_dim=32, max_static=40, max_rt=8, max_cand=9,
                             cached=prefix_kind != "none", dtype=torch.float64, device=DEVICE)
        spec = AttentionSpec(alpha=32 ** -0.5)
        prefix64 = case64.prefix(prefix_kind, gen)
        args64 = (case64.q, case64.k, case64.v, case64.offsets, case64.n_new_static, case64.n_rt, spec)
        exact = hstu_attention_reference(*args64, prefix64)
        low = [t.half() for t in (case64.q, case64.k, case64.v)]
        prefix16 = _cast_prefix(prefix64, torch.float16)
        plain = hstu_attention_reference(*low, case64.offsets, case64.n_new_static, case64.n_rt, spec, prefix16)
        out = hstu_attention_triton(*low, case64.offsets, case64.n_new_static, case64.n_rt, spec, prefix16, config=SMALL_TILES)
        assert out.dtype == torch.float16
        assert relative_error(out, exact) <= 2 * relative_error(plain, exact)


def _cast_prefix(prefix, dtype):
    if prefix is None:
        return None
    fields = {name: getattr(prefix, name) for name in prefix.__dataclass_fields__}
    for name in ("k", "v", "k_pages", "v_pages"):
        if name in fields:
            fields[name] = fields[name].to(dtype)
    return type(prefix)(**fields)


def test_cached_prefix_equals_full_forward_rows():
    """Prefix-then-delta: rows computed against a cached static prefix equal the same rows of the full pass."""
    gen = torch.Generator().manual_seed(5)
    for causal in (False, True):
        full = random_case(gen, 3, heads=2, head_dim=16, max_static=30, max_rt=7, max_cand=6, cached=False, device=DEVICE)
        spec = AttentionSpec(alpha=0.25, causal_static=causal)
        out_full = hstu_attention_triton(full.q, full.k, full.v, full.offsets, full.n_new_static, full.n_rt, spec, config=SMALL_TILES)
        # Cache the first `cut` static tokens of each request (all of them in bidirectional mode).
        n_static = full.n_new_static
        cut = n_static if not causal else n_static // 2
        keep_rows, cached_rows = [], []
        for b in range(3):
            start = int(full.offsets[b])
            cached_rows.append(torch.arange(start, start + int(cut[b])))
            keep_rows.append(torch.arange(start + int(cut[b]), int(full.offsets[b + 1])))
        keep, cached = torch.cat(keep_rows).to(DEVICE), torch.cat(cached_rows).to(DEVICE)
        offsets = torch.zeros(4, dtype=torch.long, device=DEVICE)
        offsets[1:] = torch.tensor([len(r) for r in keep_rows]).cumsum(0)
        prefix_offsets = torch.zeros(4, dtype=torch.long, device=DEVICE)
        prefix_offsets[1:] = cut.cumsum(0)
        prefix = ContiguousPrefix(full.k[cached], full.v[cached], prefix_offsets)
        out_cached = hstu_attention_triton(full.q[keep], full.k[keep], full.v[keep], offsets, n_static - cut,
                                           full.n_rt, spec, prefix, config=SMALL_TILES)
        assert relative_error(out_cached, out_full[keep]) < 1e-5


def test_swapping_candidates_swaps_outputs():
    gen = torch.Generator().manual_seed(9)
    case = random_case(gen, 1, heads=2, head_dim=16, max_static=20, max_rt=5, max_cand=1, cached=False, device=DEVICE)
    first_cand = int(case.n_new_static[0] + case.n_rt[0])
    extra = torch.randn(3, 2, 16, generator=gen).to(DEVICE)
    q, k, v = (torch.cat([t, extra * (i + 1)]) for i, t in enumerate((case.q, case.k, case.v)))
    offsets = torch.tensor([0, q.shape[0]], device=DEVICE)
    spec = AttentionSpec(alpha=0.25)
    out = hstu_attention_triton(q, k, v, offsets, case.n_new_static, case.n_rt, spec, config=SMALL_TILES)
    order = torch.arange(q.shape[0], device=DEVICE)
    order[first_cand], order[-1] = order[-1].clone(), order[first_cand].clone()
    swapped = hstu_attention_triton(q[order], k[order], v[order], offsets, case.n_new_static, case.n_rt, spec, config=SMALL_TILES)
    assert relative_error(swapped, out[order]) < 1e-6


def test_dispatcher_routes_by_impl():
    gen = torch.Generator().manual_seed(3)
    case = random_case(gen, 2, heads=1, head_dim=16, max_static=10, max_rt=3, max_cand=3, cached=False, device=DEVICE)
    spec = AttentionSpec(alpha=0.25)
    args = (case.q, case.k, case.v, case.offsets, case.n_new_static, case.n_rt, spec)
    ref = hstu_attention_reference(*args)
    assert torch.equal(hstu_attention(*args, impl="reference"), ref)
    assert relative_error(hstu_attention(*args, impl="triton"), ref) < 1e-5
    with pytest.raises(ValueError, match="impl"):
        hstu_attention(*args, impl="fast")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("prefix_kind,causal", [("none", False), ("paged", False), ("contiguous", False), ("paged", True)])
def test_real_sizes_bf16_on_gpu(prefix_kind, causal):
    """MTGR-large attention shapes (3 heads x 256; U+S up to 1032, R 100, C 200) with default tiles."""
    gen = torch.Generator().manual_seed(17)
    case64 = random_case(gen, 8, heads=3, head_dim=256, max_static=1032, max_rt=100, max_cand=200,
                         cached=prefix_kind != "none", dtype=torch.float64, device="cuda")
    spec = AttentionSpec(alpha=256 ** -0.5, causal_static=causal)
    prefix64 = case64.prefix(prefix_kind, gen, page_tokens=32)
    args64 = (case64.q, case64.k, case64.v, case64.offsets, case64.n_new_static, case64.n_rt, spec)
    exact = hstu_attention_reference(*args64, prefix64)
    for dtype in (torch.bfloat16, torch.float16):
        low = [t.to(dtype) for t in (case64.q, case64.k, case64.v)]
        prefix_low = _cast_prefix(prefix64, dtype)
        rest = (case64.offsets, case64.n_new_static, case64.n_rt, spec, prefix_low)
        plain = hstu_attention_reference(*low, *rest)
        out = hstu_attention(*low, *rest)
        assert torch.isfinite(out).all()
        assert relative_error(out, exact) <= 2 * relative_error(plain, exact)
    out32 = hstu_attention(*[t.float() for t in (case64.q, case64.k, case64.v)], case64.offsets,
                           case64.n_new_static, case64.n_rt, spec, _cast_prefix(prefix64, torch.float32))
    assert relative_error(out32, exact) < 1e-5
