"""The `mtbench` command line: one Typer app; each area registers its commands from its own module."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from mtbench.errors import MtbenchError

app = typer.Typer(
    name="mtbench",
    help="Serve generative recommenders (MTGR) with a hierarchical GPU/host KV cache: "
    "traces, policy simulation, real-cache replay, kernels, reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that print a table (run on the GPU for GPU claims).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _register_all() -> None:
    from mtbench.cli import (
        demo, fleet_cmd, kernels_cmd, model_cmd, policies_cmd, replay_cmd, report_cmd, trace_cmd,
    )

    for module in (model_cmd, trace_cmd, policies_cmd, fleet_cmd, replay_cmd, report_cmd, kernels_cmd, demo):
        module.register(app, bench_app)


_register_all()


def main() -> None:
    """Console entry point: bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except MtbenchError as err:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(err.exit_code)
