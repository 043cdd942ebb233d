"""`mtbench replay --history causal` on the CPU (tiny causal model, fp32): partial hits read the cached
m tokens of an entry from the pool, compute the other n - m, and extend the entry in place.

- every request's scores equal the full forward (fp32 rule) on random traces whose histories grow,
  and the replay's outcomes and reused / computed tokens equal the simulator's, request by request;
  entries grow past a page while the pipelined batch before holds them (the growth rule lets them);
- the one case the growth rule refuses: an entry that S3-FIFO would not take back at its old size
  stays as it is (never leaves the GPU) while an earlier batch in flight reads it, and leaves only
  once no batch holds it;
- after a growth the entry's pages hold the full forward's K/V of all n tokens (a partly filled last
  page continued, new pages appended), on the GPU tier and through the host copy (write-back and
  write-through);
- the graphed forward's padded stages serve partial hits and store the appended tokens exactly;
- the CLI: a trace made by `trace reversion --period never --history causal` from the MovieLens
  sample replays with partial hits and passes --verify; a bidirectional replay of it is refused.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mtbench.cache.control import ControlPlane, Outcome, Request, TierSettings, run_batches
from mtbench.cache.manager import BatchPlan, CacheConfig, CacheManager
from mtbench.cache.pool import KVShape
from mtbench.cache.transfer import TransferFailed
from mtbench.cli import app
from mtbench.errors import MtbenchError
from mtbench.model import MTGR, RequestSpec, build_batch, get_config
from mtbench.model.pooled import DeviceArange, PooledInputs, forward_stage, pooled_forward
from mtbench.replay.engine import ReplayOptions, replay_run
from mtbench.replay.verify import FP32_RTOL
from mtbench.sim.costmodel import CostModel
from mtbench.sim.simulator import Workload, control_config, request_batches, simulate
from mtbench.trace import open_trace

CFG = get_config("tiny", history="causal")
PAGE = 8
SHAPE = KVShape(CFG.n_layers, CFG.n_heads, CFG.head_dim, torch.float32, PAGE)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> MTGR:
    torch.manual_seed(0)
    return MTGR(CFG).eval()


def growing_trace(path: Path, seed: int, requests: int = 60, users: int = 9) -> Path:
    """Users whose history grows by 0-6 tokens per request (0: a full hit), some with a new static
    version half-way (stale entries), page-unaligned lengths throughout."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, requests).astype(np.int64)
    growth = rng.integers(0, 7, requests) * (rng.random(requests) < 0.8)
    n_static = np.empty(requests, dtype=np.int64)
    start = CFG.n_user_tokens + rng.integers(1, 30, users)
    for u in range(users):
        rows = np.flatnonzero(user == u)
        n_static[rows] = start[u] + np.cumsum(growth[rows])
    bumps = rng.random(users) < 0.3
    version = ((np.arange(requests) >= requests // 2) & bumps[user]).astype(np.int64)
    pd.DataFrame({"ts": np.sort(rng.random(requests) * 50.0), "user_id": user, "static_version": version,
                  "n_static": n_static, "n_rt": rng.integers(0, 4, requests).astype(np.int64),
                  "n_cand": rng.integers(1, 4, requests).astype(np.int64)}).to_parquet(path, index=False)
    return path


def _cache(mode: str, gpu_pages: int, host_pages: int = 60, **kw) -> CacheConfig:
    return CacheConfig(mode=mode, policy=kw.pop("policy", "lru"), gpu_capacity=gpu_pages * SHAPE.page_bytes,
                       host_capacity=host_pages * SHAPE.page_bytes, append=True, **kw)


def _fail_odd_users(job, direction: str) -> None:
    if direction == "load" and job.key[0] % 2:
        raise TransferFailed("injected failure")


CONFIGS = [  # (cache config, fault hook)
    (dict(mode="gpu", gpu_pages=40), None),
    (dict(mode="tiered", gpu_pages=12), None),
    (dict(mode="tiered", gpu_pages=12, layout="paged", write_back=False, inclusive=False, policy="arc"), None),
    (dict(mode="tiered", gpu_pages=9, layout="user", policy="sieve"), None),  # GPU tier of ~1 entry: scratch pages
    (dict(mode="tiered", gpu_pages=12), _fail_odd_users),
]


@pytest.mark.parametrize("seed", range(2))
def test_causal_replay_equals_the_full_forward_and_the_simulator(tmp_path: Path, model: MTGR, seed: int) -> None:
    path = growing_trace(tmp_path / "t.parquet", seed)
    trace = open_trace(path, CFG.limits())
    options = ReplayOptions(batch_size=5, keep_all_scores=True, page_tokens=PAGE)
    reference = replay_run(model, trace, CacheConfig(mode="none"), options, "none")
    columns = trace.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    workload = Workload.from_columns(columns, SHAPE.sizer)
    loaded_bytes = held_growths = 0
    for kwargs, hook in CONFIGS:
        config = _cache(**kwargs)
        result = replay_run(model, trace, config, options, config.mode, fault_hook=hook)
        row, records = result.row, result.records
        assert row["partial_hits"] > 0, f"{kwargs}: no partial hit, the test would prove nothing"
        loaded_bytes += row["bytes_h2d"]
        assert set(result.samples) == set(range(trace.num_rows))
        for index, sample in result.samples.items():
            expected = reference.samples[index]
            error = float((sample.ctr - expected.ctr).abs().max() / expected.ctr.abs().max())
            assert error < FP32_RTOL, (kwargs, index, sample.outcome, error)
        assert (records["reused_tokens"] + records["computed_tokens"] == records["n_static"]).all()
        assert row["reused_tokens"] == records["reused_tokens"].sum()
        assert row["token_hit_ratio"] == pytest.approx(row["reused_tokens"] / records["n_static"].sum())
        if hook is not None:
            assert row["transfer_fallbacks"] > 0
            continue
        host = config.host_capacity if config.mode == "tiered" else 0
        settings = TierSettings(write_back=config.write_back, inclusive=config.inclusive, append=True, lookahead=1,
                                batch_size=options.batch_size)
        simulated, recomputed = simulate(workload, config.policy, config.gpu_capacity, host, settings,
                                         CostModel.default(CFG, "fp32"), keep_outcomes=True,
                                         host_geometry=config.control(SHAPE).host_geometry)
        assert records["outcome"].tolist() == [Outcome(o).label for o in simulated.outcomes], kwargs
        assert records["computed_tokens"].tolist() == recomputed.tolist(), kwargs
        assert row["partial_hits"] == simulated.partial_hits and row["reused_tokens"] == simulated.reused_tokens
        held_growths += _held_page_growths(workload, config, settings)
    assert loaded_bytes > 0, "no entry came back from the host: the host paths were not exercised"
    assert held_growths > 0, "no entry grew past a page while an earlier batch held it: the rule was not exercised"


def _held_page_growths(workload: Workload, config: CacheConfig, settings: TierSettings) -> int:
    """Entries grown onto new pages (not loaded from the host) while the batch planned before still held
    them, in the simulator's run of the replay's decisions (lookahead 1: batch b is planned before
    batch b - 1 is released)."""
    host = config.host_capacity if config.mode == "tiered" else 0
    plane = ControlPlane(control_config(workload, config.policy, config.gpu_capacity, host, settings,
                                        host_geometry=config.control(SHAPE).host_geometry))
    plans = []
    run_batches(plane, request_batches(workload, settings.batch_size), plans.append)
    held = 0
    for before, plan in zip(plans, plans[1:]):
        holders = {request.key for request in before.requests}
        held += sum(1 for store in plan.stores.values()
                    if store.first > 0 and not store.scratch and store.key not in plan.loaded and store.key in holders
                    and SHAPE.pages_for(store.n_tokens) > SHAPE.pages_for(store.first))
    return held


# ---------------------------------------------------------------- pages after growth
def _serve(manager: CacheManager, model: MTGR, requests: list[Request]) -> BatchPlan:
    """One batch through the manager and the pooled forward, as the replay engine runs it."""
    plan = manager.plan(requests)
    _forward(manager, model, plan)
    return plan


def _forward(manager: CacheManager, model: MTGR, plan: BatchPlan) -> float:
    """Refresh, pooled forward and release of a planned batch; returns the scores' largest relative
    error against the full forward."""
    manager.refresh(plan)
    specs = [RequestSpec(r.key[0], r.key[1], 7 + i, r.n_static, 2, 3, n_cached=plan.cached[i])
             for i, r in enumerate(plan.requests)]
    host_batch = build_batch(specs, CFG)
    reads = manager.pool_inputs(plan, host_batch.offsets.numpy())
    scores = pooled_forward(model, host_batch, PooledInputs.from_batch(reads.kv, host_batch, reads.page_table,
                                                                       reads.store_k_rows), DeviceArange())
    manager.release(plan)
    manager.check_invariants()
    full = model(build_batch([replace(spec, n_cached=0) for spec in specs], CFG)).ctr
    return float((scores.ctr - full).abs().max() / full.abs().max())


def _entry_kv(manager: CacheManager, key: tuple[int, int]) -> torch.Tensor:
    """[layers, 2, n, H, D] of the GPU entry `key`, read through its page table."""
    entry = manager.gpu[key]
    assert len(entry.pages) == SHAPE.pages_for(entry.n_tokens)
    rows = torch.as_tensor(SHAPE.k_rows(entry.pages, entry.n_tokens)).long()
    kv = manager.blank_reads(1).kv
    flat = [kv[layer].view(-1, SHAPE.heads * SHAPE.head_dim) for layer in range(SHAPE.layers)]
    return torch.stack([torch.stack([f[rows], f[rows + PAGE]]) for f in flat]).unflatten(-1, (SHAPE.heads, SHAPE.head_dim))


def _full_kv(model: MTGR, key: tuple[int, int], n: int) -> torch.Tensor:
    return model.encode_prefix(build_batch([RequestSpec(key[0], key[1], 0, n, 0, 1)], CFG)).request(0)


@pytest.mark.parametrize("write_back", [True, False])
def test_grown_entries_hold_the_full_forwards_kv(model: MTGR, write_back: bool) -> None:
    """A 13-token entry (page 1 holds 5 of 8 rows) grows to 21 (page 1 continued, page 2 appended) and
    to 40 on the GPU; is demoted, comes back from the host as a partial hit and grows to 50; is
    demoted again and comes back whole. Every time its pages equal the full forward's K/V."""
    config = _cache("tiered", gpu_pages=8, host_pages=40, write_back=write_back)
    manager = CacheManager(config, SHAPE, "cpu", max_entry_tokens=60, scratch_entries=2)
    key, ts = (3, 0), iter(range(100))
    for n, outcome in ((13, "miss"), (21, "partial_hit"), (40, "partial_hit"), (40, "gpu_hit")):
        plan = _serve(manager, model, [Request(key, n, float(next(ts)))])
        assert plan.outcomes == [outcome]
        assert manager.gpu[key].n_tokens == n
        assert torch.allclose(_entry_kv(manager, key), _full_kv(model, key, n), rtol=1e-5, atol=1e-6)
        if not write_back:  # write-through: the host copy follows every growth at release
            assert manager.host[key].placement.n_tokens == n

    def evict() -> None:
        _serve(manager, model, [Request((user, 0), 60, float(next(ts))) for user in (10, 11)])
        assert key not in manager.gpu and manager.host[key].placement.n_tokens == manager.plane.host_tokens[key]

    evict()
    assert manager.host[key].placement.n_tokens == 40
    plan = _serve(manager, model, [Request(key, 50, float(next(ts)))])
    assert plan.outcomes == ["partial_hit"] and plan.cached == [40] and key in plan.decisions.loaded
    assert torch.allclose(_entry_kv(manager, key), _full_kv(model, key, 50), rtol=1e-5, atol=1e-6)
    evict()
    assert manager.host[key].placement.n_tokens == 50, "the host copy was not updated with the appended tokens"
    plan = _serve(manager, model, [Request(key, 50, float(next(ts)))])
    assert plan.outcomes == ["host_hit"]
    assert torch.allclose(_entry_kv(manager, key), _full_kv(model, key, 50), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_growth_never_takes_an_entry_from_a_batch_in_flight(model: MTGR, seed: int) -> None:
    """S3-FIFO refuses an entry as large as its small queue unless it comes back as a ghost, so such an
    entry cannot be resized (remove + admit would refuse even its old size). While the pipelined batch
    before holds it, a longer request reads its tokens as a partial hit and the entry stays as it is
    (same pages, nothing stored); once no batch holds it, the same request makes it leave the GPU and
    is recomputed whole. Every forward equals the full forward."""
    rng = np.random.default_rng(seed)
    gpu_pages = int(rng.integers(20, 31))
    small_pages = -(-int(0.1 * gpu_pages * SHAPE.page_bytes) // SHAPE.page_bytes)  # S3-FIFO's small queue
    big_pages = small_pages + int(rng.integers(0, 2))
    manager = CacheManager(_cache("gpu", gpu_pages=gpu_pages, policy="s3fifo"), SHAPE, "cpu",
                           max_entry_tokens=(big_pages + 1) * PAGE, scratch_entries=2)
    key, ts, others = (1, 0), iter(range(1000)), iter(range(10, 1000))

    def request(k: tuple[int, int], n: int) -> Request:
        return Request(k, n, float(next(ts)))

    def other() -> Request:
        return request((next(others), 0), int(rng.integers(1, PAGE + 1)))

    errors = [_forward(manager, model, manager.plan([request(key, int(rng.integers(1, PAGE + 1)))]))]
    while key in manager.gpu:  # one-page entries push it out of the small queue: a ghost
        errors.append(_forward(manager, model, manager.plan([other() for _ in range(6)])))
    n = big_pages * PAGE - int(rng.integers(0, PAGE - 1))
    grown = big_pages * PAGE + int(rng.integers(1, PAGE + 1))  # one page more
    errors.append(_forward(manager, model, manager.plan([request(key, n)])))
    size = manager.plane.sizer.size_of(n)
    assert manager.gpu[key].n_tokens == n and not manager.plane.gpu.readmits(size), "setup: not a large ghost entry"
    pages = list(manager.gpu[key].pages)

    holder = manager.plan([request(key, n), other()])
    later = manager.plan([request(key, grown), other()])  # planned while `holder` is in flight
    assert later.outcomes[0] == "partial_hit" and later.cached[0] == n and 0 not in later.decisions.stores
    assert manager.gpu[key].pages == pages and manager.gpu[key].n_tokens == n
    errors += [_forward(manager, model, holder), _forward(manager, model, later)]
    assert manager.gpu[key].pages == pages

    alone = manager.plan([request(key, grown)])
    assert alone.outcomes == ["miss"] and key not in manager.gpu
    errors.append(_forward(manager, model, alone))
    assert max(errors) < FP32_RTOL


@pytest.mark.parametrize("seed", range(3))
def test_padded_graph_stages_serve_partial_hits(model: MTGR, seed: int) -> None:
    """The CUDA-graph path's stages (`forward_stage` on padded inputs, run eagerly here) with partial
    hits: scores equal the full forward, and the appended tokens land at their offsets m..n-1."""
    rng = np.random.default_rng(seed)
    n_requests = 4
    first = [RequestSpec(100 + b, 0, b, int(rng.integers(5, 30)), 2, 2) for b in range(n_requests)]
    grown = [replace(s, request_key=s.request_key + 50, n_static=s.n_static + int(rng.integers(1, 20)),
                     n_cached=s.n_static) for s in first]
    width = max(SHAPE.pages_for(s.n_static) for s in grown)
    pages = rng.permutation(n_requests * width).reshape(n_requests, width).astype(np.int32)
    kv = torch.zeros(CFG.n_layers, n_requests * width, 2, PAGE, CFG.n_heads, CFG.head_dim)

    def store_rows(batch, specs) -> np.ndarray:
        rows = np.full(batch.num_rows, -1, dtype=np.int32)
        for b, spec in enumerate(specs):
            start = int(batch.offsets[b])
            rows[start: start + spec.n_new_static] = SHAPE.k_rows(pages[b].tolist(), spec.n_static)[spec.n_cached:]
        return rows

    for specs in (first, grown):
        batch = build_batch(specs, CFG)
        inputs = PooledInputs.from_batch(kv, batch, pages, store_rows(batch, specs))
        layout, pool, row_ids = inputs.padded(n_requests + int(rng.integers(1, 4)),
                                              inputs.num_rows + int(rng.integers(0, 40))).upload(DeviceArange())
        x = None
        for stage in range(len(model.layers) + 2):
            x = forward_stage(model, stage, x, layout, pool, row_ids)
    full = model(build_batch([replace(s, n_cached=0) for s in grown], CFG))
    assert torch.allclose(torch.sigmoid(x[batch.cand.rows, 0].float()), full.ctr, rtol=1e-5, atol=1e-6)
    for b, spec in enumerate(grown):
        rows = torch.as_tensor(SHAPE.k_rows(pages[b].tolist(), spec.n_static)).long()
        key = (spec.user_id, spec.static_version)
        expected = _full_kv(model, key, spec.n_static)
        for layer in range(CFG.n_layers):
            flat = kv[layer].view(-1, CFG.n_heads * CFG.head_dim)
            assert torch.allclose(flat[rows], expected[layer, 0].flatten(1), rtol=1e-5, atol=1e-6)
            assert torch.allclose(flat[rows + PAGE], expected[layer, 1].flatten(1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the CLI, on the MovieLens sample
def test_reversioned_movielens_sample_replays_causally(tmp_path: Path) -> None:
    """`trace reversion --period never --history causal` makes one version per user whose n_static
    grows with every rating; `replay --history causal` serves it with partial hits, exactly; a
    bidirectional replay of it is refused before anything is written (one MtbenchError line: exit 2)."""
    imported, causal = tmp_path / "ml.parquet", tmp_path / "ml-causal.parquet"
    runner = CliRunner()
    done = runner.invoke(app, ["trace", "import", "movielens", str(REPO / "traces" / "movielens-ratings-sample.csv"),
                               "-o", str(imported), "--model", "tiny", "--user-tokens", "4", "--max-seq", "40",
                               "--cand", "2"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["trace", "reversion", str(imported), "--period", "never", "--history", "causal",
                               "--model", "tiny", "-o", str(causal)])
    assert done.exit_code == 0, done.output
    frame = pd.read_parquet(causal)
    assert (frame["static_version"] == 0).all() and (frame["n_rt"] == 0).all()
    assert frame.groupby("user_id")["n_static"].nunique().min() > 1, "histories should grow"
    out = tmp_path / "report"
    done = runner.invoke(app, ["replay", str(causal), "--history", "causal", "--model", "tiny", "--device", "cpu",
                               "--dtype", "fp32", "--gpu-cache", "64KiB", "--host-cache", "1MiB", "--batch-size", "6",
                               "--max-requests", "48", "--verify", "8", "-o", str(out)])
    assert done.exit_code == 0, done.output
    summary = json.loads((out / "summary.json").read_text())
    row = summary["rows"][0]
    assert summary["config"]["history"] == "causal" and row["partial_hits"] > 0
    assert row["verify_max_rel_err"] < FP32_RTOL and row["verify_checked"] == 8
    records = pd.read_parquet(out / "records.parquet")
    partial = records[records["outcome"] == "partial_hit"]
    assert len(partial) == row["partial_hits"]
    assert ((partial["reused_tokens"] > 0) & (partial["computed_tokens"] > 0)).all()
    done = runner.invoke(app, ["replay", str(causal), "--model", "tiny", "--device", "cpu", "--max-requests", "48",
                               "-o", str(tmp_path / "refused")])
    assert isinstance(done.exception, MtbenchError) and "--history causal" in str(done.exception)
    assert "\n" not in str(done.exception) and not (tmp_path / "refused").exists()
