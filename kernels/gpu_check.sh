#!/usr/bin/env bash
# One device call: install, run the kernel tests on CUDA (real sizes included), then the benchmark.
# Writes logs, the benchmark JSON and a tarball of the Triton cache (reusable via TRITON_CACHE_DIR) to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR="$PWD/.gpu/triton_cache"
mkdir -p "$TRITON_CACHE_DIR" "$OUT"
[ -f .gpu/triton_cache.tgz ] && tar -xzf .gpu/triton_cache.tgz -C .gpu
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -x -rN -p no:cacheprovider ${TESTS:-tests/test_kernels_attention.py tests/test_kernels_ops.py tests/test_kernels_fp8.py} -k "${TEST_FILTER:-gpu or ops or dispatcher}" 2>&1 | tee "$OUT/tests.log"
timeout "${BENCH_TIMEOUT:-300}" python3 -m mtbench bench kernels ${BENCH_ARGS:---presets large --batch 16,64 --sweep} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
tar -czf "$OUT/triton_cache.tgz" -C .gpu triton_cache
