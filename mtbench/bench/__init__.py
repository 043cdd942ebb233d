"""Benchmarks behind `mtbench bench ...`: Triton kernels vs their references (`kernels`) and whole
MTGR forwards (`model`); each prints a table and can write JSON."""
