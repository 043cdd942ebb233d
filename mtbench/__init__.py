"""mtbench: serve generative recommenders with a cross-request hierarchical KV cache."""

from mtbench.compiled import run_stale_modules_from_source

__version__ = "0.1.0"

run_stale_modules_from_source()  # a compiled module older than its source never runs (mtbench/compiled.py)
