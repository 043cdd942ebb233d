"""Replay a trace through the real cache and the real model, one batch at a time.

Per batch (`_BatchRunner.run`):
1. (lookahead) plan the NEXT batch now: its keys are pinned, its host hits start loading on the
   load stream (so those copies overlap this batch's compute) up to the load budget, and pool pages
   are allocated for every entry it will compute;
2. `refresh` this batch's plan (load fallbacks, the loads its hits wait for);
3. ONE forward for the whole batch (`mtbench.model.pooled.pooled_forward`): hits (GPU and host;
   n_cached = n_static) read their prefix from the pool, the rest compute theirs and store its K/V
   straight into their fresh pages, layer by layer; the stream waits for layer l's loads just before
   layer l. With a causal history (`CacheConfig.append`) a partial hit reads the m cached tokens of
   its n and computes tokens m..n-1, storing them at token offsets m..n-1 of its entry (the rest of
   a partly filled last page, then the pages the control plane appended). On CUDA the whole forward
   replays CUDA graphs captured per padded batch shape (`ForwardGraphs`: embeddings, one graph per
   layer, heads; the cached forward is otherwise bound by the host's kernel launches; partial hits
   change the graphs' inputs, not their shapes). Without a cache (mode none) the same graphs, over empty
   page tables (nothing read or stored), take the batches a bucket holds (the small batches of an open-loop
   server, otherwise bound by the host as well); larger ones run the plain forward.
4. `release`: the control plane's host copies (write-back stream), unpin, drop stale entries, fence
   the side streams. Every tier decision is the control plane's (`mtbench.cache.control`), the same
   code `compare-policies` simulates with.
Load budget (`ReplayOptions.load_budget`): a host hit costs PCIe time (46 KB per token for MTGR-large
in bf16, about 1 ms per 1000-token user) while recomputing the prefix costs GPU time; "auto" loads
what the link moves while the GPU computes one batch (recent batches' device time x PCIE_GBPS) and
recomputes the rest of the batch's host hits (outcome `host_recompute`), storing them in the pool.
Latency: every request of a batch completes with its batch, so a request's latency is its batch's
(start of the batch's cache work to the end of its release, device time); "host-hit latency" and
"GPU-hit latency" in the summary are therefore the latencies of the batches those requests were in.
Open loop (`BatchFeed`, driven by `mtbench.serve.openloop`): the batches come from a dynamic batcher
over requests arriving in real time instead of the trace, and the driver records each request's
latency from its arrival. Every batch is timed with CUDA events on CUDA (resolved lazily, two batches
behind, so the host never stalls the pipeline) and with the wall clock on the CPU. Warm-up batches (those starting
before request `warmup`) run through the cache but are left out of every figure.

Before anything is timed, on CUDA `prewarm` runs one tiny forward per Triton specialisation the
replay's batches will hit (batch-size class, token-count class), captures the CUDA-graph buckets
from the smallest all-hit batch up (a bigger one is captured when a batch first needs it;
`graph_captures` counts them all), runs one host load/store, and grows the load staging buffer.
Batch index tensors travel in one pinned, non-blocking copy (`PooledInputs.upload`, or `batch_to_device`
for the forwards that are not graphed).
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from mtbench.cache.control import CacheStats, Request
from mtbench.cache.policies import NEVER
from mtbench.cache.manager import HIT_OUTCOMES, BatchPlan, CacheConfig, CacheManager
from mtbench.cache.pool import KVShape
from mtbench.cache.transfer import FaultHook
from mtbench.graphs import GraphLimits
from mtbench.model import MTGR, RequestBatch, RequestSpec, build_batch
from mtbench.model.pooled import DeviceArange, ForwardGraphs, PooledInputs, graphs_supported, pooled_forward
from mtbench.replay.batching import TraceBatch, iter_batches
from mtbench.model.device_batch import batch_to_device
from mtbench.replay.prewarm import blank_inputs, prewarm
from mtbench.cache.budget import PCIE_GBPS, AutoLoadBudget
from mtbench.sim.costmodel import CostModel
from mtbench.sim.oracle import next_use_indices
from mtbench.trace import Trace

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass(frozen=True)
class ReplayOptions:
    """Options shared by every run of one `mtbench replay` invocation."""

    batch_size: int = 16
    window: float | None = None
    max_requests: int | None = None
    warmup: int = 0  # requests; whole batches starting before this index are warm-up
    page_tokens: int = 32
    verify_sample: int = 0  # cached scores of this many requests are kept for --verify
    keep_all_scores: bool = False  # tests: keep every request's scores
    seed: int = 0
    cuda_graphs: bool = True  # graph the cached forward on CUDA (mtbench.model.pooled.ForwardGraphs)
    # Host hits loaded per batch: "auto" = the bytes the link moves (PCIE_GBPS) while the GPU computes
    # one batch (recent batches' device time), the rest are recomputed; "all" = load every host hit;
    # or a fixed byte budget per batch.
    load_budget: str | int = "auto"
    # Reload costs mtserve / gdsf weigh entries by (None: CostModel.default of the model and dtype, as
    # compare-policies); calibrate passes the measured model so its simulation decides identically.
    policy_costs: CostModel | None = None


@dataclass
class ScoreSample:
    """A request's scores as the replay computed them (CPU float32)."""

    request: RequestSpec
    outcome: str
    ctr: torch.Tensor
    ctcvr: torch.Tensor


@dataclass
class RunResult:
    label: str
    config: CacheConfig
    records: pd.DataFrame
    row: dict
    samples: dict[int, ScoreSample]  # request_index -> scores
    stats: CacheStats
    graph_limits: GraphLimits | None = None  # the batches the CUDA graphs took (None: no graphs)


class BatchFeed(Protocol):
    """Where an open-loop driver (`mtbench.serve.openloop`) feeds the engine instead of the trace.

    `after(done, end)`: the batch `done` was issued and `end` is its end marker (a CUDA event, or the
    perf_counter time on the CPU); returns the next batch once it closes, None when no requests are
    left (done = None asks for the first batch). `ahead()`: asked when a batch starts, returns the
    next batch if it is already closed (the engine then plans it now, so its loads overlap the
    current batch; `after` then returns that same batch), else None. `close()`: the run ended, with
    or without an error (the driver stops what it started; idempotent). `finish(result)`: the run's
    result, to which the driver adds its own records and fields.
    """

    def ahead(self) -> TraceBatch | None: ...

    def after(self, done: TraceBatch | None, end: object) -> TraceBatch | None: ...

    def close(self) -> None: ...

    def finish(self, result: "RunResult") -> None: ...


@dataclass
class _BatchTiming:
    """Markers of one batch; resolved to milliseconds once the device finished it."""

    batch: TraceBatch
    plan: BatchPlan
    warmup: bool
    start: object
    end: object
    used_bytes: tuple[int, int]
    forward_seconds: float  # host wall time of the forwards (CPU compute time)
    forward_usage: "ThreadUsage"  # the server thread's CPU and kernel time, page faults and preemptions in them
    host_cache_seconds: float  # host time inside the cache manager
    graphed: bool  # the forward replayed CUDA graphs (`ForwardGraphs`), not the eager forward


@dataclass(frozen=True)
class ThreadUsage:
    """The calling thread's CPU seconds (`time.thread_time`, exact), kernel seconds, minor page faults
    and involuntary context switches so far (`getrusage(RUSAGE_THREAD)`; NaN on a platform without it).
    Kernel time and faults tell a host slowed by memory management (page faults, compaction) from one
    running the same code slower; preemptions (the scheduler took the core from the running thread)
    tell a thread that lost its core to another one. The kernel's share is apportioned from scheduler
    ticks, so compare it as a mean over many batches: a single batch's can be off by a tick (4 ms at
    250 Hz) either way."""

    cpu_seconds: float
    kernel_seconds: float
    minor_faults: float
    preemptions: float

    @classmethod
    def now(cls) -> "ThreadUsage":
        if not hasattr(resource, "RUSAGE_THREAD"):
            return cls(time.thread_time(), float("nan"), float("nan"), float("nan"))
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        return cls(time.thread_time(), usage.ru_stime, float(usage.ru_minflt), float(usage.ru_nivcsw))

    def since(self, before: "ThreadUsage") -> "ThreadUsage":
        return ThreadUsage(self.cpu_seconds - before.cpu_seconds, self.kernel_seconds - before.kernel_seconds,
                           self.minor_faults - before.minor_faults, self.preemptions - before.preemptions)


class _Clock:
    """CUDA events on CUDA, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream())
        return event

    def ms(self, start: object, end: object) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1e3

    def done(self, marker: object) -> bool:
        return not self.cuda or marker.query()

    def wait(self, marker: object) -> None:
        if self.cuda:
            marker.synchronize()

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class _Recorder:
    """Collects per-request records and per-batch timings of one run."""

    def __init__(self, label: str, clock: _Clock) -> None:
        self.label, self.clock = label, clock
        self.batches: list[dict] = []  # per batch: its requests' record columns
        self.batch_ms: list[float] = []
        self.stall_ms = 0.0
        self.compute_ms = 0.0
        self.load_ms = 0.0
        self.cache_ms = 0.0
        self.forward_host_ms = 0.0  # host time issuing the forwards (batch assembly, uploads, launches)
        self.auto_budget = AutoLoadBudget()  # fed each batch's device time, stalls excluded

    def resolve(self, timing: _BatchTiming) -> None:
        clock, batch, plan = self.clock, timing.batch, timing.plan
        batch_ms = clock.ms(timing.start, timing.end)
        stall = plan.stall_ms() if clock.cuda else 0.0
        if clock.cuda:
            self.auto_budget.observe(batch_ms - stall)
        if not timing.warmup:
            self.batch_ms.append(batch_ms)
            self.forward_host_ms += timing.forward_seconds * 1e3
            if clock.cuda:
                self.stall_ms += stall
                self.compute_ms += batch_ms - stall
                self.cache_ms += timing.host_cache_seconds * 1e3
            else:
                self.load_ms += plan.load_seconds * 1e3
                self.compute_ms += timing.forward_seconds * 1e3
                self.cache_ms += (timing.host_cache_seconds - plan.load_seconds) * 1e3
        n = len(batch)
        self.batches.append({
            "run": [self.label] * n, "request_index": batch.request_index, "ts": batch.ts, "user_id": batch.user_id,
            "static_version": batch.static_version, "outcome": plan.outcomes, "n_static": batch.n_static,
            "n_cached": plan.cached, "reused_tokens": plan.cached,
            "computed_tokens": batch.n_static - np.asarray(plan.cached), "load_budget": np.full(n, -1 if plan.load_budget is None else plan.load_budget),
            "n_rt": batch.n_rt, "n_cand": batch.n_cand, "latency_ms": np.full(n, batch_ms), "stall_ms": np.full(n, stall),
            "batch_index": np.full(n, batch.index),
            "gpu_used_bytes": np.full(n, timing.used_bytes[0]), "host_used_bytes": np.full(n, timing.used_bytes[1]),
            "warmup": np.full(n, timing.warmup), "host_forward_ms": np.full(n, timing.forward_seconds * 1e3),
            "host_forward_cpu_ms": np.full(n, timing.forward_usage.cpu_seconds * 1e3),
            "host_forward_kernel_ms": np.full(n, timing.forward_usage.kernel_seconds * 1e3),
            "host_forward_faults": np.full(n, timing.forward_usage.minor_faults),
            "host_forward_preemptions": np.full(n, timing.forward_usage.preemptions),
            "graphed": np.full(n, timing.graphed),
        })

    def records(self) -> pd.DataFrame:
        """One row per replayed request (warm-up included, flagged)."""
        if not self.batches:
            return pd.DataFrame()
        columns = {name: np.concatenate([np.asarray(batch[name]) for batch in self.batches]) for name in self.batches[0]}
        types = {"request_index": np.int64, "ts": np.float64, "user_id": np.int64, "static_version": np.int64,
                 "n_cached": np.int64, "reused_tokens": np.int64, "computed_tokens": np.int64, "load_budget": np.int64,
                 "n_static": np.int64, "n_rt": np.int64, "n_cand": np.int64, "batch_index": np.int64,
                 "gpu_used_bytes": np.int64, "host_used_bytes": np.int64, "warmup": bool, "latency_ms": np.float64,
                 "stall_ms": np.float64, "host_forward_ms": np.float64, "host_forward_cpu_ms": np.float64,
                 "host_forward_kernel_ms": np.float64, "host_forward_faults": np.float64,
                 "host_forward_preemptions": np.float64, "graphed": bool}
        return pd.DataFrame({name: values.astype(types[name]) if name in types else values for name, values in columns.items()})

    @property
    def transfer_wait_ms(self) -> float:
        return self.stall_ms if self.clock.cuda else self.load_ms


class _BatchRunner:
    """Runs one replay (one cache configuration) over the trace; see the module docstring."""

    def __init__(self, model: MTGR, trace: Trace, cache: CacheConfig, options: ReplayOptions, label: str,
                 fault_hook: FaultHook | None) -> None:
        cfg = model.cfg
        self.model, self.trace, self.cache_config, self.options = model, trace, cache, options
        self.device = model.device
        self.clock = _Clock(self.device)
        shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, model.dtype, options.page_tokens)
        max_static = int(trace.arrays(["n_static"])["n_static"].max()) if trace.num_rows else 1
        # Scratch pages for one batch of the longest entries: host hits that cannot be promoted while two
        # batches are pinned, and misses the GPU tier cannot keep (written through to the host from there).
        costs = options.policy_costs or CostModel.default(cfg, _DTYPE_NAMES.get(model.dtype, "bf16"))
        self.manager = CacheManager(cache, shape, self.device, max_static, fault_hook, scratch_entries=options.batch_size,
                                    costs=costs)
        self.recorder = _Recorder(label, self.clock)
        self.next_uses = self._next_uses()
        self.samples: dict[int, ScoreSample] = {}
        self._reservoir_seen = 0
        # What --verify samples first: cache hits; with an fp8 host tier, host hits (their prefix came
        # through the lossy copy), so the verify figures measure fp8's error.
        self._sampled_first = {"host_hit"} if cache.mode == "tiered" and cache.host_kv else set(HIT_OUTCOMES)
        self._rng = random.Random(options.seed)
        self._warm_stats: CacheStats | None = None
        self._pending: list[_BatchTiming] = []
        self._host_cache_seconds = 0.0
        self._mallocs_at_start = 0
        self.timed_device_mallocs = 0  # cudaMalloc calls (each may synchronise the device) in timed batches
        self.arange = DeviceArange()
        # mode none needs a cache-safe model too: the graphed stages are the pooled forward's
        use_graphs = options.cuda_graphs and graphs_supported(model) and (self.manager.enabled or model.cfg.cache_safe)
        # page tables as wide as the longest prefix (empty without a cache): a bucket per row count
        widest = -(-model.cfg.max_static // options.page_tokens) if self.manager.enabled else 0
        self.graphs = ForwardGraphs(options.batch_size, table_width=widest) if use_graphs else None

    def _next_uses(self) -> np.ndarray | None:
        if not self.manager.needs_next_use:
            return None
        arrays = self.trace.arrays(["user_id", "static_version"])
        _, keys = np.unique(np.stack([arrays["user_id"], arrays["static_version"]], axis=1), axis=0, return_inverse=True)
        return next_use_indices(keys.reshape(-1))

    # ---------------------------------------------------------------- the loop
    def run(self, progress: Callable[[int], None] | None, feed: BatchFeed | None = None) -> tuple[float, int, int]:
        """Replay every batch (from the trace, or from `feed`); returns (measured seconds, timed requests,
        timed candidates)."""
        batches = iter_batches(self.trace, self.options.batch_size, self.options.window, self.options.max_requests)
        lookahead = not self.cache_config.sync
        if self.device.type == "cuda":
            prewarm(self.model, self.manager, self.trace, self.options, self.graphs, dynamic=feed is not None)
        current = next(batches, None) if feed is None else feed.after(None, None)
        plan = self._plan(current) if current is not None else None
        wall_start, timed_requests, timed_candidates = None, 0, 0
        while current is not None:
            warmup = current.first_index < self.options.warmup
            if not warmup and wall_start is None:
                wall_start = self._start_timing()
            if not warmup:
                timed_requests += len(current)
                timed_candidates += int(current.n_cand.sum())
            upcoming = next(batches, None) if feed is None else feed.ahead()
            start = self.clock.mark()
            next_plan = self._plan(upcoming) if lookahead and upcoming is not None else None
            end = self._execute(current, plan, warmup, start)
            last_warmup = warmup and wall_start is None and current.request_index[-1] + 1 >= self.options.warmup
            if last_warmup:
                wall_start = self._start_timing()  # before the first timed batch is handed out, not inside its time
            if feed is not None:
                upcoming = feed.after(current, end)
                if last_warmup:  # the feed started its clock (after a full garbage collection): the timed phase starts now
                    wall_start = time.perf_counter()
            if upcoming is not None and next_plan is None:
                next_plan = self._plan(upcoming)
            if progress is not None:
                progress(len(current))
            current, plan = upcoming, next_plan
        self.clock.synchronize()
        seconds = time.perf_counter() - wall_start if wall_start is not None else 0.0
        for timing in self._pending:
            self.recorder.resolve(timing)
        self._pending.clear()
        self.timed_device_mallocs = _device_mallocs(self.device) - self._mallocs_at_start
        return seconds, timed_requests, timed_candidates

    def _start_timing(self) -> float:
        """Wait for the device, snapshot the warm-up's statistics; returns the timed phase's start."""
        self.clock.synchronize()
        self._warm_stats = replace(self.manager.stats)
        self._mallocs_at_start = _device_mallocs(self.device)
        return time.perf_counter()

    def _cache_call(self, fn: Callable, *args):
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._host_cache_seconds += time.perf_counter() - started

    def _plan(self, batch: TraceBatch) -> BatchPlan:
        next_uses = self.next_uses[batch.request_index].tolist() if self.next_uses is not None else [NEVER] * len(batch)
        requests = [Request((u, v), n, t, next_use) for u, v, n, t, next_use in
                    zip(batch.user_id.tolist(), batch.static_version.tolist(), batch.n_static.tolist(), batch.ts.tolist(),
                        next_uses)]
        return self._cache_call(self.manager.plan, requests, self._load_budget())

    def _load_budget(self) -> int | None:
        """Bytes of host hits the next batch may load (see ReplayOptions.load_budget); None = all."""
        budget = self.options.load_budget
        if budget == "all" or not self.manager.tiered:
            return None
        if budget != "auto":
            return int(budget)
        if not self.clock.cuda or self.cache_config.sync:
            return None
        return self.recorder.auto_budget.bytes()

    def _execute(self, batch: TraceBatch, plan: BatchPlan, warmup: bool, start: object) -> object:
        """Run the batch; returns its end marker."""
        manager = self.manager
        self._cache_call(manager.refresh, plan)
        replays_before = self.graphs.replays if self.graphs is not None else 0
        started, usage_before = time.perf_counter(), ThreadUsage.now()
        self._forward(batch, plan)
        forward_seconds, forward_usage = time.perf_counter() - started, ThreadUsage.now().since(usage_before)
        graphed = self.graphs is not None and self.graphs.replays > replays_before
        self._cache_call(manager.release, plan)
        end = self.clock.mark()
        host_seconds, self._host_cache_seconds = self._host_cache_seconds, 0.0
        timing = _BatchTiming(batch, plan, warmup, start, end,
                              (manager.gpu_used_bytes, manager.host_used_bytes), forward_seconds, forward_usage,
                              host_seconds, graphed)
        self._pending.append(timing)
        self._resolve_finished()
        return end

    def _resolve_finished(self) -> None:
        """Resolve timings of batches the device finished; keep at most two batches in flight."""
        while self._pending and (len(self._pending) > 2 or self.clock.done(self._pending[0].end)):
            timing = self._pending.pop(0)
            self.clock.wait(timing.end)
            self.recorder.resolve(timing)

    def _forward(self, batch: TraceBatch, plan: BatchPlan) -> None:
        """The batch's one forward (see the module docstring); misses store their prefix as they go."""
        specs = [RequestSpec(int(batch.user_id[i]), int(batch.static_version[i]), int(batch.request_index[i]),
                             int(batch.n_static[i]), int(batch.n_rt[i]), int(batch.n_cand[i]),
                             n_cached=int(plan.cached[i]))
                 for i in range(len(batch))]
        host_batch = build_batch(specs, self.model.cfg, "cpu")
        if self.manager.enabled:
            inputs = self._pooled_inputs(host_batch, plan)
            scores = pooled_forward(self.model, host_batch, inputs, self.arange,
                                    lambda layer: self.manager.wait_layer(plan, layer), self.graphs)
        elif self.graphs is not None and self.graphs.takes(host_batch.batch_size, host_batch.num_rows):
            scores = pooled_forward(self.model, host_batch, blank_inputs(self.manager, host_batch), self.arange,
                                    graphs=self.graphs)
        else:
            scores = self.model(batch_to_device(host_batch, self.device))
        self._sample(batch, plan, specs, scores)

    def _pooled_inputs(self, host_batch: RequestBatch, plan: BatchPlan) -> PooledInputs:
        """The cache's page table, prefix lengths and store rows for the batch's computed rows."""
        reads = self._cache_call(self.manager.pool_inputs, plan, host_batch.offsets.numpy())
        if not np.array_equal(reads.lengths, host_batch.n_cached.numpy()):
            raise RuntimeError(f"cache and batch disagree on cached prefixes: {reads.lengths.tolist()} vs "
                               f"{host_batch.n_cached.tolist()}")
        return PooledInputs.from_batch(reads.kv, host_batch, reads.page_table, reads.store_k_rows)

    # ---------------------------------------------------------------- scores kept for verification
    def _sample(self, batch: TraceBatch, plan: BatchPlan, specs: list[RequestSpec], scores) -> None:
        options = self.options
        if not options.keep_all_scores and not options.verify_sample:
            return
        # Candidate offsets from the specs (host side), so sampling never syncs with the device.
        offsets = np.concatenate([[0], np.cumsum([spec.n_cand for spec in specs])]).tolist()
        outcomes = plan.outcomes
        for i in range(len(batch)):
            index = int(batch.request_index[i])
            warmup = batch.first_index < options.warmup
            if not options.keep_all_scores and not self._reservoir_slot(outcomes[i], warmup):
                continue
            start, end = offsets[i], offsets[i + 1]
            self.samples[index] = ScoreSample(specs[i], outcomes[i],
                                              scores.ctr[start:end].clone(), scores.ctcvr[start:end].clone())

    def _reservoir_slot(self, outcome: str, warmup: bool) -> bool:
        """Reservoir-sample timed cache hits (`_sampled_first`; other requests fill in while there are too
        few of them); True = keep this request (room was made in `samples` when needed)."""
        capacity = self.options.verify_sample
        if warmup:
            return False
        if outcome not in self._sampled_first:
            return len(self.samples) < capacity
        self._reservoir_seen += 1
        if len(self.samples) < capacity:
            return True
        misses = [k for k, s in self.samples.items() if s.outcome not in self._sampled_first]
        if misses:
            del self.samples[misses[0]]
            return True
        if self._rng.random() < capacity / self._reservoir_seen:
            del self.samples[self._rng.choice(list(self.samples))]
            return True
        return False


def replay_run(model: MTGR, trace: Trace, cache: CacheConfig, options: ReplayOptions, label: str,
               progress: Callable[[int], None] | None = None, fault_hook: FaultHook | None = None,
               feed: BatchFeed | None = None) -> RunResult:
    """One replay of `trace` with one cache configuration; returns its records and summary row.
    With `feed` (open loop) the batches come from it, and it completes the result (`BatchFeed`)."""
    runner = _BatchRunner(model, trace, cache, options, label, fault_hook)
    try:
        seconds, requests, candidates = runner.run(progress, feed)
    finally:
        if feed is not None:
            feed.close()
    stats = _diff(runner.manager.stats, runner._warm_stats)
    recorder = runner.recorder
    records = recorder.records()
    timed = records[~records["warmup"]] if len(records) else records
    row = _summary_row(label, cache, stats, timed, recorder, seconds, requests, candidates)
    lossy = cache.mode == "tiered" and cache.host_kv is not None
    row["kv_dtype"] = cache.host_kv if lossy else _DTYPE_NAMES.get(model.dtype, str(model.dtype))
    row["lossy"] = lossy
    row["host_fragmentation"] = runner.manager.host_fragmentation()
    row["scratch_bytes"] = runner.manager.scratch_bytes
    row["graph_captures"] = runner.graphs.captures if runner.graphs is not None else 0
    row["device_mallocs"] = runner.timed_device_mallocs
    row["graphed_batches"] = runner.graphs.replays if runner.graphs is not None else 0
    samples = {index: replace(s, ctr=s.ctr.float().cpu(), ctcvr=s.ctcvr.float().cpu()) for index, s in runner.samples.items()}
    result = RunResult(label, cache, records, row, samples, stats,
                       runner.graphs.limits if runner.graphs is not None else None)
    if feed is not None:
        feed.finish(result)
    return result


def _device_mallocs(device: torch.device) -> int:
    """Device memory segments PyTorch's caching allocator has requested so far (0 off CUDA)."""
    if device.type != "cuda":
        return 0
    return int(torch.cuda.memory_stats(device).get("segment.all.allocated", 0))


def _diff(total: CacheStats, warm: CacheStats | None) -> CacheStats:
    return total.minus(warm) if warm is not None else CacheStats()


def _quantile(values, q: float) -> float | None:
    values = np.asarray(values, dtype=float)
    return float(np.quantile(values, q)) if len(values) else None


def _summary_row(label: str, cache: CacheConfig, stats: CacheStats, timed: pd.DataFrame, recorder: _Recorder,
                 seconds: float, requests: int, candidates: int) -> dict:
    measured_ms = seconds * 1e3
    bytes_floor_ms = max(stats.bytes_h2d, stats.bytes_d2h) / (PCIE_GBPS * 1e9) * 1e3
    ratio = (lambda a, b: a / b if b else None)
    return {
        "run": label, "policy": cache.policy if cache.mode != "none" else "none", "cache_mode": cache.mode,
        "layout": cache.layout if cache.mode == "tiered" else None, "sync": cache.sync,
        "gpu_capacity": cache.gpu_capacity if cache.mode != "none" else 0,
        "host_capacity": cache.host_capacity if cache.mode == "tiered" else 0,
        "write_back": cache.write_back, "inclusive": cache.inclusive,
        "requests": stats.requests, "gpu_hits": stats.gpu_hits, "host_hits": stats.host_hits,
        "partial_hits": stats.partial_hits, "host_recomputes": stats.host_recomputes, "misses": stats.misses,
        "stale": stats.stale,
        "hit_ratio": ratio(stats.gpu_hits + stats.host_hits + stats.partial_hits, stats.requests),
        "lookup_hit_ratio": ratio(stats.gpu_hits + stats.host_hits + stats.partial_hits + stats.host_recomputes,
                                  stats.requests),
        **(stats.miss_columns() if stats.requests else {}),
        "gpu_hit_ratio": ratio(stats.gpu_hits, stats.requests),
        "token_hit_ratio": ratio(stats.hit_tokens, stats.static_tokens),
        "reused_tokens": stats.hit_tokens, "computed_tokens": stats.static_tokens - stats.hit_tokens,
        "bytes_h2d": stats.bytes_h2d, "bytes_d2h": stats.bytes_d2h,
        "gpu_evictions": stats.gpu_evictions, "host_evictions": stats.host_evictions,
        "p50_ms": _quantile(timed["latency_ms"], 0.5) if len(timed) else None,
        "p99_ms": _quantile(timed["latency_ms"], 0.99) if len(timed) else None,
        "gpu_hit_p50_ms": _outcome_p50(timed, "gpu_hit"), "host_hit_p50_ms": _outcome_p50(timed, "host_hit"),
        "partial_hit_p50_ms": _outcome_p50(timed, "partial_hit"), "miss_p50_ms": _outcome_p50(timed, "miss"),
        "batch_p50_ms": _quantile(recorder.batch_ms, 0.5), "batch_p99_ms": _quantile(recorder.batch_ms, 0.99),
        "measured_ms": measured_ms, "ms_per_request": ratio(measured_ms, requests),
        "requests_per_s": ratio(requests, seconds), "candidates_per_s": ratio(candidates, seconds),
        "h2d_GBps": ratio(stats.bytes_h2d / 1e9, seconds), "d2h_GBps": ratio(stats.bytes_d2h / 1e9, seconds),
        "compute_ms": recorder.compute_ms, "transfer_wait_ms": recorder.transfer_wait_ms,
        "bookkeeping_ms": recorder.cache_ms, "forward_host_ms": recorder.forward_host_ms,
        "pipeline_efficiency": ratio(max(recorder.compute_ms, bytes_floor_ms), measured_ms),
        "transfer_fallbacks": stats.transfer_fallbacks, "writeback_failures": stats.writeback_failures,
        "gpu_admission_failures": stats.gpu_admission_failures,
        "host_admission_failures": stats.host_admission_failures,
    }


def _outcome_p50(timed: pd.DataFrame, outcome: str) -> float | None:
    if not len(timed):
        return None
    return _quantile(timed.loc[timed["outcome"] == outcome, "latency_ms"], 0.5)
