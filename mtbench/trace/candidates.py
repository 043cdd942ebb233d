"""Count distributions for importers and the generator (candidates per request, S tokens of a user's
history): "128", "fixed:128", "lognormal:MEDIAN:SIGMA" (exp of a normal around log MEDIAN) or
"uniform:LO:HI" (inclusive). Draws are rounded, at least `minimum` (1 for candidates, 0 for histories)
and at most the cap given to `sample`; the same seed gives the same counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError

KINDS = ("fixed", "lognormal", "uniform")
LARGEST_PARAM = 1e12  # keeps every draw well inside int64
_ARITY = {"fixed": 1, "lognormal": 2, "uniform": 2}


@dataclass(frozen=True)
class CandidateDist:
    """kind in KINDS; params: fixed (n,), lognormal (median, sigma), uniform (lo, hi); every draw is
    clipped to at least `minimum` (parse enforces fixed n >= minimum and minimum <= lo <= hi)."""

    kind: str
    params: tuple[float, ...]
    minimum: int = 1

    @classmethod
    def parse(cls, text: str, what: str = "--cand-dist", minimum: int = 1) -> "CandidateDist":
        """Read `text`; errors name the option `what`. `minimum` is the smallest allowed count."""
        parts = str(text).strip().split(":")
        try:
            if len(parts) == 1:
                return cls._checked("fixed", (float(parts[0]),), text, what, minimum)
            kind, values = parts[0].lower(), tuple(float(p) for p in parts[1:])
        except ValueError:
            raise MtbenchError(f"{what}: cannot read {text!r} ({cls._examples(minimum)})") from None
        return cls._checked(kind, values, text, what, minimum)

    @staticmethod
    def _examples(minimum: int) -> str:
        return "examples: 128, lognormal:64:0.8, uniform:16:256" if minimum >= 1 else "examples: 900, lognormal:200:1.0, uniform:800:1000"

    @classmethod
    def _checked(cls, kind: str, params: tuple[float, ...], text: str, what: str, minimum: int) -> "CandidateDist":
        if kind not in _ARITY or len(params) != _ARITY[kind] or not all(math.isfinite(p) for p in params):
            raise MtbenchError(f"{what}: cannot read {text!r} ({cls._examples(minimum)})")
        if max(params) > LARGEST_PARAM:
            raise MtbenchError(f"{what}: {text!r} has a value above {LARGEST_PARAM:g}")
        if kind == "fixed" and params[0] < minimum or kind == "lognormal" and (params[0] <= 0 or params[1] < 0):
            needs = f"a count >= {minimum}" if kind == "fixed" else "a median > 0 and sigma >= 0"
            raise MtbenchError(f"{what}: {text!r} needs {needs}")
        if kind == "uniform" and not minimum <= params[0] <= params[1]:
            raise MtbenchError(f"{what}: {text!r} needs {minimum} <= LO <= HI")
        return cls(kind, params, minimum)

    def sample(self, n: int, rng: np.random.Generator, max_cand: int | None = None) -> np.ndarray:
        """n counts (int64), each in [minimum, max_cand]."""
        if self.kind == "fixed":
            values = np.full(n, round(self.params[0]), dtype=np.int64)
        elif self.kind == "lognormal":
            draws = np.exp(rng.normal(np.log(self.params[0]), self.params[1], n))
            values = np.rint(np.minimum(draws, 2.0**62)).astype(np.int64)
        else:
            values = rng.integers(int(self.params[0]), int(self.params[1]) + 1, n, dtype=np.int64)
        return np.clip(values, self.minimum, max_cand if max_cand is not None else None)

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{p:g}" for p in self.params)])
