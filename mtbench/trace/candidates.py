"""Candidate-count distributions for importers and the generator: "128", "fixed:128",
"lognormal:MEDIAN:SIGMA" (exp of a normal around log MEDIAN) or "uniform:LO:HI" (inclusive).
Draws are rounded, at least 1 and at most `max_cand`; the same seed gives the same counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError

KINDS = ("fixed", "lognormal", "uniform")


@dataclass(frozen=True)
class CandidateDist:
    """kind in KINDS; params: fixed (n,), lognormal (median, sigma), uniform (lo, hi)."""

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> "CandidateDist":
        parts = str(text).strip().split(":")
        try:
            if len(parts) == 1:
                return cls._checked("fixed", (float(parts[0]),), text)
            kind, values = parts[0].lower(), tuple(float(p) for p in parts[1:])
        except ValueError:
            raise MtbenchError(f"--cand-dist: cannot read {text!r} (examples: 128, lognormal:64:0.8, uniform:16:256)") from None
        return cls._checked(kind, values, text)

    @classmethod
    def _checked(cls, kind: str, params: tuple[float, ...], text: str) -> "CandidateDist":
        arity = {"fixed": 1, "lognormal": 2, "uniform": 2}
        if kind not in arity or len(params) != arity[kind]:
            raise MtbenchError(f"--cand-dist: cannot read {text!r} (examples: 128, lognormal:64:0.8, uniform:16:256)")
        if kind == "fixed" and params[0] < 1 or kind == "lognormal" and (params[0] <= 0 or params[1] < 0):
            raise MtbenchError(f"--cand-dist: {text!r} needs a count >= 1 (and sigma >= 0)")
        if kind == "uniform" and not 1 <= params[0] <= params[1]:
            raise MtbenchError(f"--cand-dist: {text!r} needs 1 <= LO <= HI")
        return cls(kind, params)

    def sample(self, n: int, rng: np.random.Generator, max_cand: int | None = None) -> np.ndarray:
        """n candidate counts (int64), each in [1, max_cand]."""
        if self.kind == "fixed":
            values = np.full(n, round(self.params[0]), dtype=np.int64)
        elif self.kind == "lognormal":
            values = np.rint(np.exp(rng.normal(np.log(self.params[0]), self.params[1], n))).astype(np.int64)
        else:
            values = rng.integers(int(self.params[0]), int(self.params[1]) + 1, n, dtype=np.int64)
        return np.clip(values, 1, max_cand if max_cand is not None else None)

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{p:g}" for p in self.params)])
