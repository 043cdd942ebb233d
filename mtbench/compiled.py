"""The optional compiled core: the control plane, the replacement policies, the host extents, the entry sizes
and the simulator, compiled by Cython from these same `.py` files (one decision, one place: nothing is
written twice). The `.pxd` file beside a module only declares types (which classes are extension types,
their attributes, which methods are called as C functions); every rule stays in the `.py` file.

`make compile` (run by `make test`) builds the extensions in place when Cython and a C compiler are
there (`setup.py`, `pip install --no-build-isolation -e .` does the same); without them, or with
`MTBENCH_PURE=1` at build time, the same modules run as plain Python. An extension module is imported
instead of its `.py` file, so a module edited after the last build must be compiled again: `status()`
says which modules are compiled, pure or stale (the tests fail on a stale one).

No mtbench imports here: `setup.py` reads `MODULES` without importing the package.
"""

from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
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


def source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def status() -> dict[str, str]:
    """Per module of `MODULES`: "compiled" (an extension module is what `import` loads and it is newer than
    its `.py` and `.pxd`), "stale" (an extension module older than one of them: `make compile`) or "pure"."""
    states: dict[str, str] = {}
    for module in MODULES:
        spec = importlib.util.find_spec(module)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is None or not origin.name.endswith(tuple(EXTENSION_SUFFIXES)):
            states[module] = "pure"
            continue
        py = source(module)
        inputs = [path for path in (py, py.with_suffix(".pxd")) if path.exists()]
        built = origin.stat().st_mtime
        states[module] = "stale" if any(path.stat().st_mtime > built for path in inputs) else "compiled"
    return states
