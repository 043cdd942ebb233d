"""Cached forward == full forward (fp32) for random jagged batches: contiguous and paged prefixes,
mixed hits/misses, and the causal append variant."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from kernels import ContiguousPrefix
from mtbench.errors import MtbenchError
from mtbench.model import (
    MTGR,
    RequestSpec,
    Scores,
    StaticKV,
    build_batch,
    get_config,
    page_static_kv,
    sample_requests,
)

RTOL = 1e-5


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def assert_same_outputs(cached: Scores, cached_batch, full: Scores, full_batch) -> None:
    """Scores and the R and C hidden states agree (the rows both forwards compute)."""
    assert cached.ctr.shape == full.ctr.shape
    assert rel_err(cached.logits, full.logits) <= RTOL
    assert rel_err(cached.ctr, full.ctr) <= RTOL
    assert rel_err(cached.ctcvr, full.ctcvr) <= RTOL
    assert rel_err(cached.hidden[cached_batch.request_rows()], full.hidden[full_batch.request_rows()]) <= RTOL


def random_case(seed: int, history: str = "bidirectional"):
    rng = np.random.default_rng(seed)
    normalizer = ["visible", "constant"][seed % 2]
    cfg = get_config("tiny", normalizer=normalizer, history=history, norm_constant=float(rng.integers(8, 200)),
                     seed=seed)
    requests = sample_requests(cfg, int(rng.integers(1, 6)), seed=seed)
    return cfg, MTGR(cfg), requests


@pytest.mark.parametrize("seed", range(10))
def test_cached_forward_equals_full_forward(seed):
    cfg, model, requests = random_case(seed)
    full_batch = build_batch(requests, cfg)
    full, captured = model(full_batch, capture_prefix=True)
    prefix = model.encode_prefix(full_batch)
    for layer in range(cfg.n_layers):
        assert torch.allclose(prefix.k[layer], captured.k[layer], rtol=RTOL, atol=1e-6)
        assert torch.allclose(prefix.v[layer], captured.v[layer], rtol=RTOL, atol=1e-6)

    hit_batch = build_batch([replace(r, n_cached=r.n_static) for r in requests], cfg)
    contiguous = model.forward_cached(hit_batch, prefix.as_prefix)
    assert_same_outputs(contiguous, hit_batch, full, full_batch)

    page_tokens = [1, 3, 8, 32][seed % 4]
    paged = page_static_kv(prefix, page_tokens=page_tokens, seed=seed)
    assert paged.pool.shape == (cfg.n_layers, paged.pool.shape[1], 2, page_tokens, cfg.n_heads, cfg.head_dim)
    assert_same_outputs(model.forward_cached(hit_batch, paged.prefix), hit_batch, full, full_batch)


@pytest.mark.parametrize("seed", range(4))
def test_mixed_hits_and_misses_capture_the_misses_prefix(seed):
    cfg, model, requests = random_case(100 + seed)
    full_batch = build_batch(requests, cfg)
    full, captured = model(full_batch, capture_prefix=True)
    rng = np.random.default_rng(seed)
    is_hit = rng.random(len(requests)) < 0.5
    mixed = [replace(r, n_cached=r.n_static if hit else 0) for r, hit in zip(requests, is_hit)]
    hits_only = StaticKV(
        k=[torch.cat([captured.request(b)[layer, 0] for b in range(len(requests)) if is_hit[b]] or
                     [captured.k[layer][:0]]) for layer in range(cfg.n_layers)],
        v=[torch.cat([captured.request(b)[layer, 1] for b in range(len(requests)) if is_hit[b]] or
                     [captured.v[layer][:0]]) for layer in range(cfg.n_layers)],
        offsets=torch.tensor(np.concatenate([[0], np.cumsum([r.n_cached for r in mixed])])),
    )
    mixed_batch = build_batch(mixed, cfg)
    scores, new_static = model.forward_cached(mixed_batch, page_static_kv(hits_only, 4, seed=seed).prefix,
                                              capture_new_static=True)
    assert_same_outputs(scores, mixed_batch, full, full_batch)
    assert new_static.lengths().tolist() == [0 if hit else r.n_static for r, hit in zip(requests, is_hit)]
    for b, hit in enumerate(is_hit):
        if not hit:
            assert rel_err(new_static.request(b), captured.request(b)) <= RTOL


@pytest.mark.parametrize("seed", range(8))
def test_causal_append_extends_a_prefix_exactly(seed):
    cfg, model, requests = random_case(200 + seed, history="causal")
    rng = np.random.default_rng(seed)
    full_batch = build_batch(requests, cfg)
    full, captured = model(full_batch, capture_prefix=True)
    n_cached = [int(rng.integers(0, r.n_static + 1)) for r in requests]
    # The cached part comes from an earlier request of the same user/version with fewer static tokens.
    earlier = [replace(r, request_key=r.request_key + 1, n_static=max(m, 1), n_rt=1, n_cand=1)
               for r, m in zip(requests, n_cached)]
    earlier_kv = model.encode_prefix(build_batch(earlier, cfg))
    prefix = StaticKV(
        k=[torch.cat([earlier_kv.request(b)[layer, 0, :m] for b, m in enumerate(n_cached)]) for layer in range(cfg.n_layers)],
        v=[torch.cat([earlier_kv.request(b)[layer, 1, :m] for b, m in enumerate(n_cached)]) for layer in range(cfg.n_layers)],
        offsets=torch.tensor(np.concatenate([[0], np.cumsum(n_cached)])),
    )
    append_batch = build_batch([replace(r, n_cached=m) for r, m in zip(requests, n_cached)], cfg)
    use_paged = seed % 2 == 1
    prefix_for_layer = page_static_kv(prefix, 4, seed=seed).prefix if use_paged else prefix.as_prefix
    scores, new_static = model.forward_cached(append_batch, prefix_for_layer, capture_new_static=True)
    assert_same_outputs(scores, append_batch, full, full_batch)
    for b, m in enumerate(n_cached):
        appended = torch.cat([prefix.request(b), new_static.request(b)], dim=2)
        assert rel_err(appended, captured.request(b)) <= RTOL


def test_same_static_version_gives_identical_prefix_new_version_differs():
    cfg = get_config("tiny")
    model = MTGR(cfg)
    base = RequestSpec(user_id=7, static_version=3, request_key=1, n_static=30, n_rt=4, n_cand=5)
    other_request = replace(base, request_key=99, n_rt=0, n_cand=2)
    filler = RequestSpec(user_id=8, static_version=0, request_key=5, n_static=12, n_rt=2, n_cand=1)
    first = model.encode_prefix(build_batch([base, filler], cfg))
    second = model.encode_prefix(build_batch([filler, other_request], cfg))
    assert torch.equal(first.request(0), second.request(1))
    new_version = model.encode_prefix(build_batch([replace(base, static_version=4)], cfg))
    assert (new_version.request(0) - first.request(0)).abs().max() > 1e-3
    other_user = model.encode_prefix(build_batch([replace(base, user_id=70)], cfg))
    assert (other_user.request(0) - first.request(0)).abs().max() > 1e-3


def test_prefix_of_wrong_length_is_refused():
    cfg = get_config("tiny")
    model = MTGR(cfg)
    requests = sample_requests(cfg, 3, seed=1)
    prefix = model.encode_prefix(build_batch(requests, cfg))
    shorter = [replace(r, n_static=r.n_static + 1, n_cached=r.n_static + 1) for r in requests]
    with pytest.raises(MtbenchError, match="lengths"):
        model.forward_cached(build_batch(shorter, cfg), prefix.as_prefix)
    hit_batch = build_batch([replace(r, n_cached=r.n_static) for r in requests], cfg)
    with pytest.raises(MtbenchError, match="None"):
        model.forward_cached(hit_batch, lambda layer: None)
    wrong_heads = ContiguousPrefix(prefix.k[0].flatten(1)[:, None], prefix.v[0].flatten(1)[:, None], prefix.offsets)
    with pytest.raises(MtbenchError, match="shape"):
        model.forward_cached(hit_batch, lambda layer: wrong_heads)
