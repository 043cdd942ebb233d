"""The hierarchical KV cache: replacement policies (`mtbench.cache.policies`) and, beside them, the tiers."""
