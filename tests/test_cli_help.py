"""Every command's --help teaches: it has examples, and each example runs as written (CPU-sized).

The examples come from the commands' docstrings (`mtbench.cli.options.command_examples`); they run in a
scratch directory holding a link to the shipped samples (traces/), commands in `EXAMPLE_ORDER` first,
so an example may read what an earlier one wrote (`mtbench plot runs/policies`).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shlex
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from mtbench.cli import app
from mtbench.cli.options import EXAMPLE_ORDER, GPU_ONLY, HELP_WIDTH, OPTION_ALIASES, SLOW, command_examples, is_group
from mtbench.errors import MtbenchError

ROOT = Path(__file__).resolve().parents[1]
RUNNER = CliRunner()


def _commands(group, prefix: tuple[str, ...] = ()) -> dict:
    """Every leaf command of the app by its full name ("trace synth")."""
    found = {}
    context = group.make_context("mtbench", ["--help"], resilient_parsing=True)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if is_group(command):
            found.update(_commands(command, (*prefix, name)))
        else:
            found[" ".join((*prefix, name))] = command
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _ordered(names: list[str]) -> list[str]:
    rank = {name: index for index, name in enumerate(EXAMPLE_ORDER)}
    return sorted(names, key=lambda name: rank.get(name, len(rank)))


def test_every_command_has_one_to_three_examples_that_name_it() -> None:
    assert {"replay", "compare-policies", "trace synth", "plot", "report"} <= set(COMMANDS)
    for name, command in COMMANDS.items():
        examples = command_examples(command)
        assert 1 <= len(examples) <= 3, f"mtbench {name} --help has {len(examples)} examples"
        assert all(example.startswith(f"mtbench {name} ") or example == f"mtbench {name}" for example in examples), name


def test_help_text_fits_80_columns() -> None:
    """After the first paragraph (which the help wraps) line breaks are kept, so lines must be short."""
    for name, command in COMMANDS.items():
        _, _, rest = inspect.cleandoc(command.help or "").partition("\n\n")
        long = [line for line in rest.splitlines() if len(line) > HELP_WIDTH]
        assert not long, f"mtbench {name} --help: {long}"


def test_help_lists_accepted_values_from_the_registries() -> None:
    from mtbench.cache.layouts import LAYOUT_NAMES
    from mtbench.cache.policies import POLICY_NAMES
    from mtbench.model import PRESET_NAMES

    text = RUNNER.invoke(app, ["replay", "--help"], env={"COLUMNS": "400"}).output
    for name in (*POLICY_NAMES, *LAYOUT_NAMES, *PRESET_NAMES):
        assert name in text
    for old in OPTION_ALIASES:
        assert f"{old} " not in text  # old names work but are not taught


def test_old_option_names_still_work() -> None:
    result = RUNNER.invoke(app, ["model", "info", "--preset", "tiny"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "MTGR tiny" in result.output


def _example_runs() -> list[tuple[str, str]]:
    runs = []
    for name in _ordered(list(COMMANDS)):
        runs += [(name, example) for example in command_examples(COMMANDS[name])]
    return runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="test_every_example_runs runs them here")
def test_gpu_only_examples_parse_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a GPU they stop at the device check (one line, exit 2), never at a usage error: their
    options parse (a flag named like a value option once broke `bench kernels --model` on the GPU)."""
    monkeypatch.chdir(tmp_path)
    examples = [example for _, example in _example_runs() if example.endswith(GPU_ONLY)]
    assert examples
    for example in examples:
        result = RUNNER.invoke(app, shlex.split(example, comments=True)[1:], env={"COLUMNS": "120"})
        assert isinstance(result.exception, MtbenchError) and "CUDA" in str(result.exception), f"{example}\n{result.output}"


def test_every_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "traces").symlink_to(ROOT / "traces")
    monkeypatch.chdir(tmp_path)
    ran = []
    for name, example in _example_runs():
        if example.endswith(SLOW) or example.endswith(GPU_ONLY) and not torch.cuda.is_available():
            continue
        if name == "bench sim" and importlib.util.find_spec("libcachesim") is None:
            continue  # its reference is the test extra's libcachesim (absent on the GPU machine)
        args = shlex.split(example, comments=True)[1:]
        result = RUNNER.invoke(app, args, env={"COLUMNS": "120"})
        assert result.exit_code == 0, f"{example}\n{result.output}\n{result.exception!r}"
        ran.append(name)
    assert {"trace import", "compare-policies", "replay", "plot", "report"} <= set(ran)
    assert os.path.isdir(tmp_path / "runs" / "policies")
