"""`--verify N`: re-run sampled requests with the full forward and check the cached scores.

Precision rule (common to the project):
- fp32 model: every sampled request's cached scores match the full forward's to `FP32_RTOL` relative;
- bf16 model: against an fp32 reference (the same weights in fp32, PyTorch reference kernels), the
  cached scores' largest error is at most 2x the largest error of a plain bf16 full forward that
  uses the PyTorch reference kernels.
Relative error of a request = max |a - b| / max |b| over its CTR and CTCVR probabilities.

Lossy runs (an fp8 host tier, `--kv-dtype fp8`) are not held to that rule: fp8 rows carry a per-element
error of up to |x| / 16 + amax / 229376 (kernels/fp8_rows_ref.py), which no score bound follows from.
They report instead the error against the fp32 reference, the error against the full forward in the
model's dtype (the exact cached path equals it within the rule above), and the ranking agreement: the
fraction of requests whose top-10 candidates by CTR (all of them when fewer) are the same set as that
full forward's. Their samples are host hits first (the requests whose prefix came through fp8).
`ok` is then always true; the numbers are the result.
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
TOP_K = 10


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    max_rel_err: float  # cached vs full (fp32) or cached vs fp32 reference (bf16, lossy)
    bound: float  # the exact rule's bound (lossy runs are reported against it, not held to it)
    reference_rel_err: float | None  # bf16 only: plain bf16 reference vs fp32 reference
    worst_request: int | None
    lossy: bool = False
    model_rel_err: float | None = None  # lossy only: cached vs the full forward in the model's dtype
    top10_agreement: float | None = None  # lossy only: fraction of requests with the same top-10 as that forward

    @property
    def ok(self) -> bool:
        return self.lossy or self.max_rel_err <= self.bound

    def message(self) -> str:
        if self.lossy:
            return (f"verify (lossy fp8 host KV): {self.checked} sampled requests, largest relative error "
                    f"{self.max_rel_err:.3g} vs the fp32 reference, {self.model_rel_err:.3g} vs the full forward in "
                    f"the model's dtype; top-{TOP_K} candidates unchanged in {self.top10_agreement:.1%} of them "
                    f"(exact runs' bound {self.bound:.3g} does not apply)")
        what = f"verify: {self.checked} sampled requests, largest relative error {self.max_rel_err:.3g}"
        if self.reference_rel_err is not None:
            what += f" (plain bf16 reference: {self.reference_rel_err:.3g})"
        verdict = "ok" if self.ok else f"BROKEN (worst request index {self.worst_request})"
        return f"{what}, bound {self.bound:.3g}: {verdict}"

    def row_fields(self) -> dict[str, float | int | bool | None]:
        """The summary row's verify columns."""
        return {"verify_max_rel_err": self.max_rel_err, "verify_bound": self.bound, "verify_checked": self.checked,
                "verify_lossy": self.lossy, "verify_model_rel_err": self.model_rel_err,
                "verify_top10_agreement": self.top10_agreement}


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


def top_k_agreement(cached_ctr: list[torch.Tensor], full_ctr: list[torch.Tensor], k: int = TOP_K) -> float:
    """Fraction of requests whose k highest-CTR candidates (all when fewer) are the same set in both."""
    same = 0
    for cached, full in zip(cached_ctr, full_ctr):
        top = min(k, cached.numel())
        same += set(cached.topk(top).indices.tolist()) == set(full.topk(top).indices.tolist())
    return same / max(len(cached_ctr), 1)


def verify_samples(model: MTGR, samples: dict[int, ScoreSample], lossy: bool = False) -> VerifyResult:
    """Check `samples` (request index -> cached scores) under the precision rule above; `lossy`: report
    the errors and the top-10 agreement of a lossy (fp8 host KV) run instead."""
    indices = sorted(samples)
    specs = [samples[i].request for i in indices]
    cached = [torch.cat([samples[i].ctr, samples[i].ctcvr]) for i in indices]
    if not indices:
        return VerifyResult(0, 0.0, FP32_RTOL, None, None, lossy, 0.0 if lossy else None, 1.0 if lossy else None)
    if lossy:
        return _verify_lossy(model, samples, indices, cached)
    if model.dtype == torch.float32:
        full = _full_scores(model, specs)
        errors = [_rel(c, f) for c, f in zip(cached, full)]
        worst = max(range(len(errors)), key=errors.__getitem__)
        return VerifyResult(len(indices), errors[worst], FP32_RTOL, None, indices[worst])
    reference, reference_error = _fp32_reference(model, specs)
    errors = [_rel(c, r) for c, r in zip(cached, reference)]
    worst = max(range(len(errors)), key=errors.__getitem__)
    bound = BF16_FACTOR * max(reference_error, 1e-6)
    return VerifyResult(len(indices), errors[worst], bound, reference_error, indices[worst])


def _verify_lossy(model: MTGR, samples: dict[int, ScoreSample], indices: list[int],
                  cached: list[torch.Tensor]) -> VerifyResult:
    specs = [samples[i].request for i in indices]
    full = _full_scores(model, specs)  # the model's dtype and kernels: what the exact cached path equals
    if model.dtype == torch.float32:
        reference, reference_error, bound = full, None, FP32_RTOL
    else:
        reference, reference_error = _fp32_reference(model, specs)
        bound = BF16_FACTOR * max(reference_error, 1e-6)
    errors = [_rel(c, r) for c, r in zip(cached, reference)]
    worst = max(range(len(errors)), key=errors.__getitem__)
    model_error = max(_rel(c, f) for c, f in zip(cached, full))
    full_ctr = [f[: samples[i].ctr.numel()] for i, f in zip(indices, full)]
    agreement = top_k_agreement([samples[i].ctr.float() for i in indices], full_ctr)
    return VerifyResult(len(indices), errors[worst], bound, reference_error, indices[worst], True, model_error,
                        agreement)


def _fp32_reference(model: MTGR, specs: list[RequestSpec]) -> tuple[list[torch.Tensor], float]:
    """Scores of the same weights in fp32 with the PyTorch reference kernels, and the largest error of a
    plain full forward in the model's dtype (reference kernels) against them."""
    with _reference_kernels():
        plain = _full_scores(model, specs)
        reference_model = copy.deepcopy(model).float()
        reference = _full_scores(reference_model, specs)
        del reference_model
    return reference, max(_rel(p, r) for p, r in zip(plain, reference))
