"""The fast two-tier cache simulator (no tensors), its cost model, entry sizes, miss-ratio curves."""
