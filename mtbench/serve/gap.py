"""Where a capacity run's simulated service times differ from the measured ones, batch by batch.

`batch_gaps` reads a `mtbench capacity --measure` report (measured_requests.parquet, summary.json) and
prices every measured open-loop batch's REAL decisions as the simulator prices its own
(`batch_costs` + the mode's `BatchOverhead` + `batch_price_ms`; its plane, without the draw from its
`spread`: the gap is that deviation), beside what the batch took (start to finish) and the copy stall
the replay measured. `gap_summary` averages them per mode, early/serial
batch and size class. A batch is `early` when it held max_batch requests, the last of which arrived
before the previous batch started (the server planned it while that one ran): the simulator's rule
(`mtbench.serve.des`) for a batcher without a token budget. `host_summary` sets the batches that took
SLOW_MS longer than their price beside the rest: the host's wall time issuing their forwards, the
server thread's CPU time in it (a thread that waited for a core shows less CPU than wall time), the
kernel's share of that CPU time, the minor page faults taken and the times the scheduler took the
thread's core (reports from 2026-12-01 on). `with_host_samples` adds what the whole machine did around
each batch, from `scripts/host_sampler.py`'s CSV: CPUs busy and CPUs stolen by the hypervisor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mtbench.cache.sizes import EntrySizer
from mtbench.errors import MtbenchError
from mtbench.model import get_config
from mtbench.model.config import parse_dtype
from mtbench.serve.service import BatchOverhead, batch_costs, batch_price_ms
from mtbench.sim.costmodel import CostModel

SIZE_CLASSES = (1, 8, 16, 32, 64)  # a class holds sizes from its bound up to the next one
SIZE_LABELS = ("1-7", "8-15", "16-31", "32-63", "64+")
HOST_COLUMNS = {"host_forward_ms": "host_ms", "host_forward_cpu_ms": "host_cpu_ms",  # records -> gaps (newer reports)
                "host_forward_kernel_ms": "host_kernel_ms", "host_forward_faults": "host_faults",
                "host_forward_preemptions": "host_preemptions"}
SAMPLE_COLUMNS = ("busy_cpus", "steal_cpus")  # `with_host_samples`
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")  # /proc/stat fields of a CPU doing work
SLOW_MS = 3.0  # a batch this much slower than its price is `slow` in `host_summary`


def batch_gaps(report: Path) -> pd.DataFrame:
    """One row per measured batch: cache_mode, rate, size, early, measured_ms, simulated_ms, fixed_ms,
    compute_ms, exposed_ms (the copies the model leaves unhidden), stall_ms (measured) and, where the
    report has them, host_ms, host_cpu_ms, host_kernel_ms, host_faults and host_preemptions (the forwards'
    host issue: wall, the thread's CPU time, its kernel part, minor page faults and involuntary context
    switches), clock_start_s and clock_finish_s (the batch on the host's monotonic clock); NaN where the
    report lacks them."""
    report = Path(report)
    requests_path, summary_path = report / "measured_requests.parquet", report / "summary.json"
    if not requests_path.exists() or not summary_path.exists():
        raise MtbenchError(f"{report}: not a `mtbench capacity --measure` report (needs measured_requests.parquet "
                           "and summary.json)")
    summary = json.loads(summary_path.read_text())
    config = summary["config"]
    cost = CostModel(**config["cost_model"])
    sizer = EntrySizer(get_config(summary["model"]).kv_bytes_per_token(parse_dtype(summary["dtype"])),
                       config["page_tokens"])
    overheads = {row["cache_mode"]: BatchOverhead.from_dict(row["batch_overhead_curve"]) for row in summary["rows"]}
    requests = pd.read_parquet(requests_path)
    runs = ["cache_mode", "rate"] + (["repeat"] if "repeat" in requests else [])  # one run per repeat (`--measure-repeats`)
    frames = [_run_gaps(run, cost, sizer, overheads[key[0]], config["batch_size"], key[0], key[1])
              for key, run in requests.groupby(runs, sort=False)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gap_summary(gaps: pd.DataFrame) -> pd.DataFrame:
    """Means per (cache_mode, early, size class) of `batch_gaps`, with the relative gap of the means."""
    position = np.searchsorted(np.asarray(SIZE_CLASSES), gaps["size"], side="right") - 1
    keyed = gaps.assign(size_class=pd.Categorical(np.asarray(SIZE_LABELS)[position], categories=SIZE_LABELS, ordered=True))
    columns = ["measured_ms", "simulated_ms", "fixed_ms", "compute_ms", "exposed_ms", "stall_ms"]
    groups = keyed.groupby(["cache_mode", "early", "size_class"], sort=True, observed=True)
    table = groups[columns].mean()
    table.insert(0, "batches", groups.size())
    table["gap"] = (table["simulated_ms"] - table["measured_ms"]) / table["measured_ms"]
    return table.reset_index()


def with_host_samples(gaps: pd.DataFrame, samples: Path, window_s: float = 0.05) -> pd.DataFrame:
    """`gaps` with SAMPLE_COLUMNS: the CPUs the whole machine kept busy and the CPUs the hypervisor stole
    (both in CPUs, e.g. 1.5) over the batch widened by `window_s` on each side (a tick is 10 ms and the
    sampler's interval about 50 ms, so a single batch's figure is coarse: compare means), from the
    cumulative CPU seconds in `scripts/host_sampler.py`'s CSV interpolated on the monotonic clock."""
    try:
        table = pd.read_csv(samples)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        table = pd.DataFrame()
    missing = {"clock_s", "steal", *BUSY_FIELDS} - set(table.columns)
    if missing or len(table) < 2:
        raise MtbenchError(f"{samples}: not a host_sampler.py CSV (missing {sorted(missing) or 'rows'})")
    if gaps["clock_start_s"].isna().all():
        raise MtbenchError("the report's records have no clock_origin_s (made before 2026-12-01): cannot align host samples")
    clock = table["clock_s"].to_numpy(dtype=float)
    begin = gaps["clock_start_s"].to_numpy(dtype=float) - window_s
    end = gaps["clock_finish_s"].to_numpy(dtype=float) + window_s

    def cpus(seconds: np.ndarray) -> np.ndarray:
        return (np.interp(end, clock, seconds) - np.interp(begin, clock, seconds)) / (end - begin)

    busy = table[list(BUSY_FIELDS)].sum(axis=1).to_numpy(dtype=float)
    return gaps.assign(busy_cpus=cpus(busy), steal_cpus=cpus(table["steal"].to_numpy(dtype=float)))


def host_summary(gaps: pd.DataFrame) -> pd.DataFrame:
    """Per (cache_mode, rate) and slow or not (measured - simulated > SLOW_MS): batches and the means of
    measured, simulated, the host columns (`HOST_COLUMNS`) and, after `with_host_samples`, the machine's."""
    modes = {mode: order for order, mode in enumerate(pd.unique(gaps["cache_mode"]))}
    keyed = gaps.assign(slow=gaps["measured_ms"] - gaps["simulated_ms"] > SLOW_MS,
                        mode_order=gaps["cache_mode"].map(modes))
    groups = keyed.groupby(["mode_order", "cache_mode", "rate", "slow"], sort=True)
    machine = [name for name in SAMPLE_COLUMNS if name in gaps]
    table = groups[["measured_ms", "simulated_ms", *HOST_COLUMNS.values(), *machine]].mean()
    table.insert(0, "batches", groups.size())
    return table.reset_index().drop(columns="mode_order")


def _run_gaps(run: pd.DataFrame, cost: CostModel, sizer: EntrySizer, overhead: BatchOverhead, max_batch: int,
              mode: str, rate: float) -> pd.DataFrame:
    if "clock_origin_s" not in run:  # reports made before 2026-12-01
        run = run.assign(clock_origin_s=np.nan)
    batches = run.groupby("batch_index").agg(size=("request_index", "size"), start=("start_s", "first"),
                                            finish=("finish_s", "first"), last_arrival=("arrival_s", "max"),
                                            stall_ms=("stall_ms", "first"),
                                            origin=("clock_origin_s", "first"),
                                            **{name: (column, "first") for column, name in HOST_COLUMNS.items()
                                               if column in run}).sort_index()
    previous_start = batches["start"].shift(1, fill_value=-np.inf)
    early = (batches["size"] == max_batch) & (batches["last_arrival"] <= previous_start)
    costs = batch_costs(run, cost, sizer).reindex(batches.index)
    fixed = np.array([overhead.ms(int(r), int(u), bool(e), int(rows))
                      for r, u, e, rows in zip(costs["recomputed"], costs["reused"], early, costs["rows"])])
    simulated = np.array([batch_price_ms(cost, c, h, f, overhead.tail_ms(bool(e)))
                          for c, h, f, e in zip(costs["compute_ms"], costs["h2d_ms"], fixed, early)])
    return pd.DataFrame({
        "cache_mode": mode, "rate": rate, "batch_index": batches.index, "size": batches["size"].to_numpy(),
        "early": early.to_numpy(), "measured_ms": ((batches["finish"] - batches["start"]) * 1e3).to_numpy(),
        "simulated_ms": simulated, "fixed_ms": fixed, "compute_ms": costs["compute_ms"].to_numpy(),
        "exposed_ms": simulated - fixed - costs["compute_ms"].to_numpy(), "stall_ms": batches["stall_ms"].to_numpy(),
        "clock_start_s": (batches["origin"] + batches["start"]).to_numpy(),
        "clock_finish_s": (batches["origin"] + batches["finish"]).to_numpy(),
        **{name: batches[name].to_numpy() if name in batches else np.full(len(batches), np.nan)
           for name in HOST_COLUMNS.values()},
    })

