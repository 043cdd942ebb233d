"""`mtbench trace ...`: import real logs, synthesise, fit, describe and validate request traces."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from mtbench.cli.options import HELP_MARKUP, KvDtypeOpt, ModelOpt, SortOpt
from mtbench.model import PRESET_NAMES
from mtbench.errors import MtbenchError
from mtbench.paths import check_output_file
from mtbench.trace.candidates import CandidateDist
from mtbench.trace.events import EventRules
from mtbench.trace.importers import BEHAVIOUR_KINDS, KINDS, CacheRules, CsvColumns, cache_to_requests, import_accesses, import_events
from mtbench.trace.loader import TraceLimits, open_trace
from mtbench.trace.profile import QUANTILE_LEVELS, TraceProfile
from mtbench.trace.writer import write_trace

trace_app = typer.Typer(help="Request traces: import, synth, fit, stats, validate.", no_args_is_help=True,
                        rich_markup_mode=HELP_MARKUP)
console = Console(emoji=False)  # "uniform:100:900" is a distribution, not the :100: emoji

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output parquet trace (written atomically).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random draw (same seed, same file).")]
CandOpt = Annotated[Optional[int], typer.Option("--cand", help="Candidates per request (fixed count).")]
CandDistOpt = Annotated[Optional[str], typer.Option("--cand-dist", help="Candidate distribution: N, lognormal:MEDIAN:SIGMA or uniform:LO:HI.")]
HistoryDistOpt = Annotated[Optional[str], typer.Option(
    "--history-dist", help="S tokens of each user's first version (U excluded): N, lognormal:MEDIAN:SIGMA or uniform:LO:HI; "
                           "clipped to max_seq (default: lognormal:200:1.0; with --like: the profile's).")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, what: str = "--duration") -> float:
    """'3600', '90m', '36h', '14d', '2w' -> seconds (> 0)."""
    match = _DURATION.match(str(text))
    if match is None or float(match.group(1)) <= 0:
        raise MtbenchError(f"{what}: cannot read {text!r} as a positive duration (examples: 3600, 36h, 14d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_period(text: str, what: str = "--period") -> float | None:
    """A feature-rebuild period: a duration ('1h', '1d', '7d', '3600') in seconds, or None for 'never'."""
    return None if str(text).strip().lower() == "never" else parse_duration(text, what)


def _model(preset: str):
    from mtbench.model import get_config

    return get_config(preset)


def _bytes_per_token(preset: str, dtype: str) -> int:
    from mtbench.model import parse_dtype

    return _model(preset).kv_bytes_per_token(parse_dtype(dtype))


def _candidates(cand: int | None, cand_dist: str | None, max_cand: int) -> CandidateDist:
    if cand is not None and cand_dist is not None:
        raise MtbenchError("give either --cand or --cand-dist, not both")
    dist = CandidateDist.parse(cand_dist) if cand_dist is not None else CandidateDist.parse(str(cand if cand is not None else 128))
    if dist.kind == "fixed" and dist.params[0] > max_cand or dist.kind == "uniform" and dist.params[1] > max_cand:
        raise MtbenchError(f"candidates {dist} exceed the model's max_cand {max_cand}")
    return dist


def _history(history_dist: str, max_seq: int) -> CandidateDist:
    """Parse --history-dist; reject a distribution whose every draw would exceed max_seq (S tokens)."""
    dist = CandidateDist.parse(history_dist, what="--history-dist", minimum=0)
    lowest = dist.params[0] if dist.kind in ("fixed", "uniform") else 0.0
    if lowest > max_seq:
        raise MtbenchError(f"--history-dist: {history_dist!r}: {lowest:g} S tokens exceed max_seq {max_seq}")
    return dist


def _history_quantiles(dist: CandidateDist, max_seq: int) -> tuple[list[float], float]:
    """The QUANTILE_LEVELS quantiles of 20,001 draws clipped to [0, max_seq], and the fraction clipped."""
    draws = dist.sample(20_001, np.random.default_rng(0))
    quantiles = np.quantile(np.minimum(draws, max_seq), QUANTILE_LEVELS)
    return [float(v) for v in quantiles], float(np.mean(draws > max_seq))


def _check_limits(columns: dict[str, np.ndarray], limits: TraceLimits, source: str) -> None:
    """Fail before writing when generated lengths break the model's limits."""
    for column, maximum in limits.by_column().items():
        over = np.flatnonzero(columns[column] > maximum)
        if over.size:
            raise MtbenchError(f"{source}: column '{column}', row {over[0]}: value {columns[column][over[0]]} "
                               f"exceeds the model limit {maximum}")


def _summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _describe(columns: dict[str, np.ndarray], out: Path, seconds: float) -> list[tuple[str, str]]:
    rows = columns["ts"].shape[0]
    return [
        ("output", str(out)),
        ("requests", f"{rows:,}"),
        ("users", f"{np.unique(columns['user_id']).shape[0]:,}"),
        ("time span", f"{columns['ts'][-1] - columns['ts'][0]:,.0f} s"),
        ("seconds", f"{seconds:.2f}"),
        ("rows/s", f"{rows / max(seconds, 1e-9):,.0f}"),
    ]


def import_cmd(
    kind: Annotated[str, typer.Argument(help=f"Input kind: {', '.join(KINDS)}.")],
    paths: Annotated[list[Path], typer.Argument(help="Input file(s); behaviour logs may be several files of one log.")],
    out: OutOpt,
    model: ModelOpt = "large",
    dtype: KvDtypeOpt = "bf16",
    user_tokens: Annotated[int, typer.Option(help="U: profile tokens per request (behaviour logs).")] = 32,
    max_seq: Annotated[Optional[int], typer.Option(help="Cap on S tokens (default: the model's max_seq).")] = None,
    session_gap: Annotated[Optional[float], typer.Option(help="One request per visit: events at most this many seconds apart form a visit.")] = None,
    clicks_only: Annotated[bool, typer.Option(help="kuairand: keep only rows with is_click == 1.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="libcachesim: csv, txt, oracleGeneral or auto (by file name).")] = "auto",
    key_col: Annotated[str, typer.Option(help="libcachesim csv: key column (name, or 1-based number with --no-header).")] = "auto",
    time_col: Annotated[str, typer.Option(help="libcachesim csv: time column, or 'none'.")] = "auto",
    size_col: Annotated[str, typer.Option(help="libcachesim csv: object size column (bytes), or 'none'.")] = "auto",
    header: Annotated[bool, typer.Option(help="libcachesim csv: the first line names the columns.")] = True,
    delimiter: Annotated[str, typer.Option(help="libcachesim csv: field separator.")] = ",",
    time_unit: Annotated[float, typer.Option(help="Cache traces: seconds per unit of the time column.")] = 1.0,
    n_static: Annotated[Optional[int], typer.Option(help="Cache traces: fixed n_static instead of size / bytes per token.")] = None,
    n_rt: Annotated[int, typer.Option(help="Cache traces: R tokens per request.")] = 0,
    cand: CandOpt = None,
    cand_dist: CandDistOpt = None,
    seed: SeedOpt = 0,
    drop_invalid: Annotated[bool, typer.Option("--drop-invalid", help="Skip rows with a bad value (not a number, "
                                               "negative, a date before 1970) and report how many, instead of stopping.")] = False,
    version_period: Annotated[Optional[str], typer.Option(
        help="Rebuild static features every PERIOD: 1h, 1d, 7d, never (default: 1d for behaviour logs, never for cache traces).")] = None,
) -> None:
    """Import a behaviour log or cache trace as a request trace (see traces/README.md for the rules).

    Examples:

      mtbench trace import movielens traces/movielens-ratings-sample.csv \\
        -o ml.parquet

      mtbench trace import movielens traces/movielens-ratings-sample.csv \\
        --session-gap 1800 --drop-invalid -o ml-visits.parquet
    """
    if kind not in KINDS:
        raise MtbenchError(f"unknown import kind {kind!r} (choose from {', '.join(KINDS)})")
    check_output_file(out, "--out")
    cfg = _model(model)
    limits = cfg.limits()
    cands = _candidates(cand, cand_dist, cfg.max_cand)
    started = time.perf_counter()
    metadata = {"mtbench.source_kind": kind, "mtbench.source": ",".join(str(p) for p in paths)}
    period = {} if version_period is None else {"version_period": parse_period(version_period, "--version-period")}
    if kind in BEHAVIOUR_KINDS:
        if not 1 <= user_tokens < cfg.max_static:
            raise MtbenchError(f"--user-tokens {user_tokens} must be in [1, {cfg.max_static - 1}] for model {model}")
        seq_cap = min(max_seq if max_seq is not None else cfg.max_seq, cfg.max_static - user_tokens)
        rules = EventRules(user_tokens=user_tokens, max_seq=seq_cap, max_rt=cfg.max_rt, session_gap=session_gap,
                           cand=cands, max_cand=cfg.max_cand, seed=seed, **period)
        columns, epoch, dropped = import_events(kind, paths, rules, clicks_only, drop_invalid)
        metadata["mtbench.epoch_unix"] = f"{epoch:.0f}"
        notes: list[tuple[str, str]] = [("invalid rows dropped", f"{dropped:,}")] if drop_invalid else []
    else:
        if len(paths) != 1:
            raise MtbenchError(f"{kind}: give exactly one input file, got {len(paths)}")
        if n_static is not None and not 1 <= n_static <= cfg.max_static:
            raise MtbenchError(f"--n-static {n_static} must be in [1, {cfg.max_static}] for model {model}")
        csv = CsvColumns(key=key_col, time=time_col, size=size_col, header=header, delimiter=delimiter, time_unit=time_unit)
        accesses = import_accesses(kind, paths[0], csv, fmt, drop_invalid)
        rules = CacheRules(max_static=cfg.max_static, bytes_per_token=_bytes_per_token(model, dtype), fixed_static=n_static,
                           n_rt=n_rt, cand=cands, max_cand=cfg.max_cand, seed=seed, **period)
        columns, counters = cache_to_requests(accesses, rules)
        notes = [("rows re-sorted by time", f"{counters['reordered_rows']:,}"),
                 ("rows with n_static clipped to [1, max_static]", f"{counters['clipped_rows']:,}")]
        if drop_invalid:
            notes.append(("invalid rows dropped", f"{accesses.dropped:,}"))
    _check_limits(columns, limits, str(paths[0]))
    write_trace(columns, out, metadata)
    open_trace(out, limits)
    console.print(_summary_table(f"trace import {kind}", _describe(columns, out, time.perf_counter() - started) + notes))


def _scaled_profile(like: Path | None, users: int | None, requests: int | None, duration: str | None,
                    cfg, user_tokens: int, cands: CandidateDist | None, history_dist: str | None,
                    ) -> tuple[TraceProfile, int, int, float, list[tuple[str, str]]]:
    """The profile to draw from (fitted or default, capped to the model), the scale to generate at and
    summary rows about --history-dist (empty without it)."""
    if like is not None:
        profile = TraceProfile.load(like)
        n_users = users if users is not None else profile.users
        n_requests = requests if requests is not None else max(1, round(profile.requests * n_users / profile.users))
        seconds = parse_duration(duration) if duration is not None else profile.duration
    else:
        if users is None or requests is None or duration is None:
            raise MtbenchError("trace synth needs --users, --requests and --duration (or --like PROFILE)")
        n_users, n_requests, seconds = users, requests, parse_duration(duration)
        if not 1 <= user_tokens < cfg.max_static:
            raise MtbenchError(f"--user-tokens {user_tokens} must be in [1, {cfg.max_static - 1}]")
        profile = TraceProfile.default(max(n_users, 1), max(n_requests, 1), seconds, user_tokens=user_tokens,
                                       max_seq=cfg.max_static - user_tokens, max_rt=cfg.max_rt)
    quantiles = dict(profile.quantiles)
    if cands is not None:
        quantiles["n_cand"] = [float(v) for v in np.quantile(cands.sample(20_001, np.random.default_rng(0), cfg.max_cand), QUANTILE_LEVELS)]
    quantiles["n_cand"] = [min(v, float(cfg.max_cand)) for v in quantiles["n_cand"]]
    max_static, u_tokens = min(profile.max_static, cfg.max_static), min(profile.user_tokens, cfg.max_static - 1)
    notes: list[tuple[str, str]] = []
    if history_dist is not None:
        max_seq = max_static - u_tokens  # the S room the model leaves next to this profile's U
        history = _history(history_dist, max_seq)
        quantiles["initial_history"], clipped = _history_quantiles(history, max_seq)
        notes.append(("initial history (S tokens)", str(history)))
        if clipped > 0:
            notes.append((f"history clipped to max_seq {max_seq}", f"{clipped:.1%} of users"))
    profile = replace(profile, quantiles=quantiles, max_static=max_static, user_tokens=u_tokens,
                      max_rt=min(profile.max_rt, cfg.max_rt))
    return profile, n_users, n_requests, seconds, notes


def synth_cmd(
    out: OutOpt,
    users: Annotated[Optional[int], typer.Option(help="Users in the population (default with --like: the profile's).")] = None,
    requests: Annotated[Optional[int], typer.Option(help="Requests to generate (default with --like: same requests per user as the profile).")] = None,
    duration: Annotated[Optional[str], typer.Option(help="Trace length: seconds or 36h, 14d, 2w (default with --like: the profile's).")] = None,
    like: Annotated[Optional[Path], typer.Option(help="Profile JSON from `mtbench trace fit`: draw from a real trace's distributions.")] = None,
    model: ModelOpt = "large",
    user_tokens: Annotated[int, typer.Option(help="U tokens (without --like).")] = 32,
    cand: CandOpt = None,
    cand_dist: CandDistOpt = None,
    history_dist: HistoryDistOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Generate a synthetic trace: heavy-tailed activity, bursty sessions, daily cycle and version bump.

    Memory stays bounded at any size: the trace is generated a slice of
    users at a time; it prints how many requests it will write first.

    Examples:

      mtbench trace synth --users 200 --requests 5000 --duration 7d \\
        --model mini -o synth.parquet

      mtbench trace synth --like profile.json --users 100 -o like.parquet
    """
    from mtbench.trace.synth import SynthRequest, write_synth

    check_output_file(out, "--out")
    cfg = _model(model)
    cands = None if cand is None and cand_dist is None else _candidates(cand, cand_dist, cfg.max_cand)
    profile, n_users, n_requests, seconds, history_notes = _scaled_profile(like, users, requests, duration, cfg,
                                                                           user_tokens, cands, history_dist)
    spec = SynthRequest(users=n_users, requests=n_requests, duration=seconds, seed=seed)
    console.print(f"trace synth: writing {n_requests:,} requests for {n_users:,} users to {out}")
    started = time.perf_counter()
    with console.status(f"generating {n_requests:,} requests for {n_users:,} users"):
        write_synth(profile, spec, out, {"mtbench.source_kind": "synth", "mtbench.seed": str(seed),
                                         "mtbench.profile": str(profile.source.get("path", "default"))})
    elapsed = time.perf_counter() - started
    rows = [("output", str(out)), ("requests", f"{n_requests:,}"), ("users", f"{n_users:,}"),
            ("duration", f"{seconds:,.0f} s"), ("seconds", f"{elapsed:.2f}"), ("rows/s", f"{n_requests / elapsed:,.0f}")]
    console.print(_summary_table("trace synth", rows + history_notes))


def fit_cmd(
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="Real trace (parquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Profile JSON to write.")],
    session_gap: Annotated[float, typer.Option(help="A gap longer than this (seconds) ends a session.")] = 1800.0,
    version_period: Annotated[float, typer.Option(help="Seconds between static version bumps in generated traces.")] = 86400.0,
    sort: SortOpt = False,
) -> None:
    """Estimate the generator's distributions from a real trace (for `trace synth --like`).

    Examples:

      mtbench trace fit traces/movielens-small.parquet -o profile.json
    """
    from mtbench.trace.fit import fit_profile

    check_output_file(out, "--out")
    profile = fit_profile(open_trace(trace_path, sort=sort), session_gap, version_period)
    profile.save(out)
    q = profile.quantiles
    rows = [("profile", str(out)), ("users / requests", f"{profile.users:,} / {profile.requests:,}"),
            ("duration", f"{profile.duration:,.0f} s"),
            ("requests per user p50 / p99", f"{q['requests_per_user'][100]:,.0f} / {q['requests_per_user'][198]:,.0f}"),
            ("session size p50 / p99", f"{q['session_size'][100]:,.0f} / {q['session_size'][198]:,.0f}"),
            ("gap in session p50 (s)", f"{q['intra_session_gap'][100]:,.0f}"),
            ("return gap p50 (s)", f"{q['return_gap'][100]:,.0f}"),
            ("initial history p50 (tokens)", f"{q['initial_history'][100]:,.0f}"),
            ("history growth (tokens/request)", f"{profile.history_growth:.3f}")]
    console.print(_summary_table("trace fit", rows))


def stats_cmd(
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="Trace (parquet).")],
    model: ModelOpt = "large",
    dtype: KvDtypeOpt = "bf16",
    sort: SortOpt = False,
) -> None:
    """Users, requests, time span, requests per user, reuse distances, working set, unique KV bytes.

    Examples:

      mtbench trace stats traces/movielens-small.parquet --model large

      mtbench trace stats traces/synth-small.parquet --model mini --dtype fp32
    """
    from mtbench.trace.stats import trace_stats

    bytes_per_token = _bytes_per_token(model, dtype)
    trace = open_trace(trace_path, _model(model).limits(), sort=sort)
    table = Table(title=f"trace stats: {trace_path} (model {model}, {dtype}, {bytes_per_token:,} B/token)", title_justify="left")
    for column, justify in (("section", "left"), ("statistic", "left"), ("value", "right")):
        table.add_column(column, justify=justify)
    previous = None
    for row in trace_stats(trace, bytes_per_token):
        table.add_row(row.section if row.section != previous else "", row.name, row.text)
        previous = row.section
    console.print(table)


def validate_cmd(
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="Trace (parquet).")],
    model: Annotated[Optional[str], typer.Option("--model", help=f"Also check this preset's length limits: {', '.join(PRESET_NAMES)}.")] = None,
    sort: Annotated[bool, typer.Option("--sort", help="Accept an unsorted trace, as commands run with --sort do.")] = False,
) -> None:
    """Check a trace (schema, dtypes, NaN, negatives, order, limits); exit 2 with the first problem.

    Examples:

      mtbench trace validate traces/synth-small.parquet --model mini
    """
    limits = _model(model).limits() if model is not None else TraceLimits()
    trace = open_trace(trace_path, limits, sort=sort)
    console.print(f"[green]ok[/] {trace_path}: {trace.num_rows:,} requests" + (f", within model {model}'s limits" if model else ""))


def reversion_cmd(
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="Trace (parquet) whose ts counts seconds from its epoch.")],
    period: Annotated[str, typer.Option("--period", help="Rebuild static features every PERIOD: 1h, 1d, 7d, a duration, or never.")],
    out: OutOpt,
    history: Annotated[str, typer.Option("--history", help="replace (bidirectional prefix, fixed per version) or causal (append: the prefix grows).")] = "replace",
    model: ModelOpt = "large",
) -> None:
    """Rewrite static_version (and the static / real-time split) as if features were rebuilt every period.

    Examples:

      mtbench trace reversion traces/movielens-small.parquet --period 7d \\
        -o ml-7d.parquet

      mtbench trace reversion ml.parquet --period never --history causal \\
        -o ml-never-causal.parquet
    """
    import pyarrow.parquet as pq

    from mtbench.trace.reversion import reversion

    seconds = parse_period(period)
    cfg = _model(model)
    limits = cfg.limits()
    started = time.perf_counter()
    trace = open_trace(trace_path, limits)
    columns = trace.arrays(list(pq.read_schema(trace_path).names))
    rewritten = reversion(columns, seconds, history, max_static=limits.max_static, max_rt=limits.max_rt)
    metadata = {k.decode(): v.decode() for k, v in (pq.read_schema(trace_path).metadata or {}).items()
                if not k.startswith(b"pandas") and not k.startswith(b"ARROW")}
    metadata.update({"mtbench.version_period": period, "mtbench.history": history})
    write_trace(rewritten, out, metadata)
    open_trace(out, limits)
    keys = np.unique(np.stack([rewritten["user_id"], rewritten["static_version"]], axis=1), axis=0).shape[0]
    rows = _describe(rewritten, out, time.perf_counter() - started) + [
        ("period", period), ("history", history), ("(user, version) keys", f"{keys:,}"),
        ("static tokens, mean", f"{rewritten['n_static'].mean():,.1f}"),
        ("real-time tokens, mean", f"{rewritten['n_rt'].mean():,.1f}")]
    console.print(_summary_table("trace reversion", rows))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `mtbench trace import|synth|fit|stats|validate|reversion`."""
    trace_app.command("import")(import_cmd)
    trace_app.command("synth")(synth_cmd)
    trace_app.command("fit")(fit_cmd)
    trace_app.command("stats")(stats_cmd)
    trace_app.command("validate")(validate_cmd)
    trace_app.command("reversion")(reversion_cmd)
    app.add_typer(trace_app, name="trace")
