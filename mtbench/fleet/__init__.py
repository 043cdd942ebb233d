"""Fleet scale: requests routed over many cache replicas, simulated (`mtbench fleet`) or on real GPUs
(`mtbench replay --router`, one process per GPU). Routers (`routers.py`) are the one routing rule both use."""
