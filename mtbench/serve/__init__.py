"""Serving under load: requests arrive in time and wait for a dynamic batcher (DESIGN.md section 6).

- `arrivals`: when requests arrive (the trace's ts scaled, Poisson at a rate, or closed loop);
- `batcher`: the dynamic batcher's closing rules (size, wait, token budget), pure logic;
- `des`: the discrete-event server clock (arrivals + service time of a batch -> per-request times);
- `stats`: percentiles, SLO attainment, goodput, queue length, overload;
- `service`: per-request outcomes (cache simulator) and costs (cost model) of a trace under one mode;
- `capacity`: the highest rate within an SLO per cache mode, GPUs for a target rate;
- `options`: arrivals + batcher + SLO of a served run;
- `openloop`: the real open-loop replay (load generator thread + the engine's batch feed).
"""
