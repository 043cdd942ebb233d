"""Ctrl-C during real work: one line, exit code 130 within 10 s, and no report directory that looks whole.

The command runs in a pseudo-terminal (so rich draws its progress bar, as a user sees it) in its own
process group; once the bar shows, the whole group gets SIGINT, as a terminal's Ctrl-C sends it.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "traces" / "synth-small.parquet"


def _read_until(fd: int, marker: str, deadline: float) -> str:
    seen = ""
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536).decode(errors="replace")
            except OSError:
                break
    return seen


def _interrupt(args: list[str], marker: str) -> tuple[int, str, float]:
    """(exit code, output after the interrupt, seconds from SIGINT to exit)."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "mtbench", *args], stdin=terminal, stdout=terminal,
                               stderr=terminal, cwd=ROOT, env=env, start_new_session=True)
    os.close(terminal)
    try:
        before = _read_until(controller, marker, time.monotonic() + 120)
        assert marker in before, f"the command never showed {marker!r}:\n{before}"
        time.sleep(0.5)  # well inside the work
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        after = ""
        while process.poll() is None and time.monotonic() - sent < 10:
            after += _read_until(controller, "\0", time.monotonic() + 0.2)
        elapsed = time.monotonic() - sent
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"still running 10 s after Ctrl-C:\n{after}")
        after += _read_until(controller, "\0", time.monotonic() + 0.5)
        return process.returncode, after, elapsed
    finally:
        os.close(controller)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _assert_clean_interrupt(code: int, output: str, elapsed: float, out: Path) -> None:
    assert code == 130, output
    assert elapsed < 10
    assert "Traceback" not in output and "Error" not in output, output
    lines = [line for line in output.replace("\r", "\n").split("\n") if "interrupted" in line]
    assert len(lines) == 1 and ("nothing written" in lines[0] or str(out) in lines[0]), output
    assert not out.exists(), "an interrupted run left a report directory that looks complete"
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        assert (partial / "INCOMPLETE").is_file()


def test_ctrl_c_stops_compare_policies_and_its_workers(tmp_path: Path) -> None:
    out = tmp_path / "policies"
    code, output, elapsed = _interrupt(
        ["compare-policies", str(SYNTH), "--gpu-cache", "256MiB,1GiB,4GiB", "--host-cache", "8GiB",
         "--workers", "2", "-o", str(out)], marker="compare-policies")
    _assert_clean_interrupt(code, output, elapsed, out)


def test_ctrl_c_stops_replay(tmp_path: Path) -> None:
    out = tmp_path / "replay"
    code, output, elapsed = _interrupt(
        ["replay", str(SYNTH), "--model", "mini", "--device", "cpu", "--dtype", "fp32", "--gpu-cache", "8MiB",
         "--host-cache", "128MiB", "--batch-size", "16", "--max-requests", "20000", "-o", str(out)],
        marker="replay tiered")
    _assert_clean_interrupt(code, output, elapsed, out)
