"""Offline experiment: does host-time jitter from the calibration replays close the simulated-vs-measured
p99 gap of a `mtbench capacity --measure` run? (reports/BENCHMARKS.md section 12; not a product feature.)

    PYTHONPATH=$PWD python3 scripts/serving_jitter.py SERVING_DIR TRACE [--block N] [--seed S]

SERVING_DIR is what scripts/gpu_serving_bench.sh leaves in $OUT (capacity_summary.json,
capacity_points.csv, calibration_requests.parquet); TRACE is the same synthetic trace (the bench's step 1).
Jitter: each serial calibration batch's host issue time over the median of its (mode, batch size) run is
a slowdown factor; the simulator multiplies each batch's fixed cost (`BatchOverhead`, the host part of
its price) by these factors, taken in their recorded order in blocks of N consecutive batches from random
starting points (N = 1: independent draws). Prints per mode and measured rate: simulated p99 without and
with jitter, and the measured p99. Runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mtbench.serve.arrivals import ArrivalSpec
from mtbench.serve.batcher import BatcherConfig
from mtbench.serve.capacity import CapacityQuestion, ModeCost, ModeServer, load_workload
from mtbench.serve.options import ServingOptions
from mtbench.serve.service import BatchOverhead, CacheService, CacheSetting
from mtbench.sim.costmodel import CostModel


class JitteredOverhead:
    """A `BatchOverhead` whose fixed cost of each successive batch is scaled by the next recorded factor."""

    def __init__(self, overhead: BatchOverhead, factors: np.ndarray, block: int, seed: int) -> None:
        self.overhead, self.factors, self.block = overhead, factors, block
        self.rng = np.random.default_rng(seed)
        self.position, self.left = 0, 0

    def ms(self, recomputed: float, reused: float, early: bool, rows: int = 0) -> float:
        if self.left == 0:
            self.position, self.left = int(self.rng.integers(len(self.factors))), self.block
        factor = self.factors[self.position % len(self.factors)]
        self.position, self.left = self.position + 1, self.left - 1
        return self.overhead.ms(recomputed, reused, early, rows) * factor

    def tail_ms(self, early: bool) -> float:
        return self.overhead.tail_ms(early)


class JitteredServer(ModeServer):
    """A `ModeServer` whose every DES run prices batches through a fresh `JitteredOverhead`."""

    def __init__(self, factors: np.ndarray, block: int, seed: int, *args) -> None:
        self.factors, self.block, self.seed = factors, block, seed  # before ModeServer prices its saturated run
        super().__init__(*args)

    def _service(self) -> CacheService:
        overhead = JitteredOverhead(self.mode_cost.overhead, self.factors, self.block, self.seed)
        return CacheService(self.workload, self.setting, self.mode_cost.cost, overhead)


def slowdown_factors(calibration: pd.DataFrame) -> np.ndarray:
    serial = calibration[~calibration["warmup"] & ~calibration["pipelined"]]
    batches = serial.groupby(["cache_mode", "batch_size", "batch_index"])["host_forward_ms"].first().reset_index()
    median = batches.groupby(["cache_mode", "batch_size"])["host_forward_ms"].transform("median")
    return (batches["host_forward_ms"] / median).to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("serving", type=Path)
    parser.add_argument("trace", type=Path)
    parser.add_argument("--block", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = json.loads((args.serving / "capacity_summary.json").read_text())
    config = summary["config"]
    cost = CostModel(**{k: v for k, v in config["cost_model"].items() if k != "source"})
    workload, _ = load_workload(args.trace, summary["model"], summary["dtype"], config["page_tokens"],
                                config["max_requests"])
    serving = ServingOptions(ArrivalSpec(config["arrivals"], rate=1.0, seed=config["seed"]),
                             BatcherConfig(config["batch_size"], config["max_wait_ms"], config["max_batch_tokens"]),
                             config["slo_ms"])
    question = CapacityQuestion(serving, config["percentile"], None, config["warmup"])
    factors = slowdown_factors(pd.read_parquet(args.serving / "calibration_requests.parquet"))
    print(f"{len(factors)} calibration batches: slowdown median {np.median(factors):.2f}, "
          f"p99 {np.quantile(factors, 0.99):.2f}, share over 1.5x {np.mean(factors > 1.5):.3f}; block {args.block}")
    points = pd.read_csv(args.serving / "capacity_points.csv")
    settings = {"none": CacheSetting("none"), "gpu": CacheSetting("gpu", config["policy"], config["gpu_cache"]),
                "tiered": CacheSetting("tiered", config["policy"], config["gpu_cache"], config["host_cache"])}
    print(f"{'mode':<7} {'rate':>6} {'sim p99':>8} {'jitter':>8} {'measured':>9}")
    for row in summary["rows"]:
        mode = row["cache_mode"]
        cost_of_mode = ModeCost(cost, BatchOverhead.from_dict(row["batch_overhead_curve"]))
        plain = ModeServer(workload, settings[mode], cost_of_mode, question)
        jittered = JitteredServer(factors, args.block, args.seed, workload, settings[mode], cost_of_mode, question)
        measured = points[(points["source"] == "measured") & (points["cache_mode"] == mode)]
        for rate, p99 in zip(measured["rate"], measured["p99_ms"]):
            cells = [plain.at(rate)["latency_at_percentile_ms"], jittered.at(rate)["latency_at_percentile_ms"], p99]
            print(f"{mode:<7} {rate:>6.0f} " + " ".join(f"{c:>8.1f}" if c == c and c is not None else f"{'-':>8}"
                                                        for c in cells))


if __name__ == "__main__":
    main()
