"""One vocabulary for every command: shared options, old option names, and examples in the help.

Shared options (`ModelOpt`, `DeviceOpt`, ...): one name, one help text and one list of accepted
values (read from the registries in code) per concept. A command uses them as
`model: ModelOpt = "large"`, so only its default is its own.

Old names (`OPTION_ALIASES`): `--preset` still works where a command has `--model`, and so on. The
root group (`AliasGroup`) renames them before the command parses its arguments, so they are accepted
everywhere and never shown in `--help`.

Examples: every command's docstring ends with an `Examples:` paragraph of `mtbench ...` lines (a
trailing backslash continues a line) that run as written from the repository root on the shipped
samples (traces/*), CPU-sized. tests/test_cli_help.py
reads them with `command_examples` and runs each one (in a scratch directory, commands in
`EXAMPLE_ORDER` first, so an example may read what an earlier command's example wrote). A line ending in
`# needs a CUDA GPU` runs only where CUDA is present, and one ending in `# takes minutes` is not run
there. A new command only needs such a docstring to be covered.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from mtbench.model import PRESET_NAMES
from mtbench.model.config import DTYPES

OPTION_ALIASES = {"--preset": "--model", "--presets": "--model", "--batch": "--batch-size", "--limit": "--max-requests",
                  "--capacity": "--gpu-cache", "--layouts": "--layout"}

GPU_ONLY, SLOW = "# needs a CUDA GPU", "# takes minutes"
HELP_MARKUP = "rich"  # every Typer app of the CLI: keeps the help's line breaks (examples), on any typer >= 0.12
HELP_WIDTH = 76  # longest help line after the first paragraph: readable at 80 columns
EXAMPLE_ORDER = ("trace import", "trace fit", "trace synth", "trace stats", "trace validate", "compare-policies",
                 "replay", "calibrate", "plot", "report")

ModelOpt = Annotated[str, typer.Option("--model", help=f"Model preset: {', '.join(PRESET_NAMES)}.")]
ModelListOpt = Annotated[str, typer.Option("--model", help=f"Model presets, comma-separated, from: {', '.join(PRESET_NAMES)}.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when a GPU is present).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help=f"Compute and KV dtype: {', '.join(DTYPES)}, or auto (bf16 on cuda, fp32 on cpu).")]
KvDtypeOpt = Annotated[str, typer.Option("--dtype", help=f"KV element type (sets bytes per token): {', '.join(DTYPES)}.")]
HostKvOpt = Annotated[str, typer.Option(
    "--kv-dtype", help="Host tier's KV: auto (= --dtype, exact) or fp8 (e4m3, a scale per token and head: half the "
                       "host bytes and PCIe traffic; LOSSY). fp8 serves --layout hybrid (copy engine, then one fused "
                       "dequantise/quantise kernel per layer) and zerocopy (the fp8 zero-copy kernel); paged and "
                       "user are refused.")]
SortOpt = Annotated[bool, typer.Option("--sort", help="Sort an unsorted trace by ts (in memory) instead of refusing it.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing report directory at --out.")]
MaxRequestsOpt = Annotated[Optional[int], typer.Option("--max-requests", help="Use only the first N requests of the trace.")]


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    """Device and dtype names with "auto" resolved: the device by `mtbench.device.resolve_device`, the
    dtype to bf16 on CUDA and fp32 on the CPU."""
    from mtbench.device import resolve_device
    from mtbench.model.config import parse_dtype

    torch_device = resolve_device(device)
    if dtype == "auto":
        dtype = "bf16" if torch_device.type == "cuda" else "fp32"
    parse_dtype(dtype)
    return str(torch_device), dtype


def is_group(command: Any) -> bool:
    """A group of commands (click's, or the one Typer vendors since 0.29, which is no click.Group)."""
    return hasattr(command, "list_commands")


def command_examples(command: Any) -> list[str]:
    """The `mtbench ...` lines of the command's `Examples:` paragraph (see the module docstring); a line
    ending in a backslash continues on the next one, as in a shell."""
    text = (command.help or "").partition("\f")[0]
    _, found, paragraph = text.partition("Examples:")
    examples, pending = [], ""
    for raw in paragraph.splitlines() if found else []:
        line = f"{pending} {raw.strip()}".strip()
        pending = line[:-1].rstrip() if line.endswith("\\") else ""
        if not pending and line.startswith("mtbench "):
            examples.append(line)
    return examples


def _rename_aliases(command: Any, args: list[str]) -> list[str]:
    """`args` with each old option name replaced by the current one the command has."""
    names = {name for param in command.params for name in getattr(param, "opts", [])}
    renamed = []
    for index, arg in enumerate(args):
        if arg == "--":
            return renamed + args[index:]
        head, equals, value = arg.partition("=")
        new = OPTION_ALIASES.get(head)
        renamed.append(new + equals + value if new in names and head not in names else arg)
    return renamed


class AliasGroup(TyperGroup):
    """The root group: finds the command an invocation names (through sub-groups) and renames old
    option names in its arguments (`OPTION_ALIASES`) before click parses them."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[Any, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        leaf, remaining = command, list(rest)
        while is_group(leaf) and remaining and not remaining[0].startswith("-"):
            leaf, remaining = leaf.get_command(ctx, remaining[0]), remaining[1:]
        if leaf is not None and not is_group(leaf):
            rest = rest[: len(rest) - len(remaining)] + _rename_aliases(leaf, remaining)
        return name, command, rest
