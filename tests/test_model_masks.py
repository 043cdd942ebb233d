"""The MTGR dynamic mask, candidate independence and Group LayerNorm, checked by perturbing inputs and
watching exactly which outputs move; one HSTU layer against a hand-written dense implementation."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtbench.model import GROUP_C, GROUP_R, GROUP_S, GROUP_U, MTGR, GroupFeatures, build_batch, get_config, sample_requests

MOVE_THRESHOLD = 1e-5


def perturb_row(batch, group_name: str, row: int, cfg):
    """Batch with the features of computed row `row` (of group `group_name`) changed to another table row."""
    features: GroupFeatures = getattr(batch, group_name)
    at = int((features.rows == row).nonzero()[0, 0])
    ids = features.ids.clone()
    table_rows = cfg.n_user_tokens * cfg.user_table_size if group_name == "user" else cfg.table_size
    ids[at, 0] = (ids[at, 0] + 1) % table_rows
    return replace(batch, **{group_name: GroupFeatures(rows=features.rows, ids=ids)})


def moved_rows(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (after - before).abs().amax(dim=1) > MOVE_THRESHOLD


def request_rows(batch, b: int) -> range:
    return range(int(batch.offsets[b]), int(batch.offsets[b + 1]))


GROUP_FEATURES = {GROUP_U: "user", GROUP_S: "static_seq", GROUP_R: "realtime", GROUP_C: "cand"}


def expected_movers(batch, b: int, row: int, causal: bool) -> torch.Tensor:
    """Which rows must move when token `row` of request b changes (all others must not)."""
    groups, start = batch.group_ids, int(batch.offsets[b])
    expected = torch.zeros(batch.num_rows, dtype=torch.bool)
    mine = torch.zeros_like(expected)
    mine[start:int(batch.offsets[b + 1])] = True
    group = int(groups[row])
    if group in (GROUP_U, GROUP_S):
        later_static = (torch.arange(batch.num_rows) >= row) if causal else torch.ones_like(mine)
        expected = mine & ((groups >= GROUP_R) | later_static)
    elif group == GROUP_R:
        expected = mine & ((groups == GROUP_C) | ((groups == GROUP_R) & (torch.arange(batch.num_rows) >= row)))
    else:
        expected[row] = True
    return expected


@pytest.mark.parametrize("history", ["bidirectional", "causal"])
@pytest.mark.parametrize("seed", range(5))
def test_each_mask_rule_by_perturbation(history, seed):
    cfg = get_config("tiny", history=history, seed=seed, normalizer=["visible", "constant"][seed % 2])
    model = MTGR(cfg)
    rng = np.random.default_rng(seed)
    requests = [replace(r, n_rt=max(r.n_rt, 2), n_cand=max(r.n_cand, 2))
                for r in sample_requests(cfg, int(rng.integers(2, 5)), seed=seed)]
    batch = build_batch(requests, cfg)
    base = model(batch)
    for group in (GROUP_U, GROUP_S, GROUP_R, GROUP_C):
        b = int(rng.integers(0, len(requests)))
        candidates = [row for row in request_rows(batch, b) if int(batch.group_ids[row]) == group]
        if not candidates:
            continue
        row = int(rng.choice(candidates))
        changed = model(perturb_row(batch, GROUP_FEATURES[group], row, cfg))
        moved = moved_rows(base.hidden, changed.hidden)
        assert torch.equal(moved, expected_movers(batch, b, row, history == "causal")), (group, row)
        score_moved = (changed.logits - base.logits).abs().amax(1) > MOVE_THRESHOLD
        assert torch.equal(score_moved, moved[batch.cand.rows])


@pytest.mark.parametrize("seed", range(6))
def test_swapping_two_candidates_swaps_their_scores_only(seed):
    cfg = get_config("tiny", seed=seed)
    model = MTGR(cfg)
    rng = np.random.default_rng(seed)
    requests = [replace(r, n_cand=max(r.n_cand, 2)) for r in sample_requests(cfg, int(rng.integers(1, 5)), seed=seed)]
    batch = build_batch(requests, cfg)
    base = model(batch)
    b = int(rng.integers(0, len(requests)))
    first = int(batch.cand_offsets[b])
    i, j = first + rng.choice(requests[b].n_cand, size=2, replace=False)
    ids = batch.cand.ids.clone()
    ids[[i, j]] = ids[[j, i]]
    swapped = model(replace(batch, cand=GroupFeatures(rows=batch.cand.rows, ids=ids)))
    order = torch.arange(len(base.ctr))
    order[[i, j]] = order[[j, i]]
    for name in ("ctr", "ctcvr", "logits"):
        assert torch.allclose(getattr(swapped, name), getattr(base, name)[order], rtol=1e-5, atol=1e-6)
    not_cand = batch.group_ids != GROUP_C
    assert torch.allclose(swapped.hidden[not_cand], base.hidden[not_cand], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group", [GROUP_U, GROUP_S, GROUP_R, GROUP_C])
def test_group_layernorm_uses_the_parameters_of_each_group(group):
    cfg = get_config("tiny", seed=3)
    model = MTGR(cfg)
    batch = build_batch(sample_requests(cfg, 3, n_rt=3, n_cand=4, seed=3), cfg)
    base = model(batch)
    groups = [model.layers[0].norm_in.weight, model.layers[0].norm_out.weight]
    assert all(not torch.allclose(w[0], w[g]) for w in groups for g in (1, 2, 3)), "GLN groups start distinct"
    with torch.no_grad():
        model.layers[-1].norm_in.weight[group] += 0.5
    moved = moved_rows(base.hidden, model(batch).hidden)
    ids = batch.group_ids
    # In the last layer a row reads the normalised rows it attends to: U/S feed everyone, R feeds R and C.
    expected = {GROUP_U: torch.ones_like(moved), GROUP_S: torch.ones_like(moved),
                GROUP_R: ids >= GROUP_R, GROUP_C: ids == GROUP_C}[group]
    assert torch.equal(moved, expected)


def dense_layer_reference(layer, x, batch, alpha):
    """One HSTU layer for every request, written out densely from DESIGN.md section 2 (normalise, then gate)."""
    out = torch.empty_like(x)
    d = x.shape[1]
    heads, head_dim = layer.n_heads, layer.head_dim
    for b in range(batch.batch_size):
        rows = slice(int(batch.offsets[b]), int(batch.offsets[b + 1]))
        xb, g = x[rows], batch.group_ids[rows]
        normed = F.layer_norm(xb, (d,)) * layer.norm_in.weight[g] + layer.norm_in.bias[g]
        u, v, q, k = F.silu(normed @ layer.uvqk.weight.T + layer.uvqk.bias).split(d, dim=1)
        n = xb.shape[0]
        n_static, n_rt = int(batch.n_static[b]), int(batch.n_rt[b])
        mask = torch.zeros(n, n)
        mask[:n_static, :n_static] = 1
        for i in range(n_static, n_static + n_rt):
            mask[i, :i + 1] = 1
        for i in range(n_static + n_rt, n):
            mask[i, :n_static + n_rt] = 1
            mask[i, i] = 1
        qh, kh, vh = (t.view(n, heads, head_dim).transpose(0, 1) for t in (q, k, v))
        weights = F.silu(alpha * qh @ kh.transpose(1, 2)) * mask / mask.sum(1, keepdim=True)
        o = (weights @ vh).transpose(0, 1).reshape(n, d)
        gated = (F.layer_norm(o, (d,)) * layer.norm_out.weight[g] + layer.norm_out.bias[g]) * u
        out[rows] = xb + gated @ layer.out.weight.T + layer.out.bias
    return out


@pytest.mark.parametrize("seed", range(3))
def test_hstu_layer_matches_a_dense_reference(seed):
    cfg = get_config("tiny", seed=seed)
    model = MTGR(cfg)
    batch = build_batch(sample_requests(cfg, 3, seed=seed), cfg)
    x = torch.randn(batch.num_rows, cfg.d_model, generator=torch.Generator().manual_seed(seed))
    rows = model._row_layout(batch, total_normaliser=False)
    with torch.no_grad():
        got, _, _ = model.layers[0](x, rows, model.attention_spec, lambda: None)
        want = dense_layer_reference(model.layers[0], x, batch, cfg.head_dim ** -0.5)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
