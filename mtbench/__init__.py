"""mtbench: serve generative recommenders with a cross-request hierarchical KV cache."""

__version__ = "0.1.0"
