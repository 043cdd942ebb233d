"""`mtbench bench kernels`: Triton kernels vs the padded PyTorch references on the GPU."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mtbench.cli.options import ModelListOpt
from mtbench.errors import MtbenchError
from mtbench.model import PRESET_NAMES
from mtbench.model.config import DTYPES
from mtbench.paths import check_output_file, write_text_atomic

KERNEL_DTYPES = ("bf16", "fp16")  # the Triton kernels' input types (of the model's DTYPES)


def _parse_list(text: str, option: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise MtbenchError(f"{option} is empty")
    return items


def _parse_batches(text: str) -> list[int]:
    batches = []
    for item in _parse_list(text, "--batch-size"):
        if not item.isdigit() or int(item) < 1:
            raise MtbenchError(f"--batch-size: {item!r} is not a positive integer")
        batches.append(int(item))
    return batches


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(rows: list, env: dict) -> Table:
    table = Table(title=f"mtbench bench kernels on {env['device']} ({env['dtype']}, triton {env['triton']})")
    for column in ("preset", "B", "op", "case", "impl", "ms", "TFLOP/s", "GB/s", "speedup", "note"):
        table.add_column(column, justify="right" if column in ("B", "ms", "TFLOP/s", "GB/s", "speedup") else "left")
    for r in rows:
        table.add_row(r.preset, str(r.batch), r.op, r.case, r.impl, _fmt(r.ms, 3), _fmt(r.tflops), _fmt(r.gbps, 0),
                      _fmt(r.speedup, 2) + ("x" if r.speedup is not None else ""), r.note)
    return table


def bench_kernels(
    presets: ModelListOpt = "medium,large",
    batch: str = typer.Option("16,64", "--batch-size", help="Batch sizes (requests per batch), comma-separated."),
    dtype: str = typer.Option("bf16", help=f"Input dtype: {' or '.join(KERNEL_DTYPES)}."),
    input_sets: int = typer.Option(3, min=1, help="Input sets rotated between timed calls."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    reference: bool = typer.Option(True, help="Also time the padded PyTorch references (speedup column)."),
    forward: bool = typer.Option(True, help="Also time the whole MTGR forward, full vs cached, Triton vs reference."),
    sweep: bool = typer.Option(False, help="Also time several attention tile configs (largest batch, first preset)."),
) -> None:
    """Time the Triton kernels (attention full/cached, Group LayerNorm, page copy) against the PyTorch references.

    Needs a CUDA GPU.

    Examples:

      mtbench bench kernels --model medium,large --batch-size 16,64 \\
        --json kernels.json  # needs a CUDA GPU
    """
    import torch

    preset_list = _parse_list(presets, "--model")
    unknown = [p for p in preset_list if p not in PRESET_NAMES]
    if unknown:
        raise MtbenchError(f"--model: unknown preset {unknown[0]!r} (choose from {', '.join(PRESET_NAMES)})")
    batches = _parse_batches(batch)
    if dtype not in KERNEL_DTYPES:
        raise MtbenchError(f"--dtype: {dtype!r} is not one of {', '.join(KERNEL_DTYPES)}")
    if json_path is not None:
        check_output_file(json_path, "--json")
    if not torch.cuda.is_available():
        raise MtbenchError("bench kernels times the Triton kernels on a CUDA GPU, and this machine has none")

    from mtbench.bench.kernels import rows_as_dicts, run_kernel_bench, sweep_attention_configs
    from mtbench.model import get_config

    console = Console()
    torch_dtype = DTYPES[dtype]
    with console.status("benchmarking kernels") as status:
        rows, env = run_kernel_bench(preset_list, batches, torch_dtype, input_sets, reference, forward,
                                     progress=lambda text: status.update(f"benchmarking kernels: {text}"))
        if sweep:
            status.update("sweeping attention tile configs")
            cfg = get_config(preset_list[0])
            rows += sweep_attention_configs(max(batches), cfg.n_heads, cfg.head_dim, torch_dtype)
    console.print(_table(rows, env))
    if json_path is not None:
        write_text_atomic(json_path, json.dumps({"environment": env, "rows": rows_as_dicts(rows)}, indent=1))
        console.print(f"wrote {json_path}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `mtbench bench kernels`."""
    bench.command("kernels")(bench_kernels)
