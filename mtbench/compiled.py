"""The optional compiled core: the control plane, the replacement policies, the host extents, the entry sizes
and the simulator, compiled by Cython from these same `.py` files (one decision, one place: nothing is
written twice). The `.pxd` file beside a module only declares types (which classes are extension types,
their attributes, which methods are called as C functions); every rule stays in the `.py` file.

`make compile` (run by `make test`) builds the extensions in place when Cython and a C compiler are
there (`setup.py`, `pip install --no-build-isolation -e .` does the same); without them, or with
`MTBENCH_PURE=1` at build time, the same modules run as plain Python. An extension module is imported
instead of its `.py` file, so a module edited after the last build must be compiled again: `status()`
says which modules are compiled, pure or stale. A stale build never runs: importing mtbench installs
`SourceFirst` for the stale modules, which loads their `.py` files, and warns (the tests fail on a
stale one).

No mtbench imports here: `setup.py` reads `MODULES` without importing the package.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from pathlib import Path

MODULES: tuple[str, ...] = (
    "mtbench.cache.control",
    "mtbench.cache.extents",
    "mtbench.cache.sizes",
    "mtbench.cache.policies.arc",
    "mtbench.cache.policies.base",
    "mtbench.cache.policies.fifo",
    "mtbench.cache.policies.gdsf",
    "mtbench.cache.policies.lazy_heap",
    "mtbench.cache.policies.lfu",
    "mtbench.cache.policies.lru",
    "mtbench.cache.policies.mtserve",
    "mtbench.cache.policies.opt",
    "mtbench.cache.policies.s3fifo",
    "mtbench.cache.policies.sieve",
    "mtbench.sim.simulator",
)
"""The modules the compiled core builds (dotted names; their sources are `mtbench/.../name.py`)."""

ROOT = Path(__file__).resolve().parents[1]


def source(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def extension(module: str, root: Path = ROOT) -> Path | None:
    """The extension module built in place beside the module's `.py` file, if any."""
    py = source(module, root)
    for suffix in EXTENSION_SUFFIXES:
        if py.with_suffix(suffix).exists():
            return py.with_suffix(suffix)
    return None


def status(modules: tuple[str, ...] = MODULES, root: Path = ROOT) -> dict[str, str]:
    """Per module: "compiled" (an extension module beside its `.py`, newer than it and its `.pxd`), "stale"
    (an extension module older than one of them: `make compile`; the `.py` runs) or "pure"."""
    states: dict[str, str] = {}
    for module in modules:
        built = extension(module, root)
        if built is None:
            states[module] = "pure"
            continue
        py = source(module, root)
        inputs = [path for path in (py, py.with_suffix(".pxd")) if path.exists()]
        states[module] = "stale" if any(path.stat().st_mtime > built.stat().st_mtime for path in inputs) else "compiled"
    return states


def summary() -> str:
    """`status()` counted per state, e.g. "compiled 15" or "compiled 14, stale 1"."""
    states = list(status().values())
    return ", ".join(f"{state} {states.count(state)}" for state in sorted(set(states)))


class SourceFirst(importlib.abc.MetaPathFinder):
    """Imports the named modules from their `.py` files (`sources`), wherever an extension module sits."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        return importlib.util.spec_from_file_location(name, self.sources[name]) if name in self.sources else None


def run_stale_modules_from_source(modules: tuple[str, ...] = MODULES, root: Path = ROOT) -> list[str]:
    """Put a `SourceFirst` for the stale modules first on `sys.meta_path`, warn, and return their names."""
    stale = [module for module, state in status(modules, root).items() if state == "stale"]
    if stale:
        sys.meta_path.insert(0, SourceFirst({module: source(module, root) for module in stale}))
        warnings.warn(f"compiled core older than its sources, running them as plain Python: {', '.join(stale)} "
                      "(run `make compile`)", RuntimeWarning, stacklevel=2)
    return stale
