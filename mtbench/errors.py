"""The CLI's two ways to stop early: bad input (one line, exit code 2) and Ctrl-C (one line, exit code 130)."""

from __future__ import annotations

from pathlib import Path


class MtbenchError(Exception):
    """Bad input or configuration: the message names what is wrong (file, column, row, value)."""

    exit_code = 2


class Interrupted(BaseException):
    """Ctrl-C, raised by the CLI's SIGINT handler (`mtbench.cli.main`).

    Not a KeyboardInterrupt, so neither Typer nor click swallow it on its way to `main`, which prints
    one line and exits 130. Whatever was being written when it arrived may set `partial` to the
    unfinished output it kept (a report's DIR.partial); everything else cleans up after itself.
    """

    exit_code = 130
    partial: Path | None = None
