#!/usr/bin/env bash
# One H200 call for the Hopper Gluon attention kernel (issue 15), from the tree's root:
#
#     OUT=<dir> bash scripts/attn_gpu_check.sh
#
# 1. the sweep (scripts/kernel_sweep.py): compile every variant in a child process (75 s limit each: a
#    compile error or a hung kernel drops that variant, reported), check each at real size (bf16 error vs
#    fp64 within 2x the plain bf16 reference's: B16 random lengths and the cand shape), then one do_bench
#    table of cand B64 / R+C B64 / cand B16 for the current default next to the Gluon variants, the
#    same-pages diagnostic, the full-prefix forward (>= 300 TFLOP/s) and a verdict line;
# 2. the Gluon kernel's GPU tests (tests/test_kernels_attention_gluon.py -m gpu, verbose: a hang shows
#    which test it is in).
# Every step has its own time limit (about 4 minutes in all) and a failing step does not stop the next.
# Writes env.txt, sweep.log, sweep.json, tests.log under $OUT; prints a summary last.
set -o pipefail
: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR="${TMPDIR:-/tmp}/attn_gpu_check_triton_cache"
VARIANTS="${VARIANTS:-tma 64x32 w4 s2 hi,gluon n32 s5,gluon n32 s4,gluon n32 s3}"

{
    date -u
    git log -1 --format='commit %h %s' 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

echo "== 1. sweep: $VARIANTS"
timeout -k 5 "${SWEEP_TIMEOUT:-130}" python3 scripts/kernel_sweep.py --what attention --variants "$VARIANTS" \
    --scan none --jobs 8 --warm-timeout 75 --json "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log"
sweep_rc=$?

echo "== 2. Gluon kernel GPU tests"
timeout -k 5 "${TEST_TIMEOUT:-100}" python3 -m pytest -vv -rfE -p no:cacheprovider -m gpu \
    tests/test_kernels_attention_gluon.py 2>&1 | tee "$OUT/tests.log"
tests_rc=$?

echo
echo "== SUMMARY (exit codes: sweep $sweep_rc, tests $tests_rc; 124 = cut by its time limit)"
grep -E "^compiled |^  gluon|^real-size|^attention, ms|^variant |^(tma|ptr|gluon) |same pages|^full forward|^fastest" \
    "$OUT/sweep.log"
grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
