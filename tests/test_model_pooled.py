"""The serving forward (`MTGR.forward_pooled`, `mtbench.model.pooled`) on the CPU: stores into the pool,
reads from it, and the padding the CUDA graphs rely on (graph replay itself needs CUDA)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mtbench.cache.manager import CacheConfig, CacheManager
from mtbench.cache.pool import KVShape
from mtbench.model import MTGR, build_batch, get_config, sample_requests
from mtbench.model.device_batch import batch_to_device
from mtbench.model.pooled import DeviceArange, ForwardGraphs, PooledInputs, forward_stage, pooled_forward

CFG = get_config("tiny")
PAGE = 8


@pytest.fixture(scope="module")
def model() -> MTGR:
    return MTGR(CFG).eval()


def _pool(pages: int) -> torch.Tensor:
    return torch.zeros(CFG.n_layers, pages, 2, PAGE, CFG.n_heads, CFG.head_dim)


def _inputs(kv: torch.Tensor, host_batch, table: np.ndarray, stores: list[list[int] | None]) -> PooledInputs:
    """Inputs of `host_batch`: hits read pages `table[b]`; request b stores its static rows into `stores[b]`."""
    offsets = host_batch.offsets.numpy()
    store_k = np.full(host_batch.num_rows, -1, dtype=np.int32)
    for b, pages in enumerate(stores):
        if pages is not None:
            position = np.arange(host_batch.requests[b].n_static)
            store_k[offsets[b]: offsets[b] + len(position)] = (np.asarray(pages)[position // PAGE] * 2 * PAGE
                                                               + position % PAGE)
    return PooledInputs.from_batch(kv, host_batch, table, store_k)


def _forward(model: MTGR, host_batch, inputs: PooledInputs, rows: int | None = None, requests: int | None = None):
    """forward_pooled's (hidden rows, candidates' logits), eagerly; with (requests, rows) given, the
    graphed forward's stages (`forward_stage`) run eagerly on `inputs` padded to that size instead."""
    if rows is None:
        layout, pool, _ = inputs.upload(DeviceArange())
        scores = model.forward_pooled(host_batch, layout, pool)
        return scores.hidden, scores.logits
    layout, pool, row_ids = inputs.padded(requests, rows).upload(DeviceArange())
    x = None
    for stage in range(len(model.layers) + 2):
        hidden = x
        x = forward_stage(model, stage, x, layout, pool, row_ids)
    return hidden[: inputs.num_rows], x[host_batch.cand.rows]


@pytest.mark.parametrize("seed", range(4))
def test_misses_store_their_prefix_and_hits_read_it_back(model: MTGR, seed: int) -> None:
    """Batch 1 computes every prefix into random pool pages; batch 2 (other R/C, same users) reads them:
    its scores equal the full forward's, and the pool holds exactly what encode_prefix computes."""
    specs = sample_requests(CFG, 5, seed=seed)
    pages_for = [-(-s.n_static // PAGE) for s in specs]
    rng = np.random.default_rng(seed)
    order = rng.permutation(sum(pages_for) + 3).tolist()
    pages = [order[sum(pages_for[:b]): sum(pages_for[: b + 1])] for b in range(len(specs))]
    kv = _pool(len(order))
    width = max(pages_for)
    misses = build_batch(specs, CFG)
    _forward(model, misses, _inputs(kv, misses, np.zeros((len(specs), width), np.int32), pages))
    static = model.encode_prefix(misses)
    for b, spec in enumerate(specs):
        position = torch.arange(spec.n_static)
        page = torch.tensor(pages[b])[position // PAGE]
        start = int(static.offsets[b])
        for layer in range(CFG.n_layers):
            assert torch.allclose(kv[layer, page, 0, position % PAGE], static.k[layer][start: start + spec.n_static], atol=1e-6)
            assert torch.allclose(kv[layer, page, 1, position % PAGE], static.v[layer][start: start + spec.n_static], atol=1e-6)
    later = [replace(s, request_key=s.request_key + 1, n_cached=s.n_static) for s in specs]
    hits = build_batch(later, CFG)
    table = np.zeros((len(specs), width), np.int32)
    for b, request_pages in enumerate(pages):
        table[b, : len(request_pages)] = request_pages
    cached = model.score(_forward(model, hits, _inputs(kv, hits, table, [None] * len(specs)))[0], hits)
    full_batch = build_batch([replace(s, n_cached=0) for s in later], CFG)
    full = model(full_batch)
    assert torch.allclose(cached.ctr, full.ctr, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_padding_changes_no_real_row(model: MTGR, seed: int) -> None:
    """The graphed forward's stages on padded inputs (an extra request owning the padding rows, empty
    extra requests; every row through every token MLP) give every real row's hidden state and
    candidate logits as the unpadded eager forward computes them, for a random mix of hits and misses
    and any padding."""
    rng = np.random.default_rng(seed)
    specs = sample_requests(CFG, 5, seed=seed)
    pages_for = [-(-s.n_static // PAGE) for s in specs]
    pages = [list(range(sum(pages_for[:b]), sum(pages_for[: b + 1]))) for b in range(len(specs))]
    kv, width = _pool(sum(pages_for)), max(pages_for)
    first = build_batch(specs, CFG)
    _forward(model, first, _inputs(kv, first, np.zeros((len(specs), width), np.int32), pages))
    hit = rng.random(len(specs)) < 0.5
    mixed = [replace(s, request_key=s.request_key + 1, n_cached=s.n_static if h else 0) for s, h in zip(specs, hit)]
    host_batch = build_batch(mixed, CFG)
    table = np.zeros((len(specs), width), np.int32)
    for b in np.flatnonzero(hit):
        table[b, : len(pages[b])] = pages[b]
    inputs = _inputs(kv, host_batch, table, [None] * len(specs))
    reference = _forward(model, host_batch, inputs)
    padded = _forward(model, host_batch, inputs, rows=inputs.num_rows + int(rng.integers(0, 50)),
                      requests=len(specs) + int(rng.integers(1, 5)))
    for graphed, eager in zip(padded, reference):
        assert torch.allclose(graphed, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_recompute_forward_over_empty_page_tables_equals_the_plain_forward(model: MTGR, seed: int) -> None:
    """Mode none's graphed forward: the inputs of a cache-less manager (`blank_reads`: empty page tables over
    a one-page stand-in pool, nothing stored) through the pooled forward, eager and as the graphs' padded
    stages, give the plain forward's scores for random batches, and leave the stand-in pool untouched."""
    rng = np.random.default_rng(seed)
    shape = KVShape(CFG.n_layers, CFG.n_heads, CFG.head_dim, torch.float32, PAGE)
    manager = CacheManager(CacheConfig(mode="none"), shape, "cpu", CFG.max_static)
    host_batch = build_batch(sample_requests(CFG, int(rng.integers(1, 7)), seed=seed), CFG)
    reads = manager.blank_reads(host_batch.batch_size)
    assert reads.page_table.shape == (host_batch.batch_size, 0) and reads.kv.shape[1] == 1
    inputs = PooledInputs.from_batch(reads.kv, host_batch, reads.page_table)
    plain = model(host_batch)
    padded = {"rows": inputs.num_rows + int(rng.integers(0, 40)),
              "requests": host_batch.batch_size + int(rng.integers(1, 4))}
    for hidden, _ in (_forward(model, host_batch, inputs), _forward(model, host_batch, inputs, **padded)):
        scores = model.score(hidden, host_batch)
        assert torch.allclose(scores.ctr, plain.ctr, rtol=1e-5, atol=1e-6)
        assert torch.allclose(scores.ctcvr, plain.ctcvr, rtol=1e-5, atol=1e-6)
    assert not reads.kv.any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (graph replay)")
def test_graphed_recompute_forward_equals_the_plain_forward_on_cuda() -> None:
    """Mode none on CUDA: random batches through the graphs over a cache-less manager's inputs give the
    plain forward's scores (fp32, one capture per bucket, then replays)."""
    model = MTGR(CFG).eval().to("cuda")
    shape = KVShape(CFG.n_layers, CFG.n_heads, CFG.head_dim, torch.float32, PAGE)
    manager = CacheManager(CacheConfig(mode="none"), shape, "cuda", CFG.max_static)
    graphs = ForwardGraphs(max_requests=8, row_bucket=64, max_rows=4096)
    for seed in range(6):
        host_batch = build_batch(sample_requests(CFG, 1 + seed % 4, seed=seed), CFG, "cpu")
        reads = manager.blank_reads(host_batch.batch_size)
        inputs = PooledInputs.from_batch(reads.kv, host_batch, reads.page_table)
        assert graphs.accepts(inputs)
        graphed = pooled_forward(model, host_batch, inputs, DeviceArange(), graphs=graphs)
        plain = model(batch_to_device(host_batch, torch.device("cuda")))
        assert torch.allclose(graphed.ctr, plain.ctr, rtol=1e-5, atol=1e-6)
        assert torch.allclose(graphed.ctcvr, plain.ctcvr, rtol=1e-5, atol=1e-6)
    assert graphs.replays == 6 and graphs.captures == 2  # rows 77-147: buckets of 128 and 192


@pytest.mark.parametrize("seed", range(4))
def test_embed_rows_equals_embed(model: MTGR, seed: int) -> None:
    """Every row through every group's MLP, keeping its own group's result, is the per-group embedding."""
    rng = np.random.default_rng(seed)
    specs = [replace(s, n_cached=int(rng.integers(0, 2)) * s.n_static) for s in sample_requests(CFG, 6, seed=seed)]
    host_batch = build_batch(specs, CFG)
    inputs = _inputs(_pool(1), host_batch, np.zeros((len(specs), 1), np.int32), [None] * len(specs))
    rows = model.embed_rows(torch.from_numpy(inputs.group_ids), torch.from_numpy(inputs.row_ids))
    assert torch.allclose(rows, model.embed(host_batch), rtol=1e-6, atol=1e-6)


def test_padding_and_bucket_sizes() -> None:
    graphs = ForwardGraphs(max_requests=4, row_bucket=16, max_rows=64)
    assert [graphs.padded_rows(n) for n in (0, 1, 16, 17, 64)] == [16, 16, 16, 32, 64]
    host_batch = build_batch(sample_requests(CFG, 3, seed=0), CFG)
    inputs = _inputs(_pool(8), host_batch, np.zeros((3, 2), np.int32), [None] * 3)
    padded = inputs.padded(5, inputs.num_rows + 9)
    assert padded.num_requests == 5 and padded.num_rows == inputs.num_rows + 9
    assert padded.offsets.tolist() == inputs.offsets.tolist() + [inputs.num_rows, inputs.num_rows + 9]
    assert (padded.store_k_rows[inputs.num_rows:] == -1).all() and (padded.lengths[3:] == 0).all()
    assert padded.row_ids.shape == (inputs.num_rows + 9, 4) and (padded.row_ids[inputs.num_rows:] == 0).all()
    assert not graphs.accepts(inputs), "CPU tensors never take the graph path"
    with pytest.raises(ValueError):
        inputs.padded(3, inputs.num_rows)  # no room for the padding request


@pytest.mark.parametrize("seed", range(4))
def test_every_uploaded_field_starts_16_byte_aligned(seed: int) -> None:
    """Triton specialises pointers on 16-byte alignment: fields packed at batch-dependent offsets would
    compile new kernel variants mid-run. Every view of the packed inputs starts aligned, and holds its field."""
    rng = np.random.default_rng(seed)
    kv = _pool(8)
    batch = build_batch(sample_requests(CFG, int(rng.integers(1, 7)), seed=seed), CFG, "cpu")
    table = rng.integers(0, 8, size=(batch.batch_size, int(rng.integers(1, 4)))).astype(np.int32)
    inputs = _inputs(kv, batch, table, [None] * batch.batch_size)
    packed = torch.from_numpy(inputs.packed())
    rows, pool, row_ids = inputs.views(packed, torch.arange(inputs.num_rows, dtype=torch.int32))
    views = {"offsets": rows.offsets, "n_new_static": rows.n_new_static, "n_rt": rows.n_rt, "group_ids": rows.group_ids,
             "page_table": pool.page_table, "lengths": pool.lengths, "store_k_rows": pool.store_k_rows,
             "store_v_rows": pool.store_v_rows, "row_ids": row_ids}
    for name, view in views.items():
        assert view.data_ptr() % 16 == 0, name
        assert np.array_equal(view.numpy(), getattr(inputs, name)), name
