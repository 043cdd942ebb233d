"""CLI commands of this area (filled by the area's issue)."""

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to the main app (and benchmarks to `mtbench bench`)."""
