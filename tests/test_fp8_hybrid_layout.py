"""The copy-engine fp8 layout (`hybrid-fp8`, `cache.layouts.Fp8HybridLayout`) on the CPU: its host blocks hold
exactly the zero-copy fp8 layout's codes and scales, loads refill pool pages with the same values, layer by
layer, and a cached forward reading them stays within the fp8 error bound of the bf16 path.
(`mtbench replay --kv-dtype fp8` end to end with both layouts: the last test.)"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kernels.fp8_rows_ref import fp8_error_bound, fp8_row_bytes, quantize_fp8_reference
from mtbench.cache.host import Fp8RowArena
from mtbench.cache.layouts import Fp8HybridLayout, Fp8ZeroCopyLayout, HostPlacement, TransferJob, make_layout
from mtbench.cache.pool import KVShape, PagedKVPool
from mtbench.cache.transfer import TransferEngine
from mtbench.cli import app
from mtbench.model import MTGR, build_batch, get_config, sample_requests
from mtbench.model.config import kv_bytes_per_token
from test_model_pooled import PAGE, _forward, _inputs
from test_replay import make_trace


CUDA = torch.cuda.is_available()


def _random_pool(gen: torch.Generator, shape: KVShape, pages: int, device: str = "cpu") -> PagedKVPool:
    """A pool of random K/V whose heads span 8 decades (scales differ per token and head)."""
    pool = PagedKVPool(shape, pages * shape.page_bytes, device)
    values = torch.randn(pool.kv.shape, generator=gen)
    values *= 10.0 ** (8 * torch.rand(*pool.kv.shape[:-1], 1, generator=gen) - 4)
    pool.kv.copy_(values)
    return pool


def _sources(gen: torch.Generator, pool: PagedKVPool, token_counts: list[int]) -> list[list[int]]:
    """Pool pages (in random order) of one entry per token count."""
    sources = []
    for n_tokens in token_counts:
        pages = pool.allocate(n_tokens)
        sources.append([pages[i] for i in torch.randperm(len(pages), generator=gen).tolist()])
    return sources


def _jobs(arena: Fp8RowArena, layout, token_counts: list[int], sources: list[list[int]]) -> list[TransferJob]:
    """One job per entry: its extents from `arena`, its pages `sources[j]`."""
    return [TransferJob((j, 0), HostPlacement([arena.allocate(rows) for rows in layout.extent_elements(n)], n), sources[j])
            for j, n in enumerate(token_counts)]


def _tokens(pool: PagedKVPool, job: TransferJob, layer: int) -> torch.Tensor:
    """[2n, H, D] on the CPU: the job's K tokens then V tokens at `layer`, read from its pages."""
    slots = pool.host_slots(job.pages, job.placement.n_tokens)
    page_tokens = pool.shape.page_tokens
    kv = pool.kv[layer].cpu()[slots // page_tokens, :, slots % page_tokens]  # [n, 2, H, D]
    return kv.transpose(0, 1).reshape(-1, pool.shape.heads, pool.shape.head_dim)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not CUDA, reason="needs CUDA")])])
@pytest.mark.parametrize("seed", range(3))
def test_hybrid_fp8_round_trip_equals_the_zero_copy_layout(seed: int, device: str) -> None:
    """Store the same pool pages through both fp8 layouts: every extent holds the reference quantisation
    of its tokens (the same codes and scales in either layout); reloading fills fresh pages with identical
    values, within the error bound of the originals; the bytes counted are the fp8 rows'. On CUDA: pinned
    arena, side streams, the loader thread (odd seeds) and the Triton kernels."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    heads, head_dim = int(rng.integers(1, 4)), int(rng.choice([4, 6, 8, 16]))
    shape = KVShape(layers=int(rng.integers(1, 4)), heads=heads, head_dim=head_dim, dtype=torch.bfloat16,
                    page_tokens=int(rng.choice([2, 4, 8])))
    token_counts = rng.integers(1, 20, int(rng.integers(1, 6))).tolist()
    pool = _random_pool(gen, shape, 3 * sum(shape.pages_for(n) for n in token_counts) + 2, device)
    row_bytes = fp8_row_bytes(heads, head_dim)
    arena_rows = 2 * shape.layers * sum(token_counts) + int(rng.integers(0, 20))
    hybrid, zerocopy = make_layout("hybrid", shape, "fp8"), make_layout("zerocopy", shape, "fp8")
    assert isinstance(hybrid, Fp8HybridLayout) and isinstance(zerocopy, Fp8ZeroCopyLayout)
    assert hybrid.extent_elements(7) == zerocopy.extent_elements(7) and hybrid.bytes_per_token == zerocopy.bytes_per_token

    sources = _sources(gen, pool, token_counts)
    reloaded = {}
    for layout in (hybrid, zerocopy):
        arena = Fp8RowArena((arena_rows + 3) * row_bytes, heads, head_dim, pin=device == "cuda")
        arena.allocate(int(rng.integers(1, 4)))  # extents start past row 0: blocks at odd byte offsets
        engine = TransferEngine(pool, arena, layout, load_thread=bool(seed % 2))
        jobs = _jobs(arena, layout, token_counts, sources)
        handles = engine.store_many(jobs)
        for handle in handles:
            if handle.event is not None:
                handle.event.synchronize()
        assert all(h is not None and h.done() for h in handles)
        assert sum(h.bytes_moved for h in handles) == sum(token_counts) * 2 * shape.layers * row_bytes
        for job in jobs:
            n_rows = 2 * job.placement.n_tokens
            for layer, offset in enumerate(job.placement.offsets):
                codes, scales = quantize_fp8_reference(_tokens(pool, job, layer))
                if layout is hybrid:
                    block = arena.block(offset, n_rows)
                    held = block[: codes.numel()].view(n_rows, -1), block[codes.numel():].view(n_rows, heads)
                else:
                    held = arena.codes[offset: offset + n_rows], arena.scales[offset: offset + n_rows]
                assert torch.equal(held[0], codes.view(n_rows, -1)) and torch.equal(held[1], scales)
        targets = [TransferJob(job.key, job.placement, pool.allocate(job.placement.n_tokens)) for job in jobs]
        handle = engine.load(targets)
        handle.synchronize()
        assert not handle.failed and handle.bytes_moved == sum(token_counts) * hybrid.bytes_per_token
        reloaded[layout.name] = [[_tokens(pool, job, layer) for layer in range(shape.layers)] for job in targets]
        for job, target in zip(jobs, targets):
            pool.free(target.pages)
            for layer, values in enumerate(reloaded[layout.name][job.key[0]]):
                original = _tokens(pool, job, layer)
                assert (values.float() - original.float()).abs().le(fp8_error_bound(original)).all()
                assert not torch.equal(values, original), "fp8 is lossy: the test data must show it"
    for ours, theirs in zip(reloaded[hybrid.name], reloaded[zerocopy.name]):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def test_hybrid_fp8_loads_layer_by_layer() -> None:
    """`layer_done(l)` comes once layer l of every job is in its pages and before layer l+1 is touched."""
    gen = torch.Generator().manual_seed(7)
    shape = KVShape(layers=3, heads=2, head_dim=4, dtype=torch.bfloat16, page_tokens=4)
    pool = _random_pool(gen, shape, 30)
    arena = Fp8RowArena(400 * fp8_row_bytes(2, 4), 2, 4, pin=False)
    layout = Fp8HybridLayout(shape)
    engine = TransferEngine(pool, arena, layout)
    jobs = _jobs(arena, layout, [5, 9, 1], _sources(gen, pool, [5, 9, 1]))
    engine.store_many(jobs)
    targets = [TransferJob(job.key, job.placement, pool.allocate(job.placement.n_tokens)) for job in jobs]
    for job in targets:
        pool.kv[:, job.pages] = 0
    seen = []

    def layer_done(layer: int) -> None:
        filled = [all(bool(_tokens(pool, job, l).abs().sum() > 0) for job in targets) for l in range(shape.layers)]
        seen.append((layer, filled))

    views = [layout.row_views(arena, job.placement) for job in targets]
    layout.load_layers(targets, views, pool, False, layer_done)
    assert [layer for layer, _ in seen] == [0, 1, 2]
    for layer, filled in seen:
        assert filled == [l <= layer for l in range(shape.layers)]
    layout.load_layers([], [], pool, False, lambda layer: seen.append((layer, None)))
    assert [layer for layer, _ in seen[3:]] == [0, 1, 2]


@pytest.mark.parametrize("seed", range(2))
def test_cached_forward_through_hybrid_fp8_is_within_the_bound_of_the_bf16_path(seed: int) -> None:
    """A bf16 model computes users' prefixes into pool pages; hits read them (the bf16 path) or the same
    entries after a round trip through the fp8 host tier's hybrid layout: the K/V they read is within the
    documented per-element bound of the bf16 K/V, the scores are close to (and not equal to) the bf16 path's,
    and equal to the zero-copy fp8 layout's."""
    cfg = get_config("tiny")
    model = MTGR(cfg).to(torch.bfloat16).eval()
    specs = sample_requests(cfg, 4, seed=seed)
    shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, torch.bfloat16, PAGE)
    width = max(shape.pages_for(s.n_static) for s in specs)
    pool = PagedKVPool(shape, 4 * len(specs) * width * shape.page_bytes, "cpu")
    pages = [pool.allocate(s.n_static) for s in specs]
    misses = build_batch(specs, cfg)
    with torch.no_grad():
        _forward(model, misses, _inputs(pool.kv, misses, np.zeros((len(specs), width), np.int32), pages))
    hits = build_batch([replace(s, request_key=s.request_key + 1, n_cached=s.n_static) for s in specs], cfg)

    def scores(entry_pages: list[list[int]]) -> torch.Tensor:
        table = np.zeros((len(specs), width), np.int32)
        for b, request_pages in enumerate(entry_pages):
            table[b, : len(request_pages)] = request_pages
        with torch.no_grad():
            hidden = _forward(model, hits, _inputs(pool.kv, hits, table, [None] * len(specs)))[0]
        return model.score(hidden, hits).ctr.float()

    exact = scores(pages)
    through = {}
    for name in ("hybrid", "zerocopy"):
        layout = make_layout(name, shape, "fp8")
        arena = Fp8RowArena(2 * shape.layers * sum(s.n_static for s in specs) * fp8_row_bytes(shape.heads, shape.head_dim),
                            shape.heads, shape.head_dim, pin=False)
        engine = TransferEngine(pool, arena, layout)
        jobs = [TransferJob((b, 0), HostPlacement([arena.allocate(r) for r in layout.extent_elements(s.n_static)], s.n_static),
                            pages[b]) for b, s in enumerate(specs)]
        engine.store_many(jobs)
        loaded = [TransferJob(job.key, job.placement, pool.allocate(job.placement.n_tokens)) for job in jobs]
        engine.load(loaded).synchronize()
        for job, back in zip(jobs, loaded):
            for layer in range(shape.layers):
                original, values = _tokens(pool, job, layer), _tokens(pool, back, layer)
                assert (values.float() - original.float()).abs().le(fp8_error_bound(original)).all()
        through[name] = scores([job.pages for job in loaded])
        for job in loaded:
            pool.free(job.pages)
    assert torch.equal(through["hybrid"], through["zerocopy"])
    relative = (through["hybrid"] - exact).abs().max() / exact.abs().max()
    assert 0 < relative < 0.05, f"fp8 scores differ from the bf16 path's by {relative:.3g}"


def test_replay_with_fp8_hybrid_and_zerocopy_layouts_agrees(tmp_path: Path) -> None:
    """`mtbench replay --kv-dtype fp8 --layout hybrid` (and `zerocopy`) on the CPU: both run end to end, serve
    the same outcomes, count the same fp8 bytes, and verify to the same errors (the same numbers loaded)."""
    cfg = get_config("tiny")
    trace = make_trace(tmp_path / "t.parquet", 13, requests=36, users=8)
    page_bytes = 32 * kv_bytes_per_token(cfg, "bf16")
    rows = {}
    for layout in ("hybrid", "zerocopy"):
        out = tmp_path / layout
        result = CliRunner().invoke(app, [
            "replay", str(trace), "--model", "tiny", "--device", "cpu", "--dtype", "bf16", "--kv-dtype", "fp8",
            "--layout", layout, "--gpu-cache", str(5 * page_bytes), "--host-cache", "4MiB",
            "--batch-size", "6", "--verify", "6", "--warmup", "6", "-o", str(out)])
        assert result.exit_code == 0, result.output
        [rows[layout]] = json.loads((out / "summary.json").read_text())["rows"]
    hybrid, zerocopy = rows["hybrid"], rows["zerocopy"]
    assert hybrid["host_hits"] > 0 and hybrid["lossy"] is True and hybrid["verify_checked"] == 6
    assert 0 < hybrid["verify_max_rel_err"] < 0.1
    for key in ("gpu_hits", "host_hits", "misses", "bytes_h2d", "bytes_d2h", "verify_max_rel_err", "verify_model_rel_err",
                "verify_top10_agreement"):
        assert hybrid[key] == zerocopy[key], key
