"""Output paths, checked before a command does its work, and small files written atomically.

Every command that writes (a trace, a profile, a cost model, a JSON table, PNGs, a report directory)
checks its output path first with `check_output_file` / `check_output_dir`, so a path it cannot use
ends the command with one line and exit code 2 before any work, not with a traceback after it.
Report directories add their own rules on top (`mtbench.report.directory.validate_out_dir`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mtbench.errors import MtbenchError


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_writable(path: Path, option: str) -> None:
    """`path` (a file or directory, existing or not) can be created or replaced: its nearest existing
    ancestor is a directory in which this process can create a file. Checked by creating (and
    removing) a probe file, because permission bits do not tell for root or read-only mounts."""
    where = path if path.is_dir() else _nearest_existing(path.parent)
    if not where.is_dir():
        raise MtbenchError(f"{option} {path}: {where} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".mtbench-probe-"):
            pass
    except OSError as err:
        raise MtbenchError(f"{option} {path}: cannot write in {where} ({err.strerror or err})") from None


def check_output_file(path: Path, option: str = "--out") -> Path:
    """`path` may be written as a file (an existing file is replaced): not a directory, writable."""
    path = Path(path)
    if path.is_dir():
        raise MtbenchError(f"{option} {path} is a directory; give a file name (e.g. {path / 'out'}{path.suffix})")
    if path.exists() and not path.is_file():
        raise MtbenchError(f"{option} {path} exists and is not a regular file")
    ensure_writable(path, option)
    return path


def check_output_dir(path: Path, option: str = "--out") -> Path:
    """`path` may hold output files: an existing directory or a new one, writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MtbenchError(f"{option} {path} exists and is not a directory")
    ensure_writable(path, option)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to a hidden temporary file beside `path` (creating missing folders), then rename it
    onto `path`; the temporary file never outlives a failure or Ctrl-C."""
    path = check_output_file(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path
