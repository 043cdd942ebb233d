"""Run every kernel variant a replay will need once, before anything is timed.

Triton compiles one kernel per specialisation of its integer arguments (== 1, divisible by 16, other)
and constexprs (CHUNK_B follows the batch size's power of two), so a batch of a new size class or a
token count of a new class compiles (seconds) the first time it is seen. `prewarm` derives the
batch-size classes from the replay's own batches (with a dynamic batcher, open loop: every size from
one request to the batch size, since any of them can close) and runs, per class and token-count class, one
tiny forward through the path the replay takes (plain forward without a cache; the eager pooled
forward with a mixed hit/miss batch otherwise), captures the CUDA-graph buckets the replay's batches
can use (from the smallest all-hit batch up: of batch-size requests, or of one with a dynamic batcher), runs one host store and load per token-count class, and
grows the load staging buffer to its largest use.
It only writes free pool pages and free host extents, and leaves the cache state as it found it.
"""

from __future__ import annotations

import numpy as np
import torch

from mtbench.cache.manager import CacheManager
from mtbench.model import MTGR, RequestSpec, build_batch
from mtbench.model.pooled import DeviceArange, ForwardGraphs, PooledInputs, pooled_forward
from mtbench.replay.batching import iter_batches
from mtbench.model.device_batch import batch_to_device
from mtbench.trace import Trace

TOKEN_CLASSES = (16, 21)  # one count divisible by 16, one not (counts of 1 never reach the kernels here)
WARM_USER = 1 << 50  # feature ids of warm-up requests (never a trace user)


def _int_class(n: int) -> tuple[bool, bool]:
    return n == 1, n % 16 == 0


def batch_size_classes(trace: Trace, batch_size: int, window: float | None, max_requests: int | None,
                       dynamic: bool = False) -> list[int]:
    """One representative size per (== 1, divisible by 16, next power of two) class of the replay's batches
    (`dynamic`: of every size up to `batch_size`)."""
    representatives: dict[tuple, int] = {}
    sizes = range(1, batch_size + 1) if dynamic else (len(b) for b in iter_batches(trace, batch_size, window, max_requests))
    for size in sizes:
        key = (*_int_class(size), max(16, 1 << (size - 1).bit_length()))
        representatives.setdefault(key, size)
    return sorted(representatives.values())


def _warm_specs(model: MTGR, size: int, residue: int, page_tokens: int, cached: bool) -> list[RequestSpec]:
    """`size` requests, the first a whole-prefix hit of one page (a miss when not `cached`: mode none),
    whose computed rows total `residue` modulo 16 (misses: 2 static + 1 candidate rows each)."""
    cfg = model.cfg
    hit_static = min(page_tokens, cfg.max_static)
    cand = (residue - 3 * (size - 1)) % 16 or 16
    specs = [RequestSpec(WARM_USER, 0, WARM_USER, hit_static, 0, min(cand, cfg.max_cand),
                         n_cached=hit_static if cached else 0)]
    specs += [RequestSpec(WARM_USER + b, 0, WARM_USER + b, 2, 0, 1) for b in range(1, size)]
    return specs


def _warm_forwards(model: MTGR, manager: CacheManager, sizes: list[int], page_tokens: int) -> None:
    device = model.device
    for size in sizes:
        for residue in (0, 5):
            host_batch = build_batch(_warm_specs(model, size, residue, page_tokens, manager.enabled), model.cfg, "cpu")
            if not manager.enabled:
                model(batch_to_device(host_batch, device))
                continue
            pooled_forward(model, host_batch, blank_inputs(manager, host_batch), DeviceArange())


def blank_inputs(manager: CacheManager, host_batch) -> PooledInputs:
    """Pool inputs of a batch that stores nothing: prefixes read from page 0 (whatever it holds: warm-up
    forwards), or, without a cache, nothing read at all (mode none's graphed forward)."""
    reads = manager.blank_reads(host_batch.batch_size)
    return PooledInputs.from_batch(reads.kv, host_batch, reads.page_table)


def _capture_graphs(model: MTGR, manager: CacheManager, graphs: ForwardGraphs, trace: Trace, options,
                    dynamic: bool) -> None:
    """Capture the CUDA-graph buckets the replay's batches can use, from the smallest all-hit batch
    (batch_size requests with the trace's fewest R+C rows, or one request if `dynamic`) up."""
    columns = trace.arrays(["n_rt", "n_cand"])
    fewest = int((columns["n_rt"] + columns["n_cand"]).min())
    smallest = 1 if dynamic else options.batch_size
    host_batch = build_batch(_warm_specs(model, smallest, 0, options.page_tokens, manager.enabled), model.cfg, "cpu")
    graphs.capture_buckets(model, blank_inputs(manager, host_batch), smallest * fewest)


def prewarm(model: MTGR, manager: CacheManager, trace: Trace, options, graphs: ForwardGraphs | None = None,
            dynamic: bool = False) -> None:
    """See the module docstring; `options` is the replay's `ReplayOptions`; `dynamic`: batches come from
    a dynamic batcher (any size up to the batch size)."""
    sizes = batch_size_classes(trace, options.batch_size, options.window, options.max_requests, dynamic)
    _warm_forwards(model, manager, sizes, options.page_tokens)
    if graphs is not None:
        _capture_graphs(model, manager, graphs, trace, options, dynamic)
    manager.prewarm_transfers(TOKEN_CLASSES)
    if manager.enabled:
        manager.reserve_staging(int(np.sort(trace.arrays(["n_static"])["n_static"])[-options.batch_size:].sum()))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
