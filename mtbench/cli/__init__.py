"""The `mtbench` command line: one Typer app; each area registers its commands from its own module."""

from __future__ import annotations

import os
import signal
import sys

import typer
from rich.console import Console
from rich.markup import escape

from mtbench.cli.options import HELP_MARKUP, AliasGroup
from mtbench.errors import Interrupted, MtbenchError

app = typer.Typer(
    name="mtbench",
    help="Serve generative recommenders (MTGR) with a hierarchical GPU/host KV cache: "
    "traces, policy simulation, real-cache replay, kernels, reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=AliasGroup,
    rich_markup_mode=HELP_MARKUP,
)
bench_app = typer.Typer(help="Benchmarks that print a table (run on the GPU for GPU claims).", no_args_is_help=True,
                        rich_markup_mode=HELP_MARKUP)
app.add_typer(bench_app, name="bench")


def _register_all() -> None:
    from mtbench.cli import (
        bench_policies_cmd, capacity_cmd, demo, fleet_cmd, kernels_cmd, model_cmd, policies_cmd, replay_cmd, report_cmd,
        trace_cmd,
    )

    for module in (model_cmd, trace_cmd, policies_cmd, bench_policies_cmd, fleet_cmd, replay_cmd, capacity_cmd,
                   report_cmd, kernels_cmd, demo):
        module.register(app, bench_app)


_register_all()


def _on_sigint(signum: int, frame: object) -> None:
    """First Ctrl-C: raise `Interrupted` where the main thread is (cleanup runs); a second one while
    that cleanup runs ends the process at once."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(Interrupted.exit_code))
    raise Interrupted


def main() -> None:
    """Console entry point: bad input becomes one line on stderr and exit code 2, Ctrl-C one line and
    exit code 130; never a traceback. Worker pools (`mtbench.sim.sweep`) ignore SIGINT and are
    terminated by the process that received it."""
    previous = signal.signal(signal.SIGINT, _on_sigint)
    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        app()
    except MtbenchError as err:
        stderr.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(err.exit_code)
    except (Interrupted, KeyboardInterrupt) as err:
        partial = getattr(err, "partial", None)
        stderr.print("interrupted; " + (f"partial output kept in {partial}" if partial else "nothing written"))
        sys.exit(Interrupted.exit_code)
    finally:
        signal.signal(signal.SIGINT, previous)
