"""mtbench.serve on the CPU: arrivals, the dynamic batcher's rules, latency accounting, the
discrete-event simulator against M/D/1 queueing theory, overload detection and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from mtbench.errors import MtbenchError
from mtbench.graphs import GraphLimits
from mtbench.serve.arrivals import ArrivalSpec, arrival_times, check_slo
from mtbench.serve.batcher import BatcherConfig, DynamicBatcher
from mtbench.serve.des import closed_loop_rate, serve_queue
from mtbench.serve.stats import is_overloaded, queue_length, serving_stats
from mtbench.serve.service import SPREAD_QUANTILES, BatchOverhead, batch_price_ms
from mtbench.sim.costmodel import CostModel


def _batches(arrivals, config: BatcherConfig, free_at=None, tokens=None, service_s: float = 0.0):
    """Every batch as (members, close time), serving each for service_s."""
    batcher = DynamicBatcher(np.asarray(arrivals, dtype=float), tokens, config)
    out, head, free = [], 0, -np.inf if free_at is None else free_at
    while head < batcher.n:
        end, close = batcher.close(head, free)
        out.append((list(range(head, end)), close))
        head, free = end, close + service_s
    return out


# --------------------------------------------------------------------------------------------- batcher
def test_batch_closes_at_max_batch_when_requests_come_fast() -> None:
    arrivals = [0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
    batches = _batches(arrivals, BatcherConfig(max_batch=3, max_wait_ms=100.0))
    assert [b for b, _ in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches[0][1] == pytest.approx(0.002)  # full when the third arrives
    assert batches[1][1] == pytest.approx(0.005)
    assert batches[2][1] == pytest.approx(0.006 + 0.1)  # the last one waits out max_wait


def test_batch_closes_after_max_wait_from_its_first_request() -> None:
    arrivals = [0.0, 0.004, 0.012, 0.013, 0.030]
    batches = _batches(arrivals, BatcherConfig(max_batch=8, max_wait_ms=10.0))
    assert [b for b, _ in batches] == [[0, 1], [2, 3], [4]]
    assert [c for _, c in batches] == pytest.approx([0.010, 0.022, 0.040])


def test_batch_respects_token_budget() -> None:
    arrivals = [0.0, 0.001, 0.002, 0.003, 0.004]
    tokens = np.array([40, 50, 30, 100, 10])
    batches = _batches(arrivals, BatcherConfig(max_batch=8, max_wait_ms=50.0, max_tokens=100), tokens=tokens)
    assert [b for b, _ in batches] == [[0, 1], [2], [3], [4]]
    # [0, 1] is full when request 2 (which does not fit) arrives; [3] fills the budget exactly at once
    assert [c for _, c in batches][:3] == pytest.approx([0.002, 0.003, 0.003])
    # a single request over the budget still forms a batch of one
    assert [b for b, _ in _batches([0.0, 0.001], BatcherConfig(4, 5.0, max_tokens=10), tokens=np.array([30, 5]))] \
        == [[0], [1]]


def test_busy_server_takes_what_is_queued_when_free() -> None:
    arrivals = [0.0, 0.001, 0.002, 0.003]
    batcher = DynamicBatcher(np.array(arrivals), None, BatcherConfig(max_batch=8, max_wait_ms=1.0))
    end, close = batcher.close(0, free_at=0.0025)  # first request waited past max_wait: close at once
    assert (end, close) == (3, 0.0025)
    end, close = batcher.close(0, free_at=0.0)
    assert (end, close) == (2, 0.001)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batcher_invariants_on_random_arrivals(seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(0.002, 500))
    tokens = rng.integers(1, 300, 500)
    config = BatcherConfig(max_batch=int(rng.integers(1, 12)), max_wait_ms=float(rng.uniform(0, 8)), max_tokens=600)
    service = float(rng.uniform(0.001, 0.01))
    seen, free = [], -np.inf
    for members, close in _batches(arrivals, config, tokens=tokens, service_s=service):
        assert 1 <= len(members) <= config.max_batch
        assert len(members) == 1 or tokens[members].sum() <= config.max_tokens
        assert arrivals[members[-1]] <= close + 1e-12
        assert close >= free and close <= max(free, arrivals[members[0]]) + config.max_wait_ms / 1e3 + 1e-12
        seen += members
        free = close + service
    assert seen == list(range(500))


# ----------------------------------------------------------------------------------- latency accounting
@pytest.mark.parametrize("seed", [0, 1])
def test_latency_is_never_negative_and_covers_service(seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(0.003, 2000))
    per_request = rng.uniform(0.2, 2.0, 2000)
    cumulative = np.concatenate([[0.0], np.cumsum(per_request)])
    timeline = serve_queue(arrivals, lambda s, e, early: 0.5 + cumulative[e] - cumulative[s],
                           BatcherConfig(max_batch=8, max_wait_ms=2.0))
    assert np.all(timeline.start >= timeline.arrival)
    assert np.all(timeline.finish > timeline.arrival)
    assert np.all(timeline.queueing_ms >= -1e-9) and np.all(timeline.formation_ms >= -1e-9)
    assert np.all(np.diff(timeline.start) >= 0)  # FIFO
    np.testing.assert_allclose(timeline.latency_ms,
                               timeline.queueing_ms + timeline.formation_ms + timeline.service_ms, atol=1e-9)
    # a batch's service is its overhead + its requests' costs
    first = np.flatnonzero(np.concatenate([[True], np.diff(timeline.start) > 0]))
    ends = np.concatenate([first[1:], [2000]])
    for s, e in zip(first[:50], ends[:50]):
        assert timeline.service_ms[s] == pytest.approx(0.5 + per_request[s:e].sum())


def test_queueing_is_zero_when_the_server_is_idle() -> None:
    arrivals = np.arange(100) * 0.010  # one request every 10 ms, service 1 ms, no waiting for batches
    timeline = serve_queue(arrivals, lambda s, e, early: 1.0, BatcherConfig(max_batch=4, max_wait_ms=0.0))
    np.testing.assert_allclose(timeline.queueing_ms, 0.0, atol=1e-9)
    np.testing.assert_allclose(timeline.formation_ms, 0.0, atol=1e-9)
    np.testing.assert_allclose(timeline.latency_ms, 1.0)


def test_transfers_hide_under_compute_as_the_cost_model_says() -> None:
    cost = CostModel(static_token_ms=0.0, new_token_ms=0.0, transfer_overlap=1.0)
    assert batch_price_ms(cost, 4.0, 3.0) == pytest.approx(4.0)  # 3 ms of copies under 4 ms of compute
    assert batch_price_ms(cost, 2.0, 3.0) == pytest.approx(3.0)  # 2 ms compute + 1 ms exposed copy
    assert batch_price_ms(CostModel(0.0, 0.0, transfer_overlap=0.0), 2.0, 3.0) == 5.0


def test_a_batch_held_up_by_its_copies_ends_the_copy_tail_after_them() -> None:
    cost = CostModel(static_token_ms=0.0, new_token_ms=0.0, transfer_overlap=1.0)
    assert batch_price_ms(cost, 2.0, 3.0, 0.5, copy_tail_ms=1.5) == pytest.approx(4.5)  # copies + tail
    assert batch_price_ms(cost, 6.0, 3.0, 0.5, copy_tail_ms=1.5) == pytest.approx(6.5)  # compute-bound
    assert batch_price_ms(cost, 2.0, 0.0, 0.5, copy_tail_ms=1.5) == pytest.approx(2.5)  # nothing loaded
    assert batch_price_ms(cost, 2.0, 0.0, -3.0) == 0.0  # a fitted correction below the model's compute


def test_batch_overhead_charges_the_copy_tail_to_serial_batches_and_round_trips() -> None:
    overhead = BatchOverhead(3.0, pipelined=1.5, per_recompute=0.25, per_reuse=0.01, copy_tail=2.25)
    assert overhead.tail_ms(early=False) == 2.25 and overhead.tail_ms(early=True) == 0.0
    assert BatchOverhead.from_dict(overhead.to_dict()) == overhead
    with pytest.raises(MtbenchError, match="re-run"):  # a report that priced serial batches by their size
        BatchOverhead.from_dict({"serial": [[1, 3.0]], "pipelined": 1.0})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_batch_is_early_when_it_was_full_before_the_previous_one_started(seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(0.0005, 3000))
    config = BatcherConfig(max_batch=8, max_wait_ms=1.0)
    batcher = DynamicBatcher(arrivals, None, config)
    seen: list[tuple[int, int, bool]] = []
    timeline = serve_queue(arrivals, lambda s, e, early: seen.append((s, e, early)) or 0.2 + 0.6 * (e - s), config)
    for (s0, _, _), (s1, e1, early) in zip(seen, seen[1:]):
        full = e1 - s1 == config.max_batch and arrivals[e1 - 1] <= timeline.start[s0]
        assert early == full
        if early:
            assert timeline.start[s1] == timeline.finish[s0]  # served as soon as the server is free
    assert not seen[0][2] and any(early for *_, early in seen) and not all(early for *_, early in seen)
    assert [(s, e) for s, e, _ in seen] == [(s, batcher.close(s, timeline.server_free[s])[0]) for s, _, _ in seen]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warmup_is_served_before_the_clock_in_full_batches(seed: int) -> None:
    """Warm-up requests: all queued, full batches, none shared with a timed request, all finished by time 0;
    the timed requests then arrive from 0 as if the warm-up had never happened."""
    rng = np.random.default_rng(seed)
    n, warmup = 400, int(rng.integers(1, 120))
    arrivals = np.cumsum(rng.exponential(0.002, n))
    cost = rng.uniform(0.5, 3.0, n)
    config = BatcherConfig(max_batch=8, max_wait_ms=1.0)
    seen: list[tuple[int, int, bool]] = []

    def service(s: int, e: int, early: bool) -> float:
        seen.append((s, e, early))
        return float(cost[s:e].sum())

    timeline = serve_queue(arrivals, service, config, warmup=warmup)
    cold = [(s, e) for s, e, _ in seen if s < warmup]
    assert all(e <= warmup for _, e in cold) and cold[-1][1] == warmup
    assert all(e - s == config.max_batch for s, e in cold[:-1])
    full = [e - s == config.max_batch for s, e in cold]  # a last, partial warm-up batch is not known full
    assert [early for s, _, early in seen if s < warmup] == [False] + full[1:]
    assert np.all(timeline.finish[:warmup] <= 0) and timeline.finish[warmup - 1] == 0
    assert timeline.arrival[0] == timeline.start[0] < 0
    again: list[tuple[int, int, bool]] = []
    alone = serve_queue(arrivals[warmup:] - arrivals[warmup],
                        lambda s, e, early: again.append((s + warmup, e + warmup, early)) or float(cost[s + warmup:e + warmup].sum()),
                        config)
    assert again == seen[len(cold):]
    for name in ("arrival", "start", "finish", "server_free"):
        assert np.array_equal(getattr(timeline, name)[warmup:], getattr(alone, name))


def test_closed_loop_rate_leaves_out_the_warmup() -> None:
    cost = np.r_[np.full(16, 4.0), np.full(32, 1.0)]  # a slow cold start, then fast hits
    service = (lambda s, e, early: float(cost[s:e].sum()))
    assert closed_loop_rate(48, service, 8, warmup=16) == pytest.approx(32 / 0.032)
    assert closed_loop_rate(48, service, 8) == pytest.approx(48 / 0.096)


def test_eager_batches_take_the_eager_plane_by_the_graphs_rule_and_round_trip() -> None:
    limits = GraphLimits(max_requests=8, row_bucket=100, max_rows=400)
    overhead = BatchOverhead(3.0, pipelined=1.5, per_recompute=0.25, per_reuse=0.01, eager=(9.0, 0.5, 0.02),
                             graphs=limits)
    for requests, rows in [(4, 400), (8, 301), (1, 0)]:  # what the graphs take: the graphed plane
        assert limits.takes(requests, rows)
        assert overhead.ms(requests, 0, False, rows) == pytest.approx(3.0 + 0.25 * requests)
    for requests, rows in [(4, 401), (9, 10)]:  # too many padded rows, too many requests: eager
        assert not limits.takes(requests, rows)
        assert overhead.ms(requests - 1, 1, False, rows) == pytest.approx(9.0 + 0.5 * (requests - 1) + 0.02)
        assert overhead.ms(requests - 1, 1, True, rows) == pytest.approx(1.5 + 0.5 * (requests - 1) + 0.02)
    assert BatchOverhead.from_dict(overhead.to_dict()) == overhead
    assert BatchOverhead.from_dict(BatchOverhead(3.0).to_dict()).eager is None
    older = {k: v for k, v in overhead.to_dict().items() if k not in ("eager", "graphs")}  # reports before the split
    assert BatchOverhead.from_dict(older) == BatchOverhead(3.0, 1.5, 0.25, 0.01)
    assert BatchOverhead(3.0, eager=(9.0, 0.0, 0.0)).ms(1, 0, False, 10**9) == 3.0  # no limits: one plane


def test_batch_overhead_is_a_plane_in_the_batch_composition() -> None:
    overhead = BatchOverhead(3.0, pipelined=1.5, per_recompute=0.25, per_reuse=0.01)
    assert overhead.ms(0, 0, False) == 3.0 and overhead.ms(0, 0, True) == 1.5
    assert overhead.ms(4, 10, False) == pytest.approx(3.0 + 1.0 + 0.1)
    assert overhead.ms(4, 10, True) == pytest.approx(1.5 + 1.0 + 0.1)
    assert BatchOverhead.constant(0.7).ms(3, 2, False) == BatchOverhead.constant(0.7).ms(3, 2, True) == 0.7


def test_a_spread_is_its_residuals_quantiles_at_mean_zero_drawn_by_path() -> None:
    rng = np.random.default_rng(5)
    residuals = rng.gamma(2.0, 0.5, 5000)  # skewed, as a host's hiccups are
    spread = BatchOverhead.spread_of(residuals)
    assert len(spread) == SPREAD_QUANTILES and np.all(np.diff(spread) >= 0)
    overhead = BatchOverhead(3.0, spread=spread)
    draws = np.array([overhead.deviation(u, 4, 0) for u in rng.random(100_000)])
    assert abs(draws.mean()) < 0.01 and draws.std() == pytest.approx(residuals.std(), rel=0.03)
    assert np.percentile(draws, 99) == pytest.approx(np.percentile(residuals - residuals.mean(), 99), rel=0.05)
    assert BatchOverhead.spread_of(np.array([1.0])) is None and BatchOverhead(3.0).deviation(0.99, 4, 0) == 0.0
    limits = GraphLimits(max_requests=8)  # a batch of 16 is eager: it draws from the eager path's spread
    both = BatchOverhead(3.0, eager=(9.0, 0.0, 0.0), graphs=limits, spread=spread, eager_spread=tuple(4 * np.array(spread)))
    assert both.deviation(0.99, 16, 0) == pytest.approx(4 * both.deviation(0.99, 4, 0))
    assert BatchOverhead.from_dict(both.to_dict()) == both
    older = {k: v for k, v in both.to_dict().items() if k not in ("spread", "eager_spread")}  # reports made before the spread
    assert BatchOverhead.from_dict(older).spread is None and BatchOverhead.from_dict(older).eager_spread is None


# -------------------------------------------------------------------------------------- queueing theory
@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_des_matches_md1_waiting_time(rho: float) -> None:
    """Pollaczek-Khinchine for deterministic service D, batch size 1: Wq = rho D / (2 (1 - rho))."""
    service_ms = 2.0
    rate = rho / (service_ms / 1e3)
    arrivals = arrival_times(np.zeros(300_000), ArrivalSpec("poisson", rate=rate, seed=11))
    timeline = serve_queue(arrivals, lambda s, e, early: service_ms, BatcherConfig(max_batch=1, max_wait_ms=0.0))
    expected = rho * service_ms / (2 * (1 - rho))
    measured = float(timeline.queueing_ms[1000:].mean())
    assert measured == pytest.approx(expected, rel=0.05)
    assert not is_overloaded(timeline, 1)[0]


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_des_with_a_spread_matches_mg1_waiting_time(rho: float) -> None:
    """Pollaczek-Khinchine, batch size 1: Wq = lambda E[S^2] / (2 (1 - rho)); a spread of variance 0.75
    around a 2 ms service lengthens the queue by (4 + 0.75) / 4 over M/D/1, as it should."""
    spread = BatchOverhead.spread_of(np.random.default_rng(7).uniform(-1.5, 1.5, 20_000))
    overhead, draws, service_ms = BatchOverhead(0.0, spread=spread), np.random.default_rng(3), 2.0
    rate = rho / (service_ms / 1e3)
    arrivals = arrival_times(np.zeros(200_000), ArrivalSpec("poisson", rate=rate, seed=11))
    timeline = serve_queue(arrivals, lambda s, e, early: service_ms + overhead.deviation(draws.random(), e - s, 0),
                           BatcherConfig(max_batch=1, max_wait_ms=0.0))
    expected = rate / 1e3 * (service_ms ** 2 + 0.75) / (2 * (1 - rho))
    assert float(timeline.queueing_ms[1000:].mean()) == pytest.approx(expected, rel=0.05)


def test_overload_is_detected_and_percentiles_withheld() -> None:
    arrivals = arrival_times(np.zeros(20_000), ArrivalSpec("poisson", rate=1100.0, seed=3))
    timeline = serve_queue(arrivals, lambda s, e, early: 1.0, BatcherConfig(max_batch=1, max_wait_ms=0.0))  # rho 1.1
    row = serving_stats(timeline, np.full(20_000, "miss"), slo_ms=10.0, max_batch=1)
    assert row["overloaded"] and row["p99_ms"] is None and row["queue_growth"] > 200
    stable = serve_queue(arrival_times(np.zeros(20_000), ArrivalSpec("poisson", rate=900.0, seed=3)),
                         lambda s, e, early: 1.0, BatcherConfig(max_batch=1, max_wait_ms=0.0))
    row = serving_stats(stable, np.full(20_000, "miss"), slo_ms=10.0, max_batch=1)
    assert not row["overloaded"] and row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["p999_ms"]
    assert row["utilization"] == pytest.approx(0.9, abs=0.02)  # rho = 900/s x 1 ms
    assert 0 < row["slo_attainment"] <= 1 and row["goodput"] == pytest.approx(
        row["slo_attainment"] * 20_000 / (stable.finish.max() - stable.arrival.min()))


def test_closed_loop_rate_is_batches_back_to_back() -> None:
    assert closed_loop_rate(100, lambda s, e, early: 1.0 + (e - s) * 0.5, max_batch=10) == pytest.approx(100 / (10 * 6.0e-3))


def test_queue_length_counts_waiting_requests() -> None:
    arrivals = np.array([0.0, 0.0, 0.0, 0.0])
    timeline = serve_queue(arrivals, lambda s, e, early: 10.0, BatcherConfig(max_batch=2, max_wait_ms=0.0))
    assert queue_length(timeline, np.array([0.0, 0.005, 0.0101])).tolist() == [2, 2, 0]


# ---------------------------------------------------------------------------------------------- arrivals
def test_trace_arrivals_scale_by_speed_or_rate_and_stay_bursty() -> None:
    rng = np.random.default_rng(0)
    ts = 100 + np.sort(np.concatenate([rng.uniform(0, 10, 500), rng.uniform(4, 4.1, 500)]))
    at = arrival_times(ts, ArrivalSpec("trace", speed=2.0))
    np.testing.assert_allclose(at, (ts - ts[0]) / 2)
    at = arrival_times(ts, ArrivalSpec("trace", rate=50.0))
    assert (len(ts) - 1) / at[-1] == pytest.approx(50.0)
    gaps, original = np.diff(at), np.diff(ts)
    np.testing.assert_allclose(gaps / gaps.sum(), original / original.sum())  # same shape: bursts kept


def test_poisson_arrivals_are_seeded_with_the_requested_rate() -> None:
    spec = ArrivalSpec("poisson", rate=200.0, seed=5)
    at = arrival_times(np.zeros(50_000), spec)
    assert at[0] == 0 and np.all(np.diff(at) >= 0)
    assert len(at) / at[-1] == pytest.approx(200.0, rel=0.02)
    np.testing.assert_array_equal(at, arrival_times(np.zeros(50_000), spec))
    assert arrival_times(np.zeros(5), ArrivalSpec("closed")) is None


@pytest.mark.parametrize("spec, message", [
    (ArrivalSpec("poisson", rate=0.0), "--rate"),
    (ArrivalSpec("trace", speed=-1.0), "--speed"),
    (ArrivalSpec("poisson"), "needs --rate"),
    (ArrivalSpec("trace", speed=2.0, rate=3.0), "not both"),
    (ArrivalSpec("burst"), "--arrivals"),
    (ArrivalSpec("closed", rate=5.0), "open-loop"),
])
def test_bad_arrival_settings_are_refused(spec: ArrivalSpec, message: str) -> None:
    with pytest.raises(MtbenchError, match=message):
        arrival_times(np.arange(10.0), spec)


def test_trace_arrivals_need_distinct_times_and_slo_must_be_positive() -> None:
    with pytest.raises(MtbenchError, match="same ts"):
        arrival_times(np.full(10, 3.0), ArrivalSpec("trace", speed=1.0))
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(MtbenchError, match="--slo-ms"):
            check_slo(bad)
    with pytest.raises(MtbenchError, match="--max-wait-ms"):
        BatcherConfig(max_wait_ms=-1.0).check()
