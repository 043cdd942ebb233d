"""`--verify N`: re-run sampled requests with the full forward and check the cached scores.

Precision rule (common to the project):
- fp32 model: every sampled request's cached scores match the full forward's to `FP32_RTOL` relative;
- bf16 model: against an fp32 reference (the same weights in fp32, PyTorch reference kernels), the
  cached scores' largest error is at most 2x the largest error of a plain bf16 full forward that
  uses the PyTorch reference kernels.
Relative error of a request = max |a - b| / max |b| over its CTR and CTCVR probabilities.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mtbench.model import MTGR, RequestSpec, build_batch
from mtbench.replay.engine import ScoreSample

FP32_RTOL = 5e-5
BF16_FACTOR = 2.0
VERIFY_BATCH = 16


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    max_rel_err: float  # cached vs full (fp32) or cached vs fp32 reference (bf16)
    bound: float
    reference_rel_err: float | None  # bf16 only: plain bf16 reference vs fp32 reference
    worst_request: int | None

    @property
    def ok(self) -> bool:
        return self.max_rel_err <= self.bound

    def message(self) -> str:
        what = f"verify: {self.checked} sampled requests, largest relative error {self.max_rel_err:.3g}"
        if self.reference_rel_err is not None:
            what += f" (plain bf16 reference: {self.reference_rel_err:.3g})"
        verdict = "ok" if self.ok else f"BROKEN (worst request index {self.worst_request})"
        return f"{what}, bound {self.bound:.3g}: {verdict}"


@contextmanager
def _reference_kernels() -> Iterator[None]:
    previous = os.environ.get("MTBENCH_KERNELS")
    os.environ["MTBENCH_KERNELS"] = "reference"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MTBENCH_KERNELS"]
        else:
            os.environ["MTBENCH_KERNELS"] = previous


def _full_scores(model: MTGR, specs: list[RequestSpec]) -> list[torch.Tensor]:
    """Per request: concat(ctr, ctcvr) of the full forward, float32 on the CPU."""
    result: list[torch.Tensor] = []
    for start in range(0, len(specs), VERIFY_BATCH):
        chunk = [RequestSpec(s.user_id, s.static_version, s.request_key, s.n_static, s.n_rt, s.n_cand)
                 for s in specs[start:start + VERIFY_BATCH]]
        scores = model(build_batch(chunk, model.cfg, model.device))
        offsets = scores.offsets.tolist()
        for b in range(len(chunk)):
            lo, hi = offsets[b], offsets[b + 1]
            result.append(torch.cat([scores.ctr[lo:hi], scores.ctcvr[lo:hi]]).float().cpu())
    return result


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))


def verify_samples(model: MTGR, samples: dict[int, ScoreSample]) -> VerifyResult:
    """Check `samples` (request index -> cached scores) under the precision rule above."""
    indices = sorted(samples)
    specs = [samples[i].request for i in indices]
    cached = [torch.cat([samples[i].ctr, samples[i].ctcvr]) for i in indices]
    if not indices:
        return VerifyResult(0, 0.0, FP32_RTOL, None, None)
    if model.dtype == torch.float32:
        full = _full_scores(model, specs)
        errors = [_rel(c, f) for c, f in zip(cached, full)]
        worst = max(range(len(errors)), key=errors.__getitem__)
        return VerifyResult(len(indices), errors[worst], FP32_RTOL, None, indices[worst])
    with _reference_kernels():
        plain = _full_scores(model, specs)
        reference_model = copy.deepcopy(model).float()
        reference = _full_scores(reference_model, specs)
        del reference_model
    errors = [_rel(c, r) for c, r in zip(cached, reference)]
    reference_error = max(_rel(p, r) for p, r in zip(plain, reference))
    worst = max(range(len(errors)), key=errors.__getitem__)
    bound = BF16_FACTOR * max(reference_error, 1e-6)
    return VerifyResult(len(indices), errors[worst], bound, reference_error, indices[worst])
