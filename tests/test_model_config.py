"""Presets, FLOP counts, batches, features and the refusals of non-exact cached settings."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kernels.hstu_attention_ref import visible_key_mask
from mtbench.errors import MtbenchError
from mtbench.model import (
    MTGR,
    RequestSpec,
    attention_pairs,
    build_batch,
    count_parameters,
    get_config,
    request_flops,
    sample_requests,
)
from mtbench.model.features import hash_columns
from mtbench.trace import TraceLimits


@pytest.mark.parametrize(("name", "layers", "d_model", "heads"), [
    ("small", 3, 512, 2), ("medium", 5, 768, 3), ("large", 15, 768, 3)])
def test_paper_presets_have_the_paper_shapes(name, layers, d_model, heads):
    cfg = get_config(name)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim) == (layers, d_model, heads, 256)
    assert (cfg.n_user_tokens, cfg.max_seq, cfg.max_rt) == (32, 1000, 100)
    with torch.device("meta"):
        model = MTGR(cfg)
    assert len(model.layers) == layers
    assert model.layers[0].uvqk.weight.shape == (4 * d_model, d_model)
    assert model.layers[0].out.weight.shape == (d_model, d_model)
    assert model.layers[0].norm_in.weight.shape == (4, d_model)
    assert cfg.kv_bytes_per_token(torch.bfloat16) == layers * 2 * d_model * 2
    assert cfg.limits() == TraceLimits(max_static=1032, max_rt=100, max_cand=cfg.max_cand)
    params = count_parameters(cfg)
    assert params.total == sum(p.numel() for p in model.parameters())


def test_large_preset_kv_bytes_match_the_design_card():
    # DESIGN.md: MTGR-large, 1000 static tokens, bf16 = 15 x 1000 x 2 x 768 x 2 B = 46 MB.
    assert get_config("large").kv_bytes(1000, torch.bfloat16) == 46_080_000


def test_config_errors_are_clear():
    with pytest.raises(MtbenchError, match="unknown model preset 'huge'"):
        get_config("huge")
    with pytest.raises(MtbenchError, match="unknown model config field"):
        get_config("tiny", n_layer=3)
    with pytest.raises(MtbenchError, match="not divisible"):
        get_config("tiny", d_model=33)
    with pytest.raises(MtbenchError, match="normalizer"):
        get_config("tiny", normalizer="softmax")
    with pytest.raises(MtbenchError, match="history"):
        get_config("tiny", history="sideways")
    assert get_config("tiny", max_rt=None).max_rt == 100


@pytest.mark.parametrize("history", ["bidirectional", "causal"])
@pytest.mark.parametrize("seed", range(3))
def test_flop_counts_match_a_flop_counter_and_the_mask(history, seed):
    cfg = get_config("tiny", history=history)
    model = MTGR(cfg)
    rng = np.random.default_rng(seed)
    requests = sample_requests(cfg, 3, seed=seed)
    if history == "causal":
        cached = [replace(r, n_cached=int(rng.integers(0, r.n_static + 1))) for r in requests]
    else:
        cached = [replace(r, n_cached=r.n_static if rng.random() < 0.5 else 0) for r in requests]
    for specs in (requests, cached):
        batch = build_batch(specs, cfg)
        counts = [request_flops(cfg, r.n_static, r.n_rt, r.n_cand, r.n_cached) for r in specs]
        kv = model.encode_prefix(build_batch(requests, cfg))
        prefix = [kv.as_prefix(layer) for layer in range(cfg.n_layers)]
        prefix = [replace(p, k=torch.cat([p.k[int(p.offsets[b]):int(p.offsets[b]) + r.n_cached] for b, r in enumerate(specs)]),
                          v=torch.cat([p.v[int(p.offsets[b]):int(p.offsets[b]) + r.n_cached] for b, r in enumerate(specs)]),
                          offsets=torch.tensor(np.concatenate([[0], np.cumsum([r.n_cached for r in specs])])))
                  for p in prefix]
        with FlopCounterMode(display=False) as counter:
            model.forward_cached(batch, prefix.__getitem__)
        measured = counter.get_flop_counts()["Global"]
        dense = sum(v for op, v in measured.items() if op in (torch.ops.aten.mm, torch.ops.aten.addmm))
        assert dense == sum(c.linear for c in counts)
        n_rows = batch.offsets[1:] - batch.offsets[:-1]
        mask = visible_key_mask(batch.n_cached, batch.n_new_static, batch.n_rt, n_rows, int(n_rows.max()),
                                int(batch.n_cached.max()), history == "causal")
        assert int(mask.sum()) == sum(c.attention_pairs for c in counts)
        assert sum(c.attention for c in counts) == cfg.n_layers * 4 * cfg.d_model * int(mask.sum())


def test_miss_costs_more_than_hit_and_pairs_formula():
    cfg = get_config("large")
    miss = request_flops(cfg, 1032, 100, 200)
    hit = request_flops(cfg, 1032, 100, 200, n_cached=1032)
    assert hit.computed_tokens == 300 and miss.computed_tokens == 1332
    assert miss.total > 4 * hit.total
    assert attention_pairs(3, 2, 2) == 3 * 3 + (3 + 1) + (3 + 2) + 2 * (3 + 2 + 1)
    assert attention_pairs(3, 0, 1, history="causal") == 1 + 2 + 3 + 4


def test_build_batch_layout_and_errors():
    cfg = get_config("tiny")
    requests = [RequestSpec(1, 0, 5, n_static=10, n_rt=2, n_cand=3, n_cached=10),
                RequestSpec(2, 0, 6, n_static=3, n_rt=0, n_cand=1)]
    batch = build_batch(requests, cfg)
    assert batch.offsets.tolist() == [0, 5, 9]
    assert batch.group_ids.tolist() == [2, 2, 3, 3, 3, 0, 0, 0, 3]
    assert batch.cand.rows.tolist() == [2, 3, 4, 8] and batch.cand_offsets.tolist() == [0, 3, 4]
    assert batch.static_rows.tolist() == [5, 6, 7] and batch.new_static_offsets.tolist() == [0, 0, 3]
    bad = {"n_static": 2000, "n_rt": 101, "n_cand": 0, "n_cached": 11}
    for field, value in bad.items():
        with pytest.raises(MtbenchError, match=f"request 0 .*{field}={value}"):
            build_batch([replace(requests[0], **{field: value})], cfg)
    with pytest.raises(MtbenchError, match="no requests"):
        build_batch([], cfg)


def test_static_features_ignore_the_request_and_follow_the_version():
    cfg = get_config("tiny")
    base = RequestSpec(4, 1, 10, n_static=40, n_rt=3, n_cand=2)
    one = build_batch([base], cfg)
    other = build_batch([replace(base, request_key=11, n_rt=0, n_cand=5)], cfg)
    longer = build_batch([replace(base, n_static=60)], cfg)
    assert torch.equal(one.user.ids, other.user.ids) and torch.equal(one.static_seq.ids, other.static_seq.ids)
    assert torch.equal(longer.static_seq.ids[:36], one.static_seq.ids)  # appending keeps earlier tokens
    assert not torch.equal(one.realtime.ids, build_batch([replace(base, request_key=11)], cfg).realtime.ids)
    new_version = build_batch([replace(base, static_version=2)], cfg)
    assert not torch.equal(one.static_seq.ids, new_version.static_seq.ids)
    assert (one.user.ids[:, 0] // cfg.user_table_size).tolist() == list(range(cfg.n_user_tokens))


def _per_token_ids(cfg, user, version_or_key, position, group):
    """The features' definition, one token at a time: every column folded into one hash per token."""
    def bucket(salt, *values, size):
        return int(hash_columns(salt, *(np.array([v], dtype=np.int64) for v in values))[0] % np.uint64(size))

    def item_side(raw):
        return [bucket("item_row", raw, size=cfg.table_size), bucket("category", raw, size=cfg.n_categories)]

    half = max(cfg.n_time_buckets // 2, 1)
    if group == "U":
        return [position * cfg.user_table_size + bucket("user_feature", user, version_or_key, position,
                                                         size=cfg.user_table_size)]
    if group == "S":
        raw = bucket("static_item", user, version_or_key, position, size=cfg.n_raw_items)
        action = bucket("static_action", user, version_or_key, position, size=cfg.n_actions)
        return item_side(raw) + [action, cfg.n_time_buckets - half + min(int(np.log2(position + 1)), half - 1)]
    if group == "R":
        raw = bucket("rt_item", user, version_or_key, position, size=cfg.n_raw_items)
        action = bucket("rt_action", user, version_or_key, position, size=cfg.n_actions)
        return item_side(raw) + [action, min(int(np.log2(position + 1)), cfg.n_time_buckets - half - 1)]
    raw = bucket("cand_item", user, version_or_key, position, size=cfg.n_raw_items)
    item, category = item_side(raw)
    return [item, category, bucket("user_item", user, raw, size=cfg.table_size),
            bucket("user_category", user, category, size=cfg.table_size)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_features_equal_the_per_token_definition(seed):
    """build_batch folds each request's columns once; every id must still be the per-token hash."""
    cfg = replace(get_config("tiny"), n_categories=50, table_size=1000)  # sizes that are not powers of two too
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(int(rng.integers(1, 6))):
        n_static = int(rng.integers(1, cfg.max_static + 1))
        requests.append(RequestSpec(int(rng.integers(-2**40, 2**40)), int(rng.integers(0, 4)), int(rng.integers(0, 2**50)),
                                    n_static=n_static, n_rt=int(rng.integers(0, 6)), n_cand=int(rng.integers(1, 6)),
                                    n_cached=int(rng.integers(0, n_static + 1))))
    batch = build_batch(requests, cfg)
    expected: dict[int, list[int]] = {}
    row = 0
    for r in requests:
        for position in range(r.n_cached, r.n_static):
            is_user = position < cfg.n_user_tokens
            expected[row] = _per_token_ids(cfg, r.user_id, r.static_version,
                                           position if is_user else position - cfg.n_user_tokens, "U" if is_user else "S")
            row += 1
        for group, count in (("R", r.n_rt), ("C", r.n_cand)):
            for position in range(count):
                expected[row] = _per_token_ids(cfg, r.user_id, r.request_key, position, group)
                row += 1
    assert row == batch.num_rows
    for group in (batch.user, batch.static_seq, batch.realtime, batch.cand):
        for index, ids in zip(group.rows.tolist(), group.ids.tolist()):
            assert ids == expected[index], index


def test_total_normalizer_runs_full_forward_and_is_refused_by_cached_paths():
    cfg = get_config("tiny", normalizer="total")
    model = MTGR(cfg)
    requests = [RequestSpec(u, 0, u, n_static=20 + u, n_rt=5 - u, n_cand=3) for u in range(3)]  # 28 tokens each
    batch = build_batch(requests, cfg)
    constant = MTGR(get_config("tiny", normalizer="constant", norm_constant=28.0))
    assert torch.allclose(model(batch).logits, constant(batch).logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(MtbenchError, match="normalizer 'total'"):
        model.encode_prefix(batch)
    with pytest.raises(MtbenchError, match="normalizer 'total'"):
        model(batch, capture_prefix=True)
    with pytest.raises(MtbenchError, match="normalizer 'total'"):
        model.forward_cached(batch, lambda layer: None)


def test_bidirectional_partial_prefix_is_refused_causal_allows_it():
    requests = [RequestSpec(1, 0, 1, n_static=20, n_rt=2, n_cand=2, n_cached=20),
                RequestSpec(2, 0, 1, n_static=20, n_rt=2, n_cand=2, n_cached=7)]
    cfg = get_config("tiny")
    with pytest.raises(MtbenchError, match="request 1 .*n_cached=7 of n_static=20.*not exact"):
        MTGR(cfg).forward_cached(build_batch(requests, cfg), lambda layer: None)
    with pytest.raises(MtbenchError, match="use forward_cached"):
        MTGR(cfg)(build_batch(requests, cfg))
    causal = get_config("tiny", history="causal")
    model = MTGR(causal)
    kv = model.encode_prefix(build_batch([replace(r, n_cached=0) for r in requests], causal))
    prefix = replace(kv.as_prefix(0), offsets=torch.tensor([0, 20, 27]))
    scores = model.forward_cached(build_batch(requests, causal), lambda layer: replace(
        kv.as_prefix(layer), k=kv.k[layer][:27], v=kv.v[layer][:27], offsets=prefix.offsets))
    assert scores.ctr.shape == (4,)
