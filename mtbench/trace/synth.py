"""Synthetic request traces drawn from a `TraceProfile` (built-in default or fitted to a real trace).

Generative model, all vectorised numpy with one seeded generator (same seed -> same rows -> same file):
1. Activity: each user draws a weight from `requests_per_user`; the `requests` are split among users
   multinomially in proportion (heavy-tailed; users may get none).
2. Sessions: a stream of `session_size` draws cuts every user's requests into sessions (a user's first
   request always opens one).
3. Time: inside a session requests are `intra_session_gap` apart; sessions are `return_gap` apart. A
   user starts at `user_start` x duration; a user whose span does not fit is moved earlier, then
   compressed to the duration. Session starts then pass through the daily-cycle warp: within each day
   the time of day is mapped through the inverse CDF of `hour_of_day` (monotone, so order is kept);
   a session that would run into the user's next one is compressed.
4. Keys and lengths: `static_version` = floor(ts / version_period); per user, n_static = U + min(initial
   history + history_growth x requests of earlier versions, max_seq), n_rt = earlier requests of the same
   version (capped), n_cand from `n_cand`. The rows are then sorted by ts and written in row groups.

Bounded memory at any size: users are generated a slice at a time (about SLICE_ROWS requests, some
250 bytes each at the peak); each slice is sorted by ts and, when there are several, spilled to a
temporary parquet file beside the output, and the slices are then merged in ts order (ties in slice
order, which is the order one stable sort of the whole trace gives) into row groups. Every random
stream is positioned where the whole-trace generation would read it (`_Streams`), and running sums
carry across slices, so the file does not depend on the slicing: the same seed gives the same bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtbench.errors import MtbenchError
from mtbench.trace.events import _group_starts
from mtbench.trace.profile import TraceProfile, sample_quantiles
from mtbench.trace.writer import ROW_GROUP_ROWS, TraceWriter

SECONDS_PER_DAY = 86_400.0
SLICE_ROWS = 1_000_000  # requests generated at once (some 250 bytes each at the peak)
MERGE_ROWS = 16_384  # rows per row group of a spilled slice, read one at a time while merging
DRAW_ROWS = 1_000_000  # session sizes drawn at once
COLUMNS = ("ts", "user_id", "static_version", "n_static", "n_rt", "n_cand")


@dataclass(frozen=True)
class SynthRequest:
    """What to generate: scale (users, requests, duration in seconds) and the seed."""

    users: int
    requests: int
    duration: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.users < 1 or self.requests < 1 or not self.duration > 0:
            raise MtbenchError(f"synth needs users >= 1, requests >= 1 and duration > 0 "
                               f"(got {self.users}, {self.requests}, {self.duration})")


def _stream(state: dict, skip: int) -> np.random.Generator:
    """A generator in `state` (a PCG64 state) advanced past `skip` 64-bit outputs."""
    bits = np.random.PCG64()
    bits.state = state
    bits.advance(skip)
    return np.random.Generator(bits)


class _SessionCuts:
    """The session-size stream as its running sums (the positions where a new session starts),
    handed out in increasing order, drawn DRAW_ROWS at a time.

    Invariant: `_pending` holds the sums drawn but not yet handed out, in order; `drawn` counts draws."""

    def __init__(self, table: list[float], state: dict) -> None:
        self.table = table
        self.rng = _stream(state, 0)
        self.drawn = 0
        self._last = 0
        self._pending = np.empty(0, dtype=np.int64)

    def below(self, end: int) -> np.ndarray:
        """Every cut position < end not handed out yet."""
        parts = []
        while not self._pending.size or self._pending[-1] < end:
            parts.append(self._pending)
            sizes = np.maximum(np.rint(sample_quantiles(self.table, DRAW_ROWS, self.rng)), 1).astype(np.int64)
            self._pending = self._last + np.cumsum(sizes)
            self._last = int(self._pending[-1])
            self.drawn += DRAW_ROWS
        split = int(np.searchsorted(self._pending, end))
        parts.append(self._pending[:split])
        self._pending = self._pending[split:]
        return np.concatenate(parts)

    def draws_to_reach(self) -> int:
        """1-based index of the draw whose running sum first reached the last `end` asked for."""
        return self.drawn - self._pending.size + 1


class _Streams:
    """The generator's random streams, each positioned where the whole-trace generation reads it.

    One PCG64 generator draws, in this order: the activity weights and their multinomial split, the
    user-id permutation, the session sizes (a first block of `first_block` draws, then blocks of
    `next_block` until their running sum covers every request), then one uniform per request
    (intra-session gaps), per session (return gaps), per active user (start), per active user (initial
    history) and per request (candidates). Each of these is a copy of the generator advanced past the
    draws before it (one 64-bit output per uniform), so a slice reads exactly its part of each stream.
    """

    def __init__(self, profile: TraceProfile, spec: SynthRequest, counts: np.ndarray, state: dict) -> None:
        total = spec.requests
        mean_size = max(float(np.mean(profile.quantiles["session_size"])), 1.0)
        first_block, next_block = int(total / mean_size * 1.2) + 16, int(total / mean_size) + 16
        cuts = _SessionCuts(profile.quantiles["session_size"], state)
        user_first = (np.cumsum(counts) - counts)[counts > 0]
        n_active = user_first.shape[0]
        total_cuts = at_user_first = 0
        for end in range(DRAW_ROWS, total + DRAW_ROWS, DRAW_ROWS):
            inside = cuts.below(min(end, total))
            where = np.minimum(np.searchsorted(user_first, inside), n_active - 1)
            total_cuts += inside.size
            at_user_first += int((user_first[where] == inside).sum())
        needed = cuts.draws_to_reach()
        session_draws = first_block if needed <= first_block else \
            first_block + -(-(needed - first_block) // next_block) * next_block
        self.n_sessions = n_active + total_cuts - at_user_first
        self.cuts = _SessionCuts(profile.quantiles["session_size"], state)
        skip = session_draws
        self.intra, skip = _stream(state, skip), skip + total
        self.returns, skip = _stream(state, skip), skip + self.n_sessions
        self.user_start, skip = _stream(state, skip), skip + n_active
        self.initial_history, skip = _stream(state, skip), skip + n_active
        self.n_cand = _stream(state, skip)


@dataclass
class _Carry:
    """Running sums that continue from one slice to the next (a cumulative sum over the whole trace
    rounds differently from one restarted per slice)."""

    in_session: float = 0.0
    in_user: float = 0.0


def _requests_per_user(profile: TraceProfile, spec: SynthRequest, rng: np.random.Generator) -> np.ndarray:
    weights = np.maximum(sample_quantiles(profile.quantiles["requests_per_user"], spec.users, rng), 1e-9)
    return rng.multinomial(spec.requests, weights / weights.sum()).astype(np.int64)


def _segment_offsets(values: np.ndarray, segment_first: np.ndarray, segment_of: np.ndarray, carry: float
                     ) -> tuple[np.ndarray, float]:
    """Cumulative sum of `values` restarting at every segment (segment_first: index of each segment's
    first element), continuing a running sum that stood at `carry`; and the new running sum."""
    running = np.cumsum(np.concatenate(([carry], values)))[1:]
    return running - running[segment_first][segment_of] + values[segment_first][segment_of], float(running[-1])


def _daily_warp(ts: np.ndarray, hour_weights: list[float]) -> np.ndarray:
    """Map each time of day u in [0, 1) through the inverse CDF of the hourly weights (monotone)."""
    weights = np.asarray(hour_weights, dtype=np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(weights / weights.sum())])
    day = np.floor(ts / SECONDS_PER_DAY)
    fraction = ts / SECONDS_PER_DAY - day
    return (day + np.interp(fraction, cdf, np.linspace(0.0, 1.0, 25))) * SECONDS_PER_DAY


def _timestamps(counts: np.ndarray, is_start: np.ndarray, profile: TraceProfile, spec: SynthRequest,
                streams: _Streams, carry: _Carry) -> np.ndarray:
    """Request times of one slice of users in user-major order, non-decreasing within each user, all in
    [0, duration)."""
    total = is_start.shape[0]
    session_first = np.flatnonzero(is_start)
    session_of = np.cumsum(is_start) - 1
    active = np.flatnonzero(counts > 0)
    user_first_request = (np.cumsum(counts) - counts)[active]
    user_of_session = np.searchsorted(user_first_request, session_first, side="right") - 1
    opens_user = np.zeros(session_first.shape[0], dtype=bool)
    opens_user[np.searchsorted(session_first, user_first_request)] = True

    intra = sample_quantiles(profile.quantiles["intra_session_gap"], total, streams.intra)
    intra[session_first] = 0.0
    offset_in_session, carry.in_session = _segment_offsets(intra, session_first, session_of, carry.in_session)
    duration_of_session = offset_in_session[np.append(session_first[1:], total) - 1]

    returns = sample_quantiles(profile.quantiles["return_gap"], session_first.shape[0], streams.returns)
    step = np.where(opens_user, 0.0, returns + np.roll(duration_of_session, 1))
    user_session_first = np.flatnonzero(opens_user)
    start_in_user, carry.in_user = _segment_offsets(step, user_session_first, user_of_session, carry.in_user)
    last_session = np.append(user_session_first[1:], session_first.shape[0]) - 1
    span = start_in_user[last_session] + duration_of_session[last_session]

    horizon = spec.duration * (1 - 1e-9)
    first = sample_quantiles(profile.quantiles["user_start"], active.shape[0], streams.user_start) * horizon
    scale = np.minimum(1.0, horizon / np.maximum(span, 1e-9))
    first = np.clip(np.minimum(first, horizon - span * scale), 0.0, None)
    session_start = _daily_warp(first[user_of_session] + start_in_user * scale[user_of_session], profile.hour_of_day)
    session_start = np.minimum(session_start, horizon)

    room = np.append(np.diff(session_start), np.inf)
    room[last_session] = np.inf
    squeeze = np.minimum(1.0, room / np.maximum(duration_of_session * scale[user_of_session], 1e-12))
    ts = session_start[session_of] + offset_in_session * (scale[user_of_session] * squeeze)[session_of]
    return np.minimum(ts, horizon)


def _lengths(user: np.ndarray, ts: np.ndarray, profile: TraceProfile, streams: _Streams) -> dict[str, np.ndarray]:
    """static_version, n_static, n_rt, n_cand for requests in user-major, time-ordered layout."""
    version = np.floor(ts / profile.version_period).astype(np.int64)
    same_user = np.zeros(user.shape[0], dtype=bool)
    same_user[1:] = user[1:] == user[:-1]
    same_version = same_user.copy()
    same_version[1:] &= version[1:] == version[:-1]
    before_user, before_version = _group_starts(same_user), _group_starts(same_version)
    max_seq = profile.max_static - profile.user_tokens
    users_first = np.flatnonzero(~same_user)
    initial = np.rint(sample_quantiles(profile.quantiles["initial_history"], users_first.shape[0],
                                       streams.initial_history)).astype(np.int64)
    history = initial[np.cumsum(~same_user) - 1] + np.floor(profile.history_growth * (before_version - before_user)).astype(np.int64)
    n_cand = np.maximum(np.rint(sample_quantiles(profile.quantiles["n_cand"], user.shape[0], streams.n_cand)), 1).astype(np.int64)
    return {
        "static_version": version,
        "n_static": profile.user_tokens + np.clip(history, 0, max_seq),
        "n_rt": np.minimum(np.arange(user.shape[0]) - before_version, profile.max_rt),
        "n_cand": n_cand,
    }


def _user_slices(counts: np.ndarray) -> list[tuple[int, int]]:
    """[first user, end user) of consecutive slices of about SLICE_ROWS requests each."""
    ends = np.searchsorted(np.cumsum(counts), np.arange(SLICE_ROWS, int(counts.sum()), SLICE_ROWS), side="left") + 1
    bounds = [0, *sorted(set(int(e) for e in ends if 0 < e < counts.shape[0])), counts.shape[0]]
    return list(zip(bounds[:-1], bounds[1:]))


def _sorted_slices(profile: TraceProfile, spec: SynthRequest) -> Iterator[dict[str, np.ndarray]]:
    """Each slice of users' requests, sorted by ts (stable), slices in user-major order."""
    rng = np.random.default_rng(spec.seed)
    counts = _requests_per_user(profile, spec, rng)
    user_order = rng.permutation(spec.users).astype(np.int64)  # ids carry no activity rank
    streams = _Streams(profile, spec, counts, rng.bit_generator.state)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    carry = _Carry()
    for first_user, end_user in _user_slices(counts):
        begin, end = int(offsets[first_user]), int(offsets[end_user])
        slice_counts = counts[first_user:end_user]
        is_start = np.zeros(end - begin, dtype=bool)
        is_start[streams.cuts.below(end) - begin] = True
        is_start[(np.cumsum(slice_counts) - slice_counts)[slice_counts > 0]] = True
        ts = _timestamps(slice_counts, is_start, profile, spec, streams, carry)
        user = np.repeat(user_order[first_user:end_user], slice_counts)
        lengths = _lengths(user, ts, profile, streams)
        by_time = np.argsort(ts, kind="stable")
        columns = {"ts": ts[by_time], "user_id": user[by_time]}
        columns.update({name: values[by_time] for name, values in lengths.items()})
        yield columns


def _spill(columns: dict[str, np.ndarray], path: Path) -> Iterator[dict[str, np.ndarray]]:
    """Write one sorted slice to `path`; return a reader of it, MERGE_ROWS rows at a time."""
    pq.write_table(pa.table(columns), path, compression="zstd", row_group_size=MERGE_ROWS)

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=MERGE_ROWS):
            yield {name: batch.column(name).to_numpy() for name in COLUMNS}
    return batches()


class _Part:
    """One sorted slice being merged: the rows read from it and not yet emitted (`rows`, None once
    it is used up) and whether its file has more (`done`)."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        self.batches = batches
        self.rows: dict[str, np.ndarray] | None = None
        self.done = False
        self.read_more()

    def read_more(self) -> None:
        batch = next(self.batches, None)
        if batch is None:
            self.done = True
        elif self.rows is None:
            self.rows = batch
        else:
            self.rows = {name: np.concatenate([self.rows[name], batch[name]]) for name in COLUMNS}

    def take_below(self, cutoff: float) -> dict[str, np.ndarray] | None:
        """Its rows with ts < cutoff (all of them for an infinite cutoff), removed from `rows`."""
        if self.rows is None:
            return None
        split = self.rows["ts"].shape[0] if cutoff == np.inf else int(np.searchsorted(self.rows["ts"], cutoff))
        taken = {name: values[:split] for name, values in self.rows.items()}
        self.rows = {name: values[split:] for name, values in self.rows.items()}
        if not self.rows["ts"].shape[0]:
            self.rows = None
            if not self.done:
                self.read_more()
        return taken if split else None


def _merge(parts: list[_Part]) -> Iterator[dict[str, np.ndarray]]:
    """The rows of sorted slices in (ts, slice, row) order, in chunks. A row is emitted once every
    slice that could still hold an earlier one has been read past it (ts < the smallest last-read ts
    of the slices with more to read); a run of equal times at that edge reads further first."""
    while any(part.rows is not None for part in parts):
        edges = [part.rows["ts"][-1] for part in parts if part.rows is not None and not part.done]
        cutoff = min(edges) if edges else np.inf
        pieces = [piece for part in parts if (piece := part.take_below(cutoff)) is not None]
        if not pieces:
            for part in parts:
                if part.rows is not None and not part.done and part.rows["ts"][-1] == cutoff:
                    part.read_more()
            continue
        chunk = {name: np.concatenate([piece[name] for piece in pieces]) for name in COLUMNS}
        order = np.argsort(chunk["ts"], kind="stable")
        yield {name: values[order] for name, values in chunk.items()}


def iter_synth(profile: TraceProfile, spec: SynthRequest, spill_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    """The trace in ts order, in chunks (canonical dtypes); with several slices, each is first spilled
    to a parquet file in `spill_dir`."""
    held: dict[str, np.ndarray] | None = None  # the first slice, spilled only once a second one comes
    readers = []
    for index, columns in enumerate(_sorted_slices(profile, spec)):
        if index == 0:
            held = columns
            continue
        if held is not None:
            readers.append(_spill(held, spill_dir / "0.parquet"))
            held = None
        readers.append(_spill(columns, spill_dir / f"{index}.parquet"))
    if held is not None:
        yield held
        return
    yield from _merge([_Part(reader) for reader in readers])


def synthesize(profile: TraceProfile, spec: SynthRequest) -> dict[str, np.ndarray]:
    """Generate the whole trace in memory: columns in canonical dtypes, sorted by ts (stable)."""
    with tempfile.TemporaryDirectory(prefix="mtbench-synth-") as spill:
        chunks = list(iter_synth(profile, spec, Path(spill)))
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in COLUMNS}


def write_synth(profile: TraceProfile, spec: SynthRequest, out: Path, metadata: dict[str, str] | None = None) -> int:
    """Generate and write atomically in row groups of ROW_GROUP_ROWS, with bounded memory (slices
    spilled to a hidden folder beside `out`, removed at the end); return the number of rows."""
    spill = Path(out).with_name(f".{Path(out).name}.{os.getpid()}.synth")
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    try:
        spill.mkdir(parents=True, exist_ok=True)
        with TraceWriter(out, metadata) as writer:
            for chunk in iter_synth(profile, spec, spill):
                pending.append(chunk)
                pending_rows += chunk["ts"].shape[0]
                if pending_rows >= ROW_GROUP_ROWS:
                    pending, pending_rows = _write_groups(writer, pending, final=False)
            _write_groups(writer, pending, final=True)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return spec.requests


def _write_groups(writer: TraceWriter, pending: list[dict[str, np.ndarray]], final: bool
                  ) -> tuple[list[dict[str, np.ndarray]], int]:
    """Write every whole row group of ROW_GROUP_ROWS in `pending` (and, when final, the rest); return
    the rows left."""
    rows = {name: np.concatenate([chunk[name] for chunk in pending]) for name in COLUMNS}
    total = rows["ts"].shape[0]
    whole = total if final else total - total % ROW_GROUP_ROWS
    for start in range(0, whole, ROW_GROUP_ROWS):
        writer.write({name: values[start:min(start + ROW_GROUP_ROWS, whole)] for name, values in rows.items()})
    rest = {name: values[whole:] for name, values in rows.items()}
    return [rest], total - whole
