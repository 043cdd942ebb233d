"""Build attention variants for sm_90a on a machine without a GPU and report what the compiler made of them.

For each variant name (the names of scripts/kernel_sweep.py: Triton tiles, or "gluon nN sS" for the Hopper
Gluon kernel) this compiles the HSTU kernel for the cached-candidate case (paged prefix, bf16, head_dim 256,
P = 32) with the ptxas Triton uses for sm_90, and prints per program: registers per thread, spill bytes,
shared memory, how many programs fit on one Hopper SM, and for each key loop (SASS loops with tensor-core
instructions) its instructions per step and spill loads/stores. Figures are static (no timing) and come from
the running Python's Triton: the GPU box runs Triton 3.6, so run it from a Triton 3.6 environment (Gluon's
API changes between versions), e.g. a venv with `pip install triton==3.6.0` over this machine's torch:

    env -u TRITON_INTERPRET PYTHONPATH=$PWD /work/venv-t36/bin/python scripts/kernel_sass.py \
        "tma 64x32 w4 s2 hi" "gluon n32 s4"
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SM_REGISTERS, SM_SHARED, SM_THREADS = 65536, 227 * 1024, 2048  # one H100/H200 SM


def _compile(name: str):
    """(threads per program, compiled kernel) of one variant."""
    if name.split()[0] == "gluon":
        return _compile_gluon(name)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.hstu_attention_triton import _hstu_fwd_kernel as fn
    from scripts.kernel_sweep import variant_config

    cfg = variant_config(name)
    block_d = 256
    signature = {arg: "i32" for arg in fn.arg_names}
    signature.update({arg: "*bf16" for arg in ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "prefix_k_ptr", "prefix_v_ptr")})
    signature.update({arg: "*i32" for arg in ("offsets_ptr", "n_new_static_ptr", "n_rt_ptr", "prefix_offsets_ptr",
                                              "prefix_lengths_ptr", "page_table_ptr")})
    signature.update(alpha="fp32", inv_norm_constant="fp32")
    constants = dict(PREFIX_MODE=2, PAGE_TOKENS=32, CAUSAL_STATIC=False, VISIBLE_NORM=True, BLOCK_M=cfg.block_m,
                     BLOCK_N=cfg.block_n, BLOCK_D=block_d, CHUNK_B=64, DOT_PRECISION="tf32", FAST_SILU=cfg.fast_silu,
                     USE_TMA=cfg.tma, SPLIT_K=cfg.split_k, HEADS_INNER=cfg.heads_inner, TAIL_M=cfg.tail_m)
    if cfg.tma:
        signature["prefix_k_desc"] = signature["prefix_v_desc"] = f"tensordesc<bf16[{cfg.block_n},{block_d}]>"
    else:
        constants["prefix_k_desc"] = constants["prefix_v_desc"] = None
    signature.update({key: "constexpr" for key in constants})
    # The JIT marks pointers and integers divisible by 16 (real strides are); without it nothing vectorises.
    aligned = [a for a in fn.arg_names if signature[a] != "constexpr" and (
        a.endswith("_ptr") or (a.startswith("stride_") and a != "stride_page_table") or a in ("page_rows", "head_dim"))]
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if cfg.maxnreg:
        options["maxnreg"] = cfg.maxnreg
    kernel = triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", 90, 32), options=options)
    return 32 * cfg.num_warps, kernel


def _compile_gluon(name: str):
    """The Gluon kernel on CPU stand-ins of the cand shape's arguments (their types make the signature)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from kernels import hstu_attention_gluon as gluon
    from scripts.kernel_sweep import variant_config

    cfg = variant_config(name)
    heads, dim, page = 3, 256, 32
    rows = torch.zeros(64, heads, dim, dtype=torch.bfloat16)
    pages = torch.zeros(8, 2, page, heads, dim, dtype=torch.bfloat16)[:, 0]
    pool_shape, pool_strides, page_rows = gluon._page_rows_view(pages)
    counts = torch.zeros(8, dtype=torch.int32)
    args = dict(
        q_desc=gluon._descriptor(rows, *gluon._token_rows(rows), gluon.ROWS_PER_WARPGROUP),
        k_desc=gluon._descriptor(rows, *gluon._token_rows(rows), cfg.block_n),
        prefix_k_desc=gluon._descriptor(pages, pool_shape, pool_strides, cfg.block_n),
        q_ptr=rows, stride_qt=heads * dim, page_rows=page_rows, n_requests=8, alpha=0.5)
    args.update(v_desc=args["k_desc"], prefix_v_desc=args["prefix_k_desc"], k_ptr=rows, v_ptr=rows, out_ptr=rows)
    args.update({key: heads * dim for key in ("stride_kt", "stride_vt", "stride_ot")})
    args.update({key: counts for key in ("offsets_ptr", "n_new_static_ptr", "n_rt_ptr", "prefix_offsets_ptr",
                                         "prefix_lengths_ptr", "page_table_ptr")})
    args.update(stride_page_table=37, inv_norm_constant=1.0)
    constants = dict(PREFIX_MODE=2, PAGE_TOKENS=page, CAUSAL_STATIC=False, VISIBLE_NORM=True, HEAD_DIM=dim,
                     BLOCK_N=cfg.block_n, STAGES=cfg.stages, CHUNK_B=64,
                     WORKER_REGISTERS=cfg.worker_registers)
    fn = gluon._hstu_gluon_kernel
    signature = {a: "constexpr" if a in constants else mangle_type(args[a]) for a in fn.arg_names}
    aligned = [a for a in fn.arg_names if a.endswith("_ptr") or a in ("stride_qt", "stride_kt", "stride_vt",
                                                                        "stride_ot", "page_rows")]
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    kernel = triton.compile(GluonASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": 4})
    return 32 * kernel.metadata.num_warps, kernel


def _instructions(sass: str) -> list[tuple[int, str, bool]]:
    """(address, instruction without its predicate, whether it had one) of every SASS line."""
    found = []
    for line in sass.splitlines():
        match = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*?);", line)
        if match:
            text = match.group(2).strip()
            bare = re.sub(r"^@!?U?P\w+\s+", "", text)
            found.append((int(match.group(1), 16), bare, bare != text))
    return found


def _key_loops(sass: str) -> list[dict[str, int]]:
    """Opcode counts of every innermost loop with tensor-core instructions: a conditional backward branch
    (unconditional ones jump back from out-of-line mbarrier retry code) whose range holds no other such loop
    (the state machine around warp-specialised partitions holds the partitions' loops)."""
    code = _instructions(sass)
    ranges = []
    for address, text, predicated in code:
        target = re.search(r"BRA\s+0x([0-9a-f]+)", text)
        if predicated and target and int(target.group(1), 16) < address:
            body = [op.split()[0].split(".")[0] for at, op, _ in code if int(target.group(1), 16) <= at <= address]
            if ("HGMMA" in body or "HMMA" in body) and len(body) < 3000:  # not the whole-kernel retry branch
                ranges.append((int(target.group(1), 16), address, body))
    loops = []
    for start, end, body in ranges:
        if any(start <= inner_start and inner_end <= end and (inner_start, inner_end) != (start, end)
               for inner_start, inner_end, _ in ranges):
            continue
        counts = {op: body.count(op) for op in ("HGMMA", "HMMA", "LDL", "STL", "UTMALDG")}
        loops.append({"instructions": len(body), **counts})
    return loops


def _loop_label(loop: dict[str, int]) -> str:
    """'*313' (TMA prefix loop, 313 instructions per step), '201m' (mma.sync tile), '371+8L' (8 spill loads)."""
    spill = f"+{loop['LDL']}L" if loop["LDL"] else ""
    return ("*" if loop["UTMALDG"] else "") + str(loop["instructions"]) + ("" if loop["HGMMA"] else "m") + spill


def report(name: str, tools: Path) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    threads, kernel = _compile(name)
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx.write_text(kernel.asm["ptx"])
        info = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", ptx, "-o", cubin],
                              capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([tools / "cuobjdump", "-sass", cubin], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", info).group(1))
    shared = kernel.metadata.shared
    per_sm = min(SM_REGISTERS // (registers * threads), SM_SHARED // max(shared + 1024, 1), SM_THREADS // threads)
    loops = " ".join(_loop_label(loop) for loop in _key_loops(sass))
    serialized = " (wgmma serialized)" if "wgmma.mma_async instructions are serialized" in info else ""
    return f"{name:28s} {registers:4d} {spills:6d} {shared // 1024:4d}K {per_sm:3d}  {loops}{serialized}"


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("kernel_sass.py: unset TRITON_INTERPRET (it compiles for sm_90a)")
    import triton

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    print(f"triton {triton.__version__}, sm_90a. Per program: registers per thread, spill-store bytes, shared\n"
          f"memory, programs per SM; then instructions per step of each key loop (* = TMA prefix loop,\n"
          f"m = mma.sync tail tile, +nL = n spill loads per step)")
    for name in sys.argv[1:]:
        print(report(name, tools), flush=True)


if __name__ == "__main__":
    main()
