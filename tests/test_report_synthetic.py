"""Realistic synthetic compare-policies and replay results for the report tests.

Numbers are drawn at random but keep the invariants real runs keep: outcome counts sum to the request
count, hit ratio grows with capacity, OPT bounds every policy, replay rows are computed from the very
records written beside them, occupancy never exceeds capacity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

GIB = 1024**3
POLICIES = ["lru", "fifo", "lfu", "arc", "s3fifo", "sieve", "gdsf", "locality", "opt"]
KV_BYTES_PER_TOKEN = 15 * 2 * 768 * 2


def trace_info(rows: int, name: str = "synthetic-day.parquet") -> dict[str, Any]:
    return {"path": f"traces/{name}", "rows": rows, "sha256": "ab" * 32}


def compare_policies_result(rng: np.random.Generator, policies: list[str] = POLICIES,
                            capacities_gib: list[float] = (1, 2, 4, 8, 16, 32), host_gib: float = 64,
                            requests: int = 250_000) -> tuple[dict[str, Any], pd.DataFrame]:
    """A compare-policies summary (rows per policy x GPU capacity) and its records table."""
    quality = {p: (1.0 if p == "opt" else rng.uniform(0.75, 0.95)) for p in policies}
    rows = []
    for policy in policies:
        for capacity in capacities_gib:
            reach = 1 - np.exp(-capacity / 6)
            gpu_ratio = 0.85 * reach * quality[policy]
            host_ratio = (0.85 - gpu_ratio) * 0.9 * quality[policy]
            gpu_hits = int(requests * gpu_ratio)
            host_hits = int(requests * host_ratio)
            stale = int(rng.integers(0, requests // 100))
            misses = requests - gpu_hits - host_hits - stale
            est_ms = 4.0 * misses / requests + 1.1 * (gpu_hits + host_hits) / requests + rng.uniform(0, 0.05)
            rows.append({
                "policy": policy, "gpu_capacity": int(capacity * GIB), "host_capacity": int(host_gib * GIB),
                "requests": requests, "gpu_hits": gpu_hits, "host_hits": host_hits, "misses": misses,
                "stale": stale, "hit_ratio": (gpu_hits + host_hits) / requests, "gpu_hit_ratio": gpu_hits / requests,
                "token_hit_ratio": min(1.0, (gpu_hits + host_hits) / requests * rng.uniform(1.0, 1.05)),
                "bytes_h2d": int(host_hits * 2.3e7), "bytes_d2h": int(misses * 2.3e7 * rng.uniform(0.3, 1)),
                "gpu_evictions": int(misses * rng.uniform(0.5, 1)), "host_evictions": int(misses * rng.uniform(0, 0.3)),
                "est_ms_per_request": est_ms, "est_speedup": 4.0 / est_ms,
            })
    summary = {
        "kind": "compare-policies", "trace": trace_info(requests), "model": "large", "dtype": "bf16",
        "config": {"policies": policies, "gpu_capacities": [int(c * GIB) for c in capacities_gib],
                   "host_capacity": int(host_gib * GIB), "capacity_unit": "bytes", "cost_model": None,
                   "seed": int(rng.integers(0, 1000))},
        "rows": rows,
    }
    return summary, pd.DataFrame(rows)


REPLAY_RUNS = {  # run -> (policy, cache_mode, sync)
    "none": (None, "none", False),
    "gpu": ("lru", "gpu", False),
    "tiered/hybrid": ("lru", "tiered", False),
    "tiered/hybrid/sync": ("lru", "tiered", True),
}
_OUTCOME_LATENCY_MS = {"gpu_hit": 1.2, "host_hit": 2.0, "miss": 5.5, "stale": 5.8}


def replay_result(rng: np.random.Generator, requests: int = 3000, gpu_gib: float = 4, host_gib: float = 32,
                  runs: dict[str, tuple[str | None, str, bool]] = REPLAY_RUNS,
                  ) -> tuple[dict[str, Any], pd.DataFrame]:
    """A replay summary (one row per run) computed from per-request records of every run."""
    ts = np.cumsum(rng.exponential(0.01, requests))
    users = rng.zipf(1.3, requests) % 500
    n_static = rng.integers(200, 1101, requests)
    n_rt = rng.integers(0, 101, requests)
    n_cand = rng.integers(1, 257, requests)
    frames, rows = [], []
    for run, (policy, mode, sync) in runs.items():
        outcome = _outcomes(rng, requests, mode)
        latency = np.array([_OUTCOME_LATENCY_MS[o] for o in outcome]) * rng.lognormal(0, 0.25, requests)
        if sync:
            latency = latency + np.where(outcome == "host_hit", 1.5, 0.0)
        gpu_used = np.minimum(np.cumsum(n_static * KV_BYTES_PER_TOKEN * 0.5), gpu_gib * GIB) if mode != "none" else 0 * ts
        host_used = np.minimum(np.cumsum(n_static * KV_BYTES_PER_TOKEN * 0.3), host_gib * GIB) if mode == "tiered" else 0 * ts
        frame = pd.DataFrame({
            "run": run, "request_index": np.arange(requests), "ts": ts, "user_id": users.astype(np.int64),
            "static_version": np.zeros(requests, dtype=np.int64), "outcome": outcome, "n_static": n_static,
            "n_rt": n_rt, "n_cand": n_cand, "latency_ms": latency, "batch_index": np.arange(requests) // 8,
            "gpu_used_bytes": gpu_used.astype(np.int64), "host_used_bytes": host_used.astype(np.int64),
        })
        frames.append(frame)
        rows.append(_replay_row(frame, run, policy, mode, sync, gpu_gib, host_gib))
    baseline = {row["run"]: row["p50_ms"] for row in rows}
    for row in rows:
        for name, key in (("none", "speedup_vs_none"), ("gpu", "speedup_vs_gpu"), ("tiered/hybrid/sync", "speedup_vs_sync")):
            if name in baseline:
                row[key] = baseline[name] / row["p50_ms"]
    summary = {
        "kind": "replay", "trace": trace_info(requests), "model": "large", "dtype": "bf16",
        "config": {"gpu_capacity": int(gpu_gib * GIB), "host_capacity": int(host_gib * GIB), "policy": "lru",
                   "layout": "hybrid", "batch_size": 8, "verify": True, "capacity_unit": "bytes"},
        "rows": rows,
    }
    return summary, pd.concat(frames, ignore_index=True)


def _outcomes(rng: np.random.Generator, requests: int, mode: str) -> np.ndarray:
    shares = {"none": [0, 0, 1, 0], "gpu": [0.55, 0, 0.44, 0.01], "tiered": [0.55, 0.3, 0.14, 0.01]}[mode]
    return rng.choice(np.array(["gpu_hit", "host_hit", "miss", "stale"]), size=requests, p=shares)


def _replay_row(frame: pd.DataFrame, run: str, policy: str | None, mode: str, sync: bool,
                gpu_gib: float, host_gib: float) -> dict[str, Any]:
    counts = frame["outcome"].value_counts()
    requests = len(frame)
    hits = int(counts.get("gpu_hit", 0) + counts.get("host_hit", 0))
    bytes_h2d = int((frame["outcome"] == "host_hit").sum() * 2.3e7)
    seconds = float(frame["ts"].iloc[-1])
    latency = frame["latency_ms"]
    batches = frame.groupby("batch_index")["latency_ms"].sum()
    return {
        "run": run, "policy": policy, "cache_mode": mode, "layout": "hybrid" if mode == "tiered" else None,
        "sync": sync, "gpu_capacity": int(gpu_gib * GIB) if mode != "none" else 0,
        "host_capacity": int(host_gib * GIB) if mode == "tiered" else 0, "requests": requests,
        "gpu_hits": int(counts.get("gpu_hit", 0)), "host_hits": int(counts.get("host_hit", 0)),
        "misses": int(counts.get("miss", 0)), "stale": int(counts.get("stale", 0)),
        "hit_ratio": hits / requests, "gpu_hit_ratio": int(counts.get("gpu_hit", 0)) / requests,
        "token_hit_ratio": float(frame.loc[frame["outcome"].isin(["gpu_hit", "host_hit"]), "n_static"].sum()
                                 / frame["n_static"].sum()),
        "bytes_h2d": bytes_h2d, "bytes_d2h": int(bytes_h2d * 0.6), "gpu_evictions": int(counts.get("miss", 0) // 2),
        "host_evictions": int(counts.get("miss", 0) // 5), "est_ms_per_request": float(latency.mean()),
        "est_speedup": 5.5 / float(latency.mean()), "p50_ms": float(latency.quantile(0.5)),
        "p99_ms": float(latency.quantile(0.99)), "batch_p50_ms": float(batches.quantile(0.5)),
        "batch_p99_ms": float(batches.quantile(0.99)), "requests_per_s": requests / seconds,
        "candidates_per_s": float(frame["n_cand"].sum()) / seconds, "h2d_GBps": bytes_h2d / 1e9 / seconds,
        "d2h_GBps": bytes_h2d * 0.6 / 1e9 / seconds, "compute_ms": float(latency.sum() * 0.8),
        "transfer_wait_ms": float(latency.sum() * (0.15 if sync else 0.03)), "bookkeeping_ms": float(latency.sum() * 0.02),
        "pipeline_efficiency": 0.97 if not sync else 0.8, "verify_max_rel_err": 3.1e-6,
        "transfer_fallbacks": 0, "host_fragmentation": 0.02 if mode == "tiered" else None,
    }


def test_synthetic_results_keep_real_invariants() -> None:
    """The fixtures themselves: outcome counts add up, OPT bounds every policy, rows match records."""
    rng = np.random.default_rng(7)
    for seed in range(5):
        summary, records = compare_policies_result(np.random.default_rng(seed))
        for row in summary["rows"]:
            assert row["gpu_hits"] + row["host_hits"] + row["misses"] + row["stale"] == row["requests"]
        by_capacity: dict[int, dict[str, float]] = {}
        for row in summary["rows"]:
            by_capacity.setdefault(row["gpu_capacity"], {})[row["policy"]] = row["gpu_hit_ratio"]
        assert all(ratios["opt"] >= max(ratios.values()) - 1e-12 for ratios in by_capacity.values())
        assert len(records) == len(summary["rows"])
    summary, records = replay_result(rng, requests=500)
    for row in summary["rows"]:
        part = records[records["run"] == row["run"]]
        assert row["requests"] == len(part) == 500
        assert row["gpu_hits"] == int((part["outcome"] == "gpu_hit").sum())
        assert part["gpu_used_bytes"].max() <= row["gpu_capacity"]
