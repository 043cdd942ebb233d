"""`mtbench replay` end to end: validate the setup, run every configuration on the same requests,
add speedups between runs, verify, and assemble the summary/records of the report directory.

Runs of one invocation (same model weights, same batches):
- the main runs: `--cache` with each layout of `--layouts` (tiered) or once (gpu / none);
- with `--baseline`: `none` (recompute every prefix), `gpu` (GPU tier only) and, for a tiered
  asynchronous main run, the same configuration with `--sync` (blocking copies, no lookahead).
Row labels: "tiered/hybrid", "tiered/hybrid/sync", "gpu", "none".

History (`--history`): "bidirectional" is MTGR's U+S prefix (a version's prefix never changes: every
request of one (user, static_version) must carry the same n_static); "causal" runs the model with
history="causal" and the cache's append variant: a request whose entry covers m of its n static
tokens reads those m and computes the other n - m (a partial hit), and the entry grows in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from mtbench.cache.control import require_fits
from mtbench.cache.manager import CACHE_MODES, CacheConfig
from mtbench.cache.layouts import FP8_LAYOUTS, host_layout_name
from mtbench.cache.pool import KVShape, parse_host_kv
from mtbench.cache.sizes import EntrySizer
from mtbench.cache.policies import POLICY_NAMES
from mtbench.device import check_cache_memory, resolve_device, serve_from_one_host_thread
from mtbench.errors import MtbenchError
from mtbench.model import MTGR, MTGRConfig, get_config
from mtbench.model.config import HISTORY_MODES, parse_dtype
from mtbench.model.pooled import graphs_supported
from mtbench.replay.batching import check_batching
from mtbench.replay.engine import BatchFeed, ReplayOptions, RunResult, replay_run
from mtbench.replay.verify import VerifyResult, verify_samples
from mtbench.sim.simulator import Workload
from mtbench.trace import Trace, open_trace


def lossy_note(host_kv: str) -> str:
    """The note every report of a lossy run carries."""
    return (f"LOSSY: the host tier stores KV as {host_kv} (e4m3, a power-of-two scale per token and head; "
            f"per element |error| <= |x|/16 + amax/229376), so host hits' scores differ from recomputation; "
            f"layouts {' and '.join(FP8_LAYOUTS)} move it bit-identically (hybrid: copy engine + a fused "
            f"dequantise kernel; zerocopy: the fp8 zero-copy kernel)")


CPU_TIMING_NOTE = ("timings measured on the CPU say nothing about GPU speed (latencies, throughput and "
                   "speedups here check the pipeline, not its performance)")


@dataclass(frozen=True)
class ReplaySetup:
    """Everything `mtbench replay` was asked to do (also written as the summary's `config`)."""

    trace: Path
    model: str = "tiny"
    dtype: str = "fp32"
    device: str = "cpu"
    cache: str = "tiered"
    policy: str = "lru"
    layouts: tuple[str, ...] = ("hybrid",)
    gpu_capacity: int = 0
    host_capacity: int = 0
    sync: bool = False
    write_back: bool = True
    inclusive: bool = True
    history: str = "bidirectional"  # or "causal" (module docstring)
    baseline: bool = False
    verify: int = 0
    sort: bool = False  # sort an unsorted trace by ts in memory instead of refusing it
    kv_dtype: str = "auto"  # the host tier's KV: auto (= dtype, exact) or fp8 (lossy)
    options: ReplayOptions = ReplayOptions()

    @property
    def host_kv(self) -> str | None:
        """The host tier's KV dtype as `CacheConfig.host_kv` (None: the model's dtype)."""
        return parse_host_kv(self.kv_dtype, self.dtype)

    def config_dict(self) -> dict:
        options = self.options
        return {
            "trace": str(self.trace), "model": self.model, "dtype": self.dtype, "device": self.device,
            "cache": self.cache, "policy": self.policy, "layouts": list(self.layouts),
            "gpu_cache": self.gpu_capacity, "host_cache": self.host_capacity, "sync": self.sync,
            "baseline": self.baseline, "verify": self.verify, "batch_size": options.batch_size,
            "window": options.window, "max_requests": options.max_requests, "warmup": options.warmup,
            "page_tokens": options.page_tokens, "seed": options.seed, "cuda_graphs": options.cuda_graphs,
            "load_budget": options.load_budget, "sort": self.sort,
            "write_back": self.write_back, "inclusive": self.inclusive, "lookahead": not self.sync,
            "kv_dtype": self.host_kv or self.dtype, "lossy": self.host_kv is not None, "history": self.history,
        }


def validate_setup(setup: ReplaySetup) -> tuple[MTGRConfig, Trace, torch.device, torch.dtype]:
    """Check every option and the trace before anything runs or is written."""
    device, dtype = resolve_device(setup.device), parse_dtype(setup.dtype)
    if setup.history not in HISTORY_MODES:
        raise MtbenchError(f"--history must be one of {', '.join(HISTORY_MODES)}, got {setup.history!r}")
    cfg = get_config(setup.model, history=setup.history)
    if setup.cache not in CACHE_MODES:
        raise MtbenchError(f"--cache must be one of {', '.join(CACHE_MODES)}, got {setup.cache!r}")
    if setup.policy not in POLICY_NAMES:
        raise MtbenchError(f"unknown policy {setup.policy!r} (known: {', '.join(POLICY_NAMES)})")
    host_kv = setup.host_kv
    if host_kv is not None and setup.cache != "tiered":
        raise MtbenchError(f"--kv-dtype {host_kv} is the host tier's format: it needs --cache tiered, got {setup.cache}")
    for layout in setup.layouts:
        host_layout_name(layout, host_kv)
    if setup.cache != "none" and not cfg.cache_safe:
        raise MtbenchError(f"model {setup.model}: normalizer {cfg.normalizer!r} is not cache-safe; use --cache none")
    if setup.verify < 0 or setup.options.warmup < 0:
        raise MtbenchError("--verify and --warmup must be >= 0")
    if setup.options.page_tokens < 1:
        raise MtbenchError(f"--page-tokens must be >= 1, got {setup.options.page_tokens}")
    check_batching(setup.options.batch_size, setup.options.window, setup.options.max_requests)
    trace = open_trace(setup.trace, limits=cfg.limits(), sort=setup.sort)
    replayed = min(trace.num_rows, setup.options.max_requests or trace.num_rows)
    if setup.options.warmup >= replayed:
        raise MtbenchError(f"--warmup {setup.options.warmup} covers all {replayed} replayed requests, so nothing would "
                           "be measured; lower --warmup or raise --max-requests")
    _check_static_lengths(trace, setup)
    _check_capacities(setup, cfg, dtype, trace)
    check_cache_memory(device, setup.gpu_capacity if setup.cache != "none" or setup.baseline else 0,
                       setup.host_capacity if setup.cache == "tiered" else 0)
    return cfg, trace, device, dtype


def _check_static_lengths(trace: Trace, setup: ReplaySetup) -> None:
    """The simulator's rule: a version's prefix may grow only with a causal history."""
    columns = trace.arrays(["ts", "user_id", "static_version", "n_static", "n_rt", "n_cand"])
    if setup.options.max_requests is not None:
        columns = {name: values[:setup.options.max_requests] for name, values in columns.items()}
    try:
        Workload.from_columns(columns, EntrySizer(1, 1, unit=True)).check_static_lengths(setup.history == "causal")
    except MtbenchError as err:
        raise MtbenchError(f"{setup.trace}: {err}: --history causal in the replay") from None


def _check_capacities(setup: ReplaySetup, cfg: MTGRConfig, dtype: torch.dtype, trace: Trace) -> None:
    largest_tokens = int(trace.arrays(["n_static"])["n_static"].max())
    shape = KVShape(cfg.n_layers, cfg.n_heads, cfg.head_dim, dtype, setup.options.page_tokens)
    sizer = shape.sizer_for(setup.host_kv)
    if setup.cache != "none" or setup.baseline:
        require_fits("--gpu-cache", setup.gpu_capacity, sizer.size_of(largest_tokens), largest_tokens)
    if setup.cache == "tiered":
        require_fits("--host-cache", setup.host_capacity, sizer.host_size_of(largest_tokens), largest_tokens)


def planned_runs(setup: ReplaySetup) -> list[tuple[str, CacheConfig]]:
    """(label, cache config) of every run, main runs first."""
    base = CacheConfig(mode=setup.cache, policy=setup.policy, gpu_capacity=setup.gpu_capacity,
                       host_capacity=setup.host_capacity, layout=setup.layouts[0], sync=setup.sync,
                       write_back=setup.write_back, inclusive=setup.inclusive, host_kv=setup.host_kv,
                       append=setup.history == "causal")
    runs: list[tuple[str, CacheConfig]] = []
    if setup.cache == "tiered":
        for layout in setup.layouts:
            config = replace(base, layout=layout)
            runs.append((_label(config), config))
    else:
        runs.append((_label(base), base))
    if setup.baseline:
        extra = [replace(base, mode="none"), replace(base, mode="gpu", sync=False)]
        if setup.cache == "tiered" and not setup.sync:
            extra.append(replace(base, sync=True))
        for config in extra:
            if all(_label(config) != label for label, _ in runs):
                runs.append((_label(config), config))
    return runs


def _label(config: CacheConfig) -> str:
    if config.mode != "tiered":
        return config.mode
    return f"tiered/{config.layout}" + ("/sync" if config.sync else "")


def build_model(cfg: MTGRConfig, device: torch.device, dtype: torch.dtype, seed: int) -> MTGR:
    """The model that serves (replay, capacity, calibrate), on a process set up to serve from `device`."""
    serve_from_one_host_thread(device)
    torch.manual_seed(seed)
    return MTGR(cfg).to(device=device, dtype=dtype).eval()


@dataclass
class ReplayOutcome:
    summary: dict
    records: pd.DataFrame
    verify: VerifyResult | None


def run_replay(setup: ReplaySetup, progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
               feed_factory: Callable[[Trace], BatchFeed] | None = None) -> ReplayOutcome:
    """Validate, run every planned configuration, verify, and return the report's summary and records.
    `feed_factory` (open loop, `mtbench.serve.openloop`) makes a fresh batch feed for each run."""
    cfg, trace, device, dtype = validate_setup(setup)
    model = build_model(cfg, device, dtype, setup.options.seed)
    total = trace.num_rows if setup.options.max_requests is None else min(trace.num_rows, setup.options.max_requests)
    results: list[RunResult] = []
    for index, (label, config) in enumerate(planned_runs(setup)):
        options = replace(setup.options, verify_sample=setup.verify if index == 0 else 0)
        feed = feed_factory(trace) if feed_factory is not None else None
        progress = progress_factory(label, total) if progress_factory else None
        results.append(replay_run(model, trace, config, options, label, progress, feed=feed))
        if results[0].row["requests"] == 0:
            raise MtbenchError(f"--warmup {setup.options.warmup} covers every batch (the last one starts before request "
                               f"{setup.options.warmup}), so nothing was measured; lower --warmup")
    verify = verify_samples(model, results[0].samples, lossy=results[0].row["lossy"]) if setup.verify else None
    rows = [r.row for r in results]
    add_speedups(rows)
    if verify is not None:
        rows[0].update(verify.row_fields())
    summary = {"kind": "replay", "trace": trace.fingerprint(), "model": setup.model, "dtype": setup.dtype,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               # the effective value: graphs are captured only where the forward can be graphed (CUDA)
               "config": {**setup.config_dict(), "cuda_graphs": setup.options.cuda_graphs and graphs_supported(model)},
               "rows": rows}
    notes = [CPU_TIMING_NOTE] if device.type == "cpu" else []
    if setup.host_kv is not None:
        notes.append(lossy_note(setup.host_kv))
    if notes:
        summary["note"] = "; ".join(notes)
    records = pd.concat([r.records for r in results], ignore_index=True)
    return ReplayOutcome(summary, records, verify)


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_<baseline> = baseline's ms per request / this run's (when that baseline ran)."""
    by_label = {row["run"]: row for row in rows}
    baselines = {"none": "none", "gpu": "gpu"}
    for row in rows:
        own = row.get("ms_per_request")
        for name, label in baselines.items():
            other = by_label.get(label)
            row[f"speedup_vs_{name}"] = (other["ms_per_request"] / own) if other and own else None
        sync_row = by_label.get(f"{row['run']}/sync") if row["cache_mode"] == "tiered" and not row["sync"] else None
        row["speedup_vs_sync"] = sync_row["ms_per_request"] / own if sync_row and own else None
        row["est_speedup"] = row.get("est_speedup")
        row["est_ms_per_request"] = row.get("est_ms_per_request")
