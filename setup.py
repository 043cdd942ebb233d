"""Packaging is in pyproject.toml; this file only adds the optional compiled core (`mtbench/compiled.py`).

With Cython importable (e.g. `make compile`, or `pip install --no-build-isolation -e .` in an environment
that has it) the modules of `mtbench.compiled.MODULES` are compiled from their own `.py` files; without
Cython, with `MTBENCH_PURE=1`, or when the C compiler fails (the extensions are optional), the package
installs and runs as pure Python."""

import importlib.util
import os
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("_mtbench_compiled", ROOT / "mtbench" / "compiled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODULES


def extensions() -> list:
    if os.environ.get("MTBENCH_PURE"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    modules = [Extension(name, [name.replace(".", "/") + ".py"], optional=True) for name in compiled_modules()]
    # annotation_typing=False: the annotations stay documentation (an `int` argument also takes numpy ints, a
    # `float` one keeps its Python object); the C types come from the .pxd files only
    return cythonize(modules, build_dir="build/cython", quiet=True,
                     compiler_directives={"language_level": 3, "annotation_typing": False})


setup(ext_modules=extensions())
