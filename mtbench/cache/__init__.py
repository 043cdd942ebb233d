"""The hierarchical KV cache: replacement policies (`policies`), the control plane that makes every tier
decision (`control`, keys and sizes only, shared with the simulator), and the real tiers' data plane
(`manager`: pool pages, host extents, transfers)."""
