"""One GPU call for issue 15's kernels: check correctness at real sizes, then time many variants.

Sections (pick with --what): `attention` (tile / TMA variants of the HSTU kernel on the cached shapes,
plus the default full forward), `fp8` (fp8 host rows: quantise / dequantise copies against bf16
zero-copy and the copy engine, and the hybrid fp8 layout's per-layer load / store: copy engine + one
fused kernel), `page_copy` (tile variants of scatter / gather against D2D copy).
Compilation (~20 s per head_dim-256 attention variant) runs first in parallel worker processes that
share one Triton cache; timing then runs in this process, one kernel at a time:
triton.testing.do_bench medians, rotating over several input sets.

    PYTHONPATH=$PWD python3 scripts/kernel_sweep.py --what attention,fp8,page_copy --jobs 12 --json $OUT/sweep.json

Needs CUDA; prints compact tables (80 columns) as each section finishes.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

N_STATIC, N_RT, N_CAND, PAGE = 1032, 100, 200, 32
HEADS, DIM = 3, 256
BATCHES = (64, 16)
DEVICE, DTYPE = "cuda", torch.bfloat16


def _tiny() -> None:
    """--tiny: a CPU smoke test of this script under TRITON_INTERPRET=1 (sizes small enough to interpret)."""
    global N_STATIC, N_RT, N_CAND, PAGE, HEADS, DIM, BATCHES, DEVICE, DTYPE, ATTENTION_VARIANTS, CACHED_SHAPES
    global SCAN_BATCHES
    N_STATIC, N_RT, N_CAND, PAGE, HEADS, DIM, BATCHES, DEVICE = 40, 5, 7, 16, 2, 16, (2, 1), "cpu"
    SCAN_BATCHES = (1, 3)
    DTYPE = torch.float16  # the interpreter's bf16 tl.dot is wrong (numpy has no bf16); compiled bf16 is tested on GPU
    ATTENTION_VARIANTS = ["ptr 16x16 w4 s1", "tma 16x16 w4 s1 k2 hi", "ptr 32x16 w4 s1 t16"]
    CACHED_SHAPES = {"cached_cand": (N_STATIC + N_RT, 0, 0, N_CAND), "cached": (N_STATIC, 0, N_RT, N_CAND)}


# Attention variants by name: "tma|ptr MxN wW sS" then optional flags: hi (heads_inner), kK (split_k),
# tT (tail_m: a request's last block of <= T rows as a T-row tile), rR (maxnreg R), exp2 (no tanh.approx).
# Predictions (cand B64; the default takes 0.223 ms with 200 rows padded to 256 in 64-row tiles). Offline
# sm_90a builds (Triton 3.9 + ptxas 13 on the CPU box; the H200 runs Triton 3.6): the default's prefix loop
# is clean (311 instructions per 32-key step, 18 HGMMA, no spills), 255 registers and 96 KB of shared
# memory per program, so two programs per SM; the loop is latency-bound (~3700 cycles per step per SM
# measured against ~1000 for the tensor cores).
# - t16: 3 x 64 + one 16-row tile instead of 4 x 64 (208 vs 256 rows). The 16-row tile's step is 201
#   instructions (mma.sync) and streams the same K/V, so it costs ~0.6 of a 64-row one: 576 + 192 x 0.6
#   tile units instead of 768: ~0.20 ms (-10%). t32: 224 rows, ~0.21 ms.
# - s1 / 64x16 with r168: 64 KB shared memory and 168 registers, three programs per SM instead of two
#   (offline: 8-15 spill loads per step in the prefix loop; s1 also loses the TMA prefetch): -15% .. +10%.
# - w8 on 64x32: two warpgroups split the 64 x 256 accumulator; offline 255 registers x 256 threads, so one
#   program (8 warps) per SM, as many warps as now, one shared K/V stream fewer: +-5%.
DEFAULT_VARIANT = "tma 64x32 w4 s2 hi"  # default_config for paged head_dim 256 in 16 bits (issue 15)
ATTENTION_VARIANTS: list[str] = [
    DEFAULT_VARIANT,
    "tma 64x32 w4 s2 hi t16",
    "tma 64x32 w4 s2 hi t32",
    "tma 64x32 w8 s2 hi",
    "tma 64x32 w4 s1 hi",
    "tma 64x32 w4 s1 hi t16",
    "tma 64x32 w4 s1 hi r168",
    "tma 64x32 w4 s1 hi t16 r168",
    "tma 64x16 w4 s2 hi",
    "tma 64x16 w4 s2 hi t16",
    "tma 64x16 w4 s2 hi r168",
    "tma 64x16 w4 s2 hi t16 r168",
    "ptr 128x64 w8 s2",  # the default before issue 15 (0.247-0.252 ms in calls 1-3: run-to-run anchor)
]
CACHED_SHAPES = {"cached_cand": (N_STATIC + N_RT, 0, 0, N_CAND), "cached": (N_STATIC, 0, N_RT, N_CAND)}
SCAN_BATCHES: tuple[int, ...] = (16, 32, 64, 128)
SCAN_BEST = 3  # variants scanned over SCAN_BATCHES: the fastest on cand B64, plus the default
WARM_TIMEOUT_S = 300  # per compile-and-first-run child (a hung kernel costs this much)


def variant_config(name: str):
    """The config a variant name stands for ("default": None, the dispatcher's own choice): an AttentionConfig
    of the Triton kernel, or for "gluon nN sS" a GluonAttentionConfig of the Hopper Gluon kernel."""
    from kernels.hstu_attention_triton import AttentionConfig

    if name == "default":
        return None
    if name.split()[0] == "gluon":
        return _gluon_config(name)
    loads, tiles, *flags = name.split()
    if loads not in ("tma", "ptr") or "x" not in tiles:
        raise ValueError(f"variant {name!r}: expected 'tma|ptr MxN wW sS [hi] [kK] [tT] [rR] [exp2]' or 'gluon [nN] [sS] [rR]'")
    block_m, block_n = (int(x) for x in tiles.split("x"))
    fields = {"block_m": block_m, "block_n": block_n, "tma": loads == "tma"}
    keys = {"w": "num_warps", "s": "num_stages", "k": "split_k", "t": "tail_m", "r": "maxnreg"}
    for flag in flags:
        if flag == "hi":
            fields["heads_inner"] = True
        elif flag == "exp2":
            fields["fast_silu"] = False
        elif flag[:1] in keys and flag[1:].isdigit():
            fields[keys[flag[0]]] = int(flag[1:])
        else:
            raise ValueError(f"variant {name!r}: unknown flag {flag!r}")
    return AttentionConfig(**fields)


def _gluon_config(name: str):
    """"gluon [nN] [sS] [rR]": key tile width N, ring depth S, setmaxnreg R of the second warpgroup."""
    from kernels.hstu_attention_gluon import GluonAttentionConfig

    keys = {"n": "block_n", "s": "stages", "r": "worker_registers"}
    fields: dict = {}
    for flag in name.split()[1:]:
        if flag[:1] in keys and flag[1:].isdigit():
            fields[keys[flag[0]]] = int(flag[1:])
        else:
            raise ValueError(f"variant {name!r}: unknown flag {flag!r} (expected nN, sS, rR)")
    return GluonAttentionConfig(**fields)


def attention_kernel(name: str) -> Callable:
    """The attention function of a variant, called like hstu_attention_reference (config bound)."""
    config = variant_config(name)
    if name.split()[0] == "gluon":
        from kernels.hstu_attention_gluon import hstu_attention_gluon

        return functools.partial(hstu_attention_gluon, config=config)
    from kernels.hstu_attention_triton import hstu_attention_triton

    return functools.partial(hstu_attention_triton, config=config)


def _attention_inputs(case_name: str, batch: int, seed: int):
    """Identical requests of `case_name`'s shape (as mtbench bench kernels), random values made on the
    device; the prefix sits in a page pool [pages, 2, P, H, D] with pages in random order."""
    from kernels import AttentionSpec, PagedPrefix

    n_cached, n_new, n_rt, n_cand = CACHED_SHAPES.get(case_name, (0, N_STATIC, N_RT, N_CAND))
    rows = n_new + n_rt + n_cand
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=DEVICE, dtype=torch.float32).to(DTYPE)

    def per_request(n: int) -> torch.Tensor:
        return torch.full((batch,), n, dtype=torch.long, device=DEVICE)

    q, k, v = (randn(batch * rows, HEADS, DIM) for _ in range(3))
    offsets = torch.arange(batch + 1, device=DEVICE) * rows
    prefix = None
    if n_cached:
        pages_per_request = -(-n_cached // PAGE)
        n_pages = batch * pages_per_request + 7
        pool = randn(n_pages, 2, PAGE, HEADS, DIM)
        order = torch.randperm(n_pages, generator=torch.Generator().manual_seed(seed))[: batch * pages_per_request]
        table = order.view(batch, pages_per_request).to(DEVICE, torch.int32)
        prefix = PagedPrefix(pool[:, 0], pool[:, 1], table, per_request(n_cached))
    return (q, k, v, offsets, per_request(n_new), per_request(n_rt), AttentionSpec(alpha=DIM ** -0.5), prefix)


def _warm_here(name: str, case_name: str, batch: int) -> None:
    """Compile and run one (variant, case, batch) once (fills the shared Triton cache); a variant on the
    cand shape also runs the check's random-lengths batch, so that a kernel which faults or hangs there is
    dropped here, in a child, not in the main process's check."""
    kernel = attention_kernel(name)
    kernel(*_attention_inputs(case_name, batch, 0))
    if case_name == "cached_cand":
        kernel(*_random_lengths_inputs()[0])
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _random_lengths_inputs() -> tuple[tuple, tuple]:
    """The check's first batch, in DTYPE and in fp64: B16 (BATCHES[1]) with random lengths (static up to
    N_STATIC, R up to N_RT, C up to N_CAND; last blocks of every height), paged prefix in random order."""
    from kernels import AttentionSpec
    from kernels.testing import random_case

    small = BATCHES[1]
    gen = torch.Generator().manual_seed(1)
    case64 = random_case(gen, small, HEADS, DIM, N_STATIC, N_RT, N_CAND, cached=True, dtype=torch.float64, device=DEVICE)
    prefix64 = case64.paged_prefix(PAGE, gen)
    rest = (case64.offsets, case64.n_new_static, case64.n_rt, AttentionSpec(alpha=DIM ** -0.5))
    low = (*[t.to(DTYPE) for t in (case64.q, case64.k, case64.v)], *rest,
           type(prefix64)(prefix64.k_pages.to(DTYPE), prefix64.v_pages.to(DTYPE), prefix64.page_table,
                          prefix64.lengths_))
    return low, (case64.q, case64.k, case64.v, *rest, prefix64)


def _warm(task: tuple[str, str, int]) -> tuple[str, str, int, float, str]:
    """`_warm_here` in a child process, so a compiler crash or hang costs that variant only."""
    name, case_name, batch = task
    started = time.perf_counter()
    try:
        tiny = ["--tiny"] if DEVICE == "cpu" else []
        done = subprocess.run([sys.executable, __file__, *tiny, "--warm", f"{name}|{case_name}|{batch}"],
                              capture_output=True, text=True, timeout=WARM_TIMEOUT_S)
        err = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["exit"])[-1][:90]
    except subprocess.TimeoutExpired:
        err = "compile timed out"
    return name, case_name, batch, time.perf_counter() - started, err


def _bench(fns, warmup_ms: int = 20, rep_ms: int = 100) -> float:
    """Median ms of one call, rotating over `fns` (do_bench on CUDA; three plain runs on the CPU)."""
    import triton

    cycle = itertools.cycle(fns)
    if DEVICE == "cpu":
        times = []
        for _ in range(3):
            started = time.perf_counter()
            next(cycle)()
            times.append(1e3 * (time.perf_counter() - started))
        return sorted(times)[1]
    return triton.testing.do_bench(lambda: next(cycle)(), warmup=warmup_ms, rep=rep_ms, return_mode="median")


def _synced_ms(fns, repeats: int = 20) -> float:
    """The harness used before issue 15: CUDA events around one call, host-synchronised after each, so the
    host's launch time is inside the figure (kept to show how much of the old numbers it was)."""
    if DEVICE != "cuda":
        return 0.0
    for fn in fns:
        fn()
    times = []
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fns[i % len(fns)]()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _table(title: str, header: list[str], rows: list[list], widths: list[int]) -> None:
    print(f"\n{title}")
    print(" ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for row in rows:
        cells = []
        for i, (value, w) in enumerate(zip(row, widths)):
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            cells.append(text.rjust(w) if i else text.ljust(w))
        print(" ".join(cells))
    sys.stdout.flush()


def visible_pairs(n_cached: int, n_new: int, n_rt: int, n_cand: int) -> int:
    from mtbench.bench.kernels import Shape

    return Shape(n_cached, n_new, n_rt, n_cand).visible_pairs()


def _warm_all(tasks: list[tuple[str, str, int]], jobs: int) -> dict[str, str]:
    """Compile every (variant, case, batch) in parallel child processes; {variant: error} of the failures."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        warmed = list(pool.map(_warm, tasks))
    failed = {n: err for n, c, b, _, err in warmed if err}
    print(f"compiled {len(tasks)} attention kernels in {time.perf_counter() - started:.0f} s "
          f"({len(failed)} failed)", flush=True)
    for name, err in failed.items():
        print(f"  {name}: {err}")
    return failed


def _check_variants(names: list[str]) -> dict[str, str]:
    """Correctness at real sizes, bf16 error vs fp64 within 2x the plain bf16 reference's, on two inputs:
    B16 with random lengths (static up to 1032, R up to 100, C up to 200; last blocks of every height) and
    the timed cand shape at B16 (200 rows: a last block of 8). Pages in random order. {name: "ok" | error}."""
    from kernels.hstu_attention_ref import hstu_attention_reference
    from kernels.testing import relative_error

    small = BATCHES[1]
    random_low, random_exact_inputs = _random_lengths_inputs()
    random_exact = hstu_attention_reference(*random_exact_inputs)
    cand_low = _attention_inputs("cached_cand", small, 5)
    prefix = cand_low[-1]
    cand_exact = hstu_attention_reference(*[t.double() for t in cand_low[:3]], *cand_low[3:-1], type(prefix)(
        prefix.k_pages.double(), prefix.v_pages.double(), prefix.page_table, prefix.lengths_))
    inputs = [(random_low, random_exact), (cand_low, cand_exact)]
    limits = [2 * relative_error(hstu_attention_reference(*low), exact) for low, exact in inputs]
    print(f"real-size checks (B{small}, paged): plain {DTYPE} reference error {limits[0] / 2:.2e} (random "
          f"lengths), {limits[1] / 2:.2e} (cand)", flush=True)
    verdicts = {}
    for name in names:
        kernel = attention_kernel(name)
        try:
            errors = [relative_error(kernel(*low), exact) for low, exact in inputs]
        except Exception as error:  # a kernel that compiled on the cand shape but fails on another: keep going
            verdicts[name] = f"ERR {type(error).__name__}"
            print(f"  {name}: {type(error).__name__}: {str(error)[:200]}", flush=True)
            continue
        bad = [e for e, limit in zip(errors, limits) if not e <= limit]
        verdicts[name] = "ok" if not bad else f"BAD {bad[0]:.1e}"
    return verdicts


def _time_attention(name: str, case_name: str, batch: int) -> dict:
    """do_bench median of one variant on one (case, batch), rotating over 3 input sets."""
    sets = [_attention_inputs(case_name, batch, seed) for seed in range(3)]
    kernel = attention_kernel(name)
    ms = _bench([lambda a=a: kernel(*a) for a in sets])
    shape = CACHED_SHAPES.get(case_name, (0, N_STATIC, N_RT, N_CAND))
    flops = 4 * DIM * HEADS * batch * visible_pairs(*shape)
    return {"variant": name, "case": case_name, "batch": batch, "ms": ms, "tflops": flops / ms / 1e9}


def _host_launch_ms(name: str) -> float:
    """Host time per launch: 50 back-to-back launches, no GPU wait in between (0 on the CPU)."""
    if DEVICE != "cuda":
        return 0.0
    inputs, kernel = _attention_inputs("cached_cand", BATCHES[1], 0), attention_kernel(name)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(50):
        kernel(*inputs)
    ms = 1e3 * (time.perf_counter() - started) / 50
    torch.cuda.synchronize()
    return ms


def _diagnose(name: str, results: dict) -> str:
    """cand B64 with every request on the SAME pages (K/V stay in L2: how much of the time is HBM traffic),
    and the issue-6 harness (CUDA events around one host-synchronised call: adds the launch time)."""
    big, kernel = BATCHES[0], attention_kernel(name)
    shared = []
    for seed in range(3):
        args = list(_attention_inputs("cached_cand", big, seed))
        prefix = args[-1]
        table = prefix.page_table[:1].expand_as(prefix.page_table).contiguous()
        args[-1] = type(prefix)(prefix.k_pages, prefix.v_pages, table, prefix.lengths_)
        shared.append(args)
    shared_ms = _bench([lambda a=a: kernel(*a) for a in shared])
    sets = [_attention_inputs("cached_cand", big, seed) for seed in range(3)]
    synced_ms = _synced_ms([lambda a=a: kernel(*a) for a in sets])
    results.setdefault("diagnostics", []).append({"variant": name, "shared_pages_ms": shared_ms, "synced_ms": synced_ms})
    return f"{name}: cand B{big} all requests on the same pages {shared_ms:.3f} ms; host-synchronised {synced_ms:.3f} ms"


def attention_section(jobs: int, results: dict, save: Callable[[], None]) -> None:
    """Compile, check and time every variant on cand B64 / R+C B64 / cand B16 (table, then `save`), then
    diagnostics, the full forward, and a scan of the fastest over SCAN_BATCHES (table, verdict line last)."""
    from kernels.hstu_attention_triton import default_config

    big, small = BATCHES
    if DEVICE == "cuda" and variant_config(DEFAULT_VARIANT) != default_config(DIM, 2, paged=True):
        print(f"note: {DEFAULT_VARIANT!r} is no longer default_config's paged choice")
    # One compile per variant serves every batch <= 64 (the kernel's constexprs do not depend on B).
    failed = _warm_all([(name, "cached_cand", big) for name in ATTENTION_VARIANTS] + [("default", "full", big)], jobs)
    names = [n for n in ATTENTION_VARIANTS if n not in failed]
    if not names:
        print("no attention variant compiled")
        return
    checks = _check_variants(names)
    timed = [("cached_cand", big), ("cached", big), ("cached_cand", small)]
    main = {}
    for name in names:
        main[name] = [_time_attention(name, case_name, batch) for case_name, batch in timed]
        results.setdefault("attention", []).extend(main[name])
        print(f"  {name}: " + " / ".join(f"{r['ms']:.3f}" for r in main[name]) + " ms", flush=True)
    host = {name: _host_launch_ms(name) for name in names}
    ranked = sorted(names, key=lambda n: (checks[n] != "ok", main[n][0]["ms"]))
    _table(f"attention, ms (cand: {N_CAND} cand vs {N_STATIC + N_RT} paged keys; R+C: {N_RT}+{N_CAND} rows vs "
           f"{N_STATIC}; host: launch ms)", ["variant", "check", f"cand B{big}", f"R+C B{big}", f"cand B{small}", "host"],
           [[n, checks[n], *(r["ms"] for r in main[n]), host[n]] for n in ranked], [28, 8, 9, 9, 9, 6])
    save()
    for name in dict.fromkeys([DEFAULT_VARIANT, ranked[0]]):
        if name in main:
            print(_diagnose(name, results))
    if "default" not in failed:
        full = _time_attention("default", "full", big)
        results["attention"].append(full)
        print(f"full forward B{big}, default tiles: {full['ms']:.3f} ms, {full['tflops']:.0f} TFLOP/s (target >= 300)")

    scan_names = list(dict.fromkeys([n for n in ranked if checks[n] == "ok"][:SCAN_BEST] +
                                    [n for n in [DEFAULT_VARIANT] if n in main]))
    if scan_names and SCAN_BATCHES:
        wide = sorted({b for b in SCAN_BATCHES if b > 64})  # a new CHUNK_B constexpr: compile those first
        scan_failed = _warm_all([(n, "cached_cand", b) for n in scan_names for b in wide], jobs) if wide else {}
        scan_cases = [(case, batch) for case in ("cached_cand", "cached") for batch in SCAN_BATCHES]
        scan_rows = []
        for name in scan_names:
            row = [name]
            for case_name, batch in scan_cases:
                if name in scan_failed and batch in wide:
                    row.append("-")
                    continue
                record = _time_attention(name, case_name, batch)
                results.setdefault("scan", []).append(record)
                row.append(record["ms"])
            scan_rows.append(row)
        header = [f"{'cand' if case == 'cached_cand' else 'R+C'} B{batch}" for case, batch in scan_cases]
        _table("batch scan, ms", ["variant", *header], scan_rows, [28] + [7] * len(header))
    best = ranked[0]
    versus = f" (default {main[DEFAULT_VARIANT][0]['ms']:.3f} ms)" if DEFAULT_VARIANT in main else ""
    print(f"\nfastest on cand B{big}: {best!r} {main[best][0]['ms']:.3f} ms, check {checks[best]}{versus}; "
          f"target <= 0.200 ms")
    results["best_cand"] = {"variant": best, "ms": main[best][0]["ms"], "check": checks[best]}


def d2d_gbps() -> float:
    src = torch.randn(256 * 2**20 if DEVICE == "cuda" else 2**16, device=DEVICE)
    dst = torch.empty_like(src)
    ms = _bench([lambda: dst.copy_(src)])
    return 2 * src.numel() * 4 / ms / 1e6


def fp8_section(results: dict) -> None:
    """One layer of a batch of 64 host hits of 1032 tokens (MTGR-large: 3 x 256), host -> pool and back."""
    from kernels import copy_rows, dequantize_rows_fp8, quantize_rows_fp8
    from kernels.fp8_rows_ref import dequantize_rows_reference, quantize_rows_reference

    n_rows, width, heads = BATCHES[0] * 2 * N_STATIC, HEADS * DIM, HEADS
    pin = DEVICE == "cuda"
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(n_rows + 4096, width, generator=gen).to(DEVICE, torch.bfloat16)
    pool_rows = torch.randperm(pool.shape[0], generator=gen)[:n_rows].to(DEVICE)
    host_rows = torch.arange(n_rows, device=DEVICE)
    host_bf16 = torch.empty(n_rows, width, dtype=torch.bfloat16, pin_memory=pin)
    codes = torch.empty(n_rows, width, dtype=torch.uint8, pin_memory=pin)
    scales = torch.empty(n_rows, heads, dtype=torch.uint8, pin_memory=pin)
    dev_codes = torch.empty(n_rows, width, dtype=torch.uint8, device=DEVICE)
    dev_scales = torch.empty(n_rows, heads, dtype=torch.uint8, device=DEVICE)
    impl = "auto" if pin else "triton"

    # Correctness on the GPU: bit-identical to the reference, through pinned host memory too.
    n_check = min(5000, n_rows)
    sample = pool_rows[:n_check]
    quantize_rows_fp8(pool, sample, codes, scales, host_rows[:n_check], impl=impl)
    if pin:
        torch.cuda.synchronize()
    ref_codes = torch.empty(n_check, width, dtype=torch.uint8)
    ref_scales = torch.empty(n_check, heads, dtype=torch.uint8)
    quantize_rows_reference(pool.cpu(), sample.cpu(), ref_codes, ref_scales, torch.arange(n_check))
    exact_q = torch.equal(codes[:n_check], ref_codes) and torch.equal(scales[:n_check], ref_scales)
    back = torch.zeros_like(pool)
    dequantize_rows_fp8(codes, scales, host_rows[:n_check], back, sample, impl=impl)
    ref_back = torch.zeros(pool.shape, dtype=torch.bfloat16)
    dequantize_rows_reference(ref_codes, ref_scales, torch.arange(n_check), ref_back, sample.cpu())
    exact_d = torch.equal(back.cpu(), ref_back)
    print(f"\nfp8 rows on GPU: quantise bit-exact {exact_q}, dequantise bit-exact {exact_d}")

    bf16_bytes, fp8_bytes = n_rows * width * 2, n_rows * (width + heads)
    cases = {
        "H2D copy engine, bf16": (lambda: pool[:n_rows].copy_(host_bf16, non_blocking=True), bf16_bytes),
        "H2D copy engine, fp8": (lambda: dev_codes.copy_(codes, non_blocking=True), n_rows * width),
        "load bf16 zero-copy": (lambda: copy_rows(host_bf16, host_rows, pool, pool_rows, impl=impl), bf16_bytes),
        "load fp8 zero-copy+deq": (lambda: dequantize_rows_fp8(codes, scales, host_rows, pool, pool_rows, impl=impl),
                                   fp8_bytes),
        "store bf16 zero-copy": (lambda: copy_rows(pool, pool_rows, host_bf16, host_rows, impl=impl), bf16_bytes),
        "store fp8 quant+zero-copy": (lambda: quantize_rows_fp8(pool, pool_rows, codes, scales, host_rows, impl=impl),
                                      fp8_bytes),
        "dequant device->pool": (lambda: dequantize_rows_fp8(dev_codes, dev_scales, host_rows, pool, pool_rows,
                                                             impl=impl), fp8_bytes + bf16_bytes),
        "quant pool->device": (lambda: quantize_rows_fp8(pool, pool_rows, dev_codes, dev_scales, host_rows, impl=impl),
                               fp8_bytes + bf16_bytes),
    }
    rows = []
    for name, (fn, moved) in cases.items():
        ms = _bench([fn], warmup_ms=20, rep_ms=150)
        rows.append([name, ms, moved / ms / 1e6, n_rows / 2 / ms / 1e3])
        results.setdefault("fp8", []).append({"case": name, "ms": ms, "GBps": moved / ms / 1e6})
    for name, (fn, moved) in _fp8_hybrid_cases(impl).items():
        ms = _bench([fn], warmup_ms=20, rep_ms=150)
        rows.append([name, ms, moved / ms / 1e6, n_rows / 2 / ms / 1e3])
        results.setdefault("fp8", []).append({"case": name, "ms": ms, "GBps": moved / ms / 1e6})
    _table(f"fp8 host rows: one layer of {BATCHES[0]} x {N_STATIC}-token entries (K+V rows of {HEADS}x{DIM})",
           ["case", "ms", "GB/s", "Mtok/s"], rows, [26, 8, 8, 8])


def _fp8_hybrid_cases(impl: str) -> dict[str, tuple[Callable[[], None], int]]:
    """The `hybrid` fp8 layout's work per layer (`Fp8HybridLayout`): a load is one copy-engine copy per
    entry of its block (codes then scales, placed in the pinned arena as a busy arena places them: odd
    byte offsets) into device staging, then ONE fused dequantise + scatter launch into the pool rows;
    a store is ONE fused gather + quantise launch, then one copy per entry back. Checks both bit-exact
    against the reference first; returns {case: (one layer's work, host bytes moved)}."""
    import kernels
    from kernels.fp8_rows_ref import dequantize_fp8_reference, quantize_fp8_reference
    from mtbench.cache.host import Fp8RowArena
    from mtbench.cache.layouts import Fp8HybridLayout, HostPlacement, TransferJob
    from mtbench.cache.pool import KVShape, PagedKVPool

    entries, width = BATCHES[0], HEADS * DIM
    shape = KVShape(1, HEADS, DIM, torch.bfloat16, PAGE)
    pool = PagedKVPool(shape, (entries * shape.pages_for(N_STATIC) + 8) * shape.page_bytes, DEVICE)
    gen = torch.Generator().manual_seed(1)
    pool.kv.copy_(torch.randn(pool.kv.shape, generator=gen))
    layout = Fp8HybridLayout(shape)
    arena = Fp8RowArena((entries * 2 * N_STATIC + 1) * layout.row_bytes, HEADS, DIM, pin=DEVICE == "cuda")
    arena.allocate(1)
    per_entry = shape.pages_for(N_STATIC)
    pages = pool.allocate(entries * per_entry * PAGE)  # dealt out in random order: scattered pages
    pages = [pages[i] for i in torch.randperm(len(pages), generator=gen).tolist()]
    jobs = [TransferJob((j, 0), HostPlacement([arena.allocate(2 * N_STATIC)], N_STATIC),
                        pages[j * per_entry: (j + 1) * per_entry]) for j in range(entries)]
    batch = layout.staged_batch(jobs, pool.device)
    blocks = [layout.row_views(arena, job.placement)[0] for job in jobs]
    load_staging, store_staging = (torch.empty(batch.layer_bytes, dtype=torch.uint8, device=DEVICE) for _ in range(2))
    load_rows, store_rows = (batch.rows(buffer, HEADS, layout.align) for buffer in (load_staging, store_staging))
    pool_layer = pool.layer(0).view(-1, width)

    def copy_in() -> None:
        torch._foreach_copy_(batch.blocks(load_staging), blocks, non_blocking=True)

    def dequantize() -> None:
        kernels.dequantize_scatter_fp8(load_rows, pool_layer, batch.pool_rows, impl=impl)

    def quantize() -> None:
        kernels.gather_quantize_fp8(pool_layer, batch.pool_rows, store_rows, impl=impl)

    def copy_out() -> None:
        torch._foreach_copy_(blocks, batch.blocks(store_staging), non_blocking=True)

    original = pool_layer.cpu()
    quantize()
    copy_out()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    rows = batch.pool_rows.cpu().long()
    codes, scales = quantize_fp8_reference(original[rows].view(-1, HEADS, DIM))
    host = torch.cat([blocks[j].view(-1) for j in range(entries)])
    n = 2 * N_STATIC
    expected = torch.cat([torch.cat([codes[j * n: (j + 1) * n].flatten(), scales[j * n: (j + 1) * n].flatten()])
                          for j in range(entries)])
    exact_store = torch.equal(host, expected)
    copy_in()
    dequantize()
    back = pool_layer.cpu()[rows]
    exact_load = torch.equal(back, dequantize_fp8_reference(codes, scales, torch.bfloat16).view(-1, width))
    print(f"fp8 hybrid (copy engine + fused kernel): store bit-exact {exact_store}, load bit-exact {exact_load}")

    moved = len(rows) * layout.row_bytes
    return {
        "H2D CE, fp8 blocks/entry": (copy_in, moved),
        "fused dequant stage->pool": (dequantize, moved + len(rows) * width * 2),
        "load fp8 hybrid CE+deq": (lambda: (copy_in(), dequantize()), moved),
        "store fp8 hybrid quant+CE": (lambda: (quantize(), copy_out()), moved),
    }


def page_copy_section(results: dict) -> None:
    from kernels.page_copy_ref import gather_from_pages_reference
    from kernels.page_copy_triton import PageCopyConfig, gather_from_pages_triton, scatter_to_pages_triton

    ceiling = d2d_gbps()
    tokens = BATCHES[0] * N_STATIC
    n_pages = tokens // PAGE + BATCHES[0]
    sets = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        pool = torch.randn(n_pages, 2, PAGE, HEADS, DIM, generator=gen).to(DEVICE, torch.bfloat16)
        pages = torch.randperm(n_pages, generator=gen)
        slots = (pages[:, None] * PAGE + torch.arange(PAGE)).flatten()[:tokens].to(DEVICE)
        buffer = torch.randn(2, tokens, HEADS, DIM, generator=gen).to(DEVICE, torch.bfloat16)
        sets.append((buffer, pool, slots))
    moved = 2 * sets[0][0].numel() * 2
    buffer, pool, slots = sets[0]
    configs = [None] + [PageCopyConfig(*c) for c in ((8, 1024, 4), (16, 1024, 8), (32, 256, 8))]
    rows = []
    for config in configs:
        gather_ok = torch.equal(gather_from_pages_triton(pool, slots, config=config), gather_from_pages_reference(pool, slots))
        scatter_ms = _bench([lambda s=s: scatter_to_pages_triton(s[0], s[1], s[2], config=config) for s in sets])
        gather_ms = _bench([lambda s=s: gather_from_pages_triton(s[1], s[2], out=s[0], config=config) for s in sets])
        label = "default" if config is None else f"t{config.block_t} e{config.block_e} w{config.num_warps}" + (
            " ef" if config.evict_first else "")
        scatter_pct, gather_pct = 100 * moved / scatter_ms / 1e6 / ceiling, 100 * moved / gather_ms / 1e6 / ceiling
        rows.append([label, "ok" if gather_ok else "BAD", scatter_ms, f"{scatter_pct:.0f}%", gather_ms, f"{gather_pct:.0f}%"])
        results.setdefault("page_copy", []).append({"config": label, "scatter_ms": scatter_ms, "gather_ms": gather_ms,
                                                    "scatter_pct": scatter_pct, "gather_pct": gather_pct})
    if DEVICE == "cuda":
        synced = _synced_ms([lambda s=s: gather_from_pages_triton(s[1], s[2], out=s[0]) for s in sets])
        print(f"default gather, host-synchronised harness: {synced:.3f} ms = {100 * moved / synced / 1e6 / ceiling:.0f}% of D2D")
    _table(f"page copy, {tokens} tokens x K,V x {HEADS * DIM} bf16 ({moved / 1e6:.0f} MB r+w); D2D {ceiling:.0f} GB/s",
           ["config", "check", "scat ms", "%D2D", "gath ms", "%D2D"], rows, [16, 5, 8, 5, 8, 5])
    results["d2d_GBps"] = ceiling


def main() -> None:
    global ATTENTION_VARIANTS, SCAN_BATCHES, SCAN_BEST, WARM_TIMEOUT_S
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", default="attention,fp8,page_copy")
    parser.add_argument("--jobs", type=int, default=8, help="parallel compile workers")
    parser.add_argument("--json", default=None)
    parser.add_argument("--warm", default=None, help=argparse.SUPPRESS)  # child: "variant|case|batch"
    parser.add_argument("--variants", default=None, help="comma-separated attention variant names (see "
                        "variant_config), instead of the built-in list")
    parser.add_argument("--scan", default=None, help="batch sizes of the scan of the fastest variants "
                        "(default 16,32,64,128; 'none': no scan)")
    parser.add_argument("--scan-best", type=int, default=SCAN_BEST, help="how many of the fastest to scan")
    parser.add_argument("--warm-timeout", type=float, default=WARM_TIMEOUT_S,
                        help="seconds each compile-and-first-run child may take")
    parser.add_argument("--profile", default=None, help="run one attention variant 3 times (for ncu)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test (TRITON_INTERPRET=1, tiny sizes)")
    args = parser.parse_args()
    if args.tiny:
        _tiny()
    if args.variants:
        ATTENTION_VARIANTS = [name.strip() for name in args.variants.split(",")]
    for name in ATTENTION_VARIANTS:
        try:
            variant_config(name)
        except ValueError as err:
            sys.exit(f"kernel_sweep.py: {err}")
    if args.scan:
        SCAN_BATCHES = () if args.scan == "none" else tuple(int(b) for b in args.scan.split(","))
    SCAN_BEST = args.scan_best
    WARM_TIMEOUT_S = args.warm_timeout
    if args.profile:  # under ncu: a few launches of one variant on the cand shape
        inputs, kernel = _attention_inputs("cached_cand", BATCHES[0], 0), attention_kernel(args.profile)
        for _ in range(3):
            kernel(*inputs)
        torch.cuda.synchronize()
        return
    if args.warm:
        name, case_name, batch = args.warm.split("|")
        _warm_here(name, case_name, int(batch))
        return
    if not torch.cuda.is_available() and not args.tiny:
        sys.exit("kernel_sweep.py needs CUDA (or --tiny with TRITON_INTERPRET=1)")
    import triton

    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (interpreter)"
    print(f"{device_name}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    if args.json:  # fail now, not after minutes of device time
        open(args.json, "w").close()
    results: dict = {}

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    sections = {"attention": lambda: attention_section(args.jobs, results, save), "fp8": lambda: fp8_section(results),
                "page_copy": lambda: page_copy_section(results)}
    for name in args.what.split(","):
        started = time.perf_counter()
        sections[name]()
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        save()  # after every section: a later failure or timeout keeps what was measured


if __name__ == "__main__":
    main()
