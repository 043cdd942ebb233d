"""The optional compiled core (`mtbench/compiled.py`): what it builds, that a build is never stale, and that
it is in use where CI expects it (MTBENCH_EXPECT_COMPILED=1, `.ci/run`). Every other test runs on whichever
modules `import` loads, compiled or pure; both give the same decisions (`scripts/sim_speed.py decisions`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtbench import compiled
from mtbench.cache.policies import POLICIES, ReplacementPolicy

HOOKS = ("_on_hit", "_on_insert", "_pop_victim", "_on_remove")


def test_every_policy_implements_the_hooks() -> None:
    """What `ABC` checked before the base class became an extension type (base.pxd)."""
    for name, cls in POLICIES.items():
        for hook in HOOKS:
            assert getattr(cls, hook) is not getattr(ReplacementPolicy, hook), f"{name} lacks {hook}"


def test_the_module_list_matches_the_sources() -> None:
    for module in compiled.MODULES:
        assert compiled.source(module).is_file(), module
    declared = {".".join(path.relative_to(compiled.ROOT).with_suffix("").parts)
                for path in (compiled.ROOT / "mtbench").rglob("*.pxd")}
    assert declared <= set(compiled.MODULES), f"a .pxd beside a module that is not compiled: {declared - set(compiled.MODULES)}"


def test_no_compiled_module_is_stale() -> None:
    stale = [module for module, state in compiled.status().items() if state == "stale"]
    assert not stale, f"extension modules older than their sources (run `make compile`): {stale}"


@pytest.mark.skipif(os.environ.get("MTBENCH_EXPECT_COMPILED") != "1", reason="MTBENCH_EXPECT_COMPILED=1 not set")
def test_the_compiled_core_is_in_use() -> None:
    import mtbench.cache.control
    import mtbench.cache.policies.lru
    import mtbench.sim.simulator

    assert set(compiled.status().values()) == {"compiled"}, compiled.status()
    for module in (mtbench.cache.control, mtbench.cache.policies.lru, mtbench.sim.simulator):
        assert not Path(module.__file__).name.endswith(".py"), module.__file__


def test_a_stale_extension_never_runs(tmp_path: Path) -> None:
    """An extension module older than its `.py` is skipped for the `.py` (here a bogus one that would fail to
    load), with a warning; a fresh one would be what `import` loads."""
    import importlib
    import sys
    import time
    from importlib.machinery import EXTENSION_SUFFIXES

    package = tmp_path / "stalepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    built = package / ("rules" + EXTENSION_SUFFIXES[0])
    built.write_bytes(b"not a shared object")
    time.sleep(0.01)
    (package / "rules.py").write_text("RULE = 'from source'\n")
    modules = ("stalepkg.rules",)
    assert compiled.status(modules, tmp_path) == {"stalepkg.rules": "stale"}
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.warns(RuntimeWarning, match="stalepkg.rules"):
            assert compiled.run_stale_modules_from_source(modules, tmp_path) == ["stalepkg.rules"]
        assert importlib.import_module("stalepkg.rules").RULE == "from source"
    finally:
        sys.path.remove(str(tmp_path))
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, compiled.SourceFirst)]
        for name in ("stalepkg.rules", "stalepkg"):
            sys.modules.pop(name, None)
    os.utime(built)  # rebuilt after the edit: compiled again
    assert compiled.status(modules, tmp_path) == {"stalepkg.rules": "compiled"}
