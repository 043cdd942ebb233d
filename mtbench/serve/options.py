"""What a served run is asked to do: its arrivals, its batcher and its latency objective."""

from __future__ import annotations

from dataclasses import dataclass

from mtbench.serve.arrivals import ArrivalSpec, check_slo
from mtbench.serve.batcher import BatcherConfig


@dataclass(frozen=True)
class ServingOptions:
    """Arrivals, batcher and SLO of a served (open-loop) replay or simulation."""

    arrivals: ArrivalSpec = ArrivalSpec()
    batcher: BatcherConfig = BatcherConfig()
    slo_ms: float = 50.0

    def check(self) -> "ServingOptions":
        self.arrivals.check()
        self.batcher.check()
        check_slo(self.slo_ms)
        return self

    def config_dict(self) -> dict:
        return {"arrivals": self.arrivals.mode, "speed": self.arrivals.speed, "rate": self.arrivals.rate,
                "arrival_seed": self.arrivals.seed, "max_wait_ms": self.batcher.max_wait_ms,
                "max_batch_tokens": self.batcher.max_tokens, "slo_ms": self.slo_ms}
