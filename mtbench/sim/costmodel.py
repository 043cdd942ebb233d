"""Cost model: what a request costs on the GPU, by outcome, to turn simulated outcomes into time.

Per request:
    compute_ms  = request_overhead_ms + new_token_ms * (n_rt + n_cand) + static_token_ms * recomputed
    transfer_ms = host->GPU bytes / h2d_GBps     (a host hit)
where `recomputed` is n_static on a miss/stale, 0 on a hit, and the tokens past the cached ones on a
partial (append-variant) hit. Over a run (`total_ms`), copies run on their own stream while the
GPU computes (layer-wise, and for queued requests ahead of time), so
    total_ms = sum(compute_ms) + max(0, sum(transfer_ms) - transfer_overlap * sum(compute_ms)).
`transfer_overlap` is the share of compute time under which the pipeline hides copies (1.0: copies
cost nothing while the link is less busy than the GPU; 0.0: synchronous copies). GPU->host copies
(write-back, write-through) use the other direction of the link, off the critical path, and only
count as bytes.

Defaults (`CostModel.default`) come from ../shared/DESIGN.md section 7 (H200): 52 GB/s pinned copies
each way (16 MB-1 GB copies), and compute from the model's FLOPs (`mtbench.model.flops`) at an
effective 250 TFLOP/s in bf16/fp16 (between the measured 241-289 TFLOP/s of a tuned HSTU attention
kernel and the 750-790 TFLOP/s matmul peak) or 50 TFLOP/s in fp32; the per-token costs are taken
at a typical request (1000 history tokens + U, 50 real-time, 100 candidates). `mtbench calibrate`
measures every field on a real device and saves them with `save`; `load` reads them back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.paths import write_text_atomic

DESIGN_H2D_GBPS = 52.0
DESIGN_D2H_GBPS = 52.0
EFFECTIVE_TFLOPS = {"bf16": 250.0, "fp16": 250.0, "fp32": 50.0}
TYPICAL_REQUEST = {"history": 1000, "n_rt": 50, "n_cand": 100}


@dataclass(frozen=True)
class CostModel:
    """Per-request GPU costs (milliseconds) and copy bandwidths (GB/s = 1e9 bytes/s)."""

    static_token_ms: float
    new_token_ms: float
    request_overhead_ms: float = 0.02
    h2d_GBps: float = DESIGN_H2D_GBPS
    d2h_GBps: float = DESIGN_D2H_GBPS
    transfer_overlap: float = 1.0
    source: str = "default (DESIGN.md section 7)"

    def __post_init__(self) -> None:
        for field in ("static_token_ms", "new_token_ms", "request_overhead_ms", "transfer_overlap"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise MtbenchError(f"cost model: {field} must be a finite number >= 0, got {value!r}")
        for field in ("h2d_GBps", "d2h_GBps"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise MtbenchError(f"cost model: {field} must be a finite number > 0, got {value!r}")

    @classmethod
    def default(cls, cfg: Any, dtype: str = "bf16") -> "CostModel":
        """Defaults for model config `cfg` (an MTGRConfig) stored and computed in `dtype`."""
        from mtbench.model.flops import miss_and_hit_flops

        if dtype not in EFFECTIVE_TFLOPS:
            raise MtbenchError(f"unknown dtype {dtype!r} (choose from {', '.join(EFFECTIVE_TFLOPS)})")
        flops_per_ms = EFFECTIVE_TFLOPS[dtype] * 1e9
        n_static = cfg.n_user_tokens + min(TYPICAL_REQUEST["history"], cfg.max_seq)
        n_rt, n_cand = TYPICAL_REQUEST["n_rt"], TYPICAL_REQUEST["n_cand"]
        miss, hit = miss_and_hit_flops(cfg, n_static, n_rt, n_cand)
        return cls(
            static_token_ms=(miss.total - hit.total) / n_static / flops_per_ms,
            new_token_ms=hit.total / (n_rt + n_cand) / flops_per_ms,
            source=f"default (DESIGN.md section 7; {cfg.name}, {dtype}, {EFFECTIVE_TFLOPS[dtype]:g} TFLOP/s)",
        )

    @classmethod
    def load(cls, path: Path | str) -> "CostModel":
        """Read a calibration JSON (the fields of this class); MtbenchError naming the file if it is bad."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MtbenchError(f"--cost-model: {path} does not exist") from None
        except (OSError, ValueError) as err:
            raise MtbenchError(f"--cost-model: {path} is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise MtbenchError(f"--cost-model: {path} must hold a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MtbenchError(f"--cost-model: {path}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.name in ("static_token_ms", "new_token_ms"))
        if missing:
            raise MtbenchError(f"--cost-model: {path}: missing field(s) {', '.join(missing)}")
        data.setdefault("source", f"calibration {path.name}")
        try:
            return cls(**data)
        except MtbenchError as err:
            raise MtbenchError(f"--cost-model: {path}: {err}") from None

    def save(self, path: Path | str) -> Path:
        return write_text_atomic(Path(path), json.dumps(asdict(self), indent=2) + "\n")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------ costs
    def compute_ms(self, n_new: np.ndarray, recomputed: np.ndarray) -> np.ndarray:
        """GPU time of requests with `n_new` R+C tokens and `recomputed` static tokens."""
        return self.request_overhead_ms + self.new_token_ms * np.asarray(n_new) + self.static_token_ms * np.asarray(recomputed)

    def h2d_ms(self, n_bytes: np.ndarray | float) -> np.ndarray:
        return np.asarray(n_bytes, dtype=np.float64) / (self.h2d_GBps * 1e6)

    def d2h_ms(self, n_bytes: np.ndarray | float) -> np.ndarray:
        return np.asarray(n_bytes, dtype=np.float64) / (self.d2h_GBps * 1e6)

    def total_ms(self, n_new: np.ndarray, recomputed: np.ndarray, h2d_bytes: float) -> tuple[float, float]:
        """(total estimated ms of a run, of which copy time not hidden under compute)."""
        compute = float(np.sum(self.compute_ms(n_new, recomputed)))
        exposed = self.exposed_ms(float(self.h2d_ms(h2d_bytes)), compute)
        return compute + exposed, exposed

    def exposed_ms(self, transfer_ms: float, compute_ms: float) -> float:
        """Copy time not hidden under `compute_ms` of GPU work (see the module docstring)."""
        return max(0.0, transfer_ms - self.transfer_overlap * compute_ms)

    def recompute_ms(self, n_static: np.ndarray | float) -> np.ndarray:
        """What recomputing a prefix of `n_static` tokens costs (a miss's extra work)."""
        return self.static_token_ms * np.asarray(n_static, dtype=np.float64)
