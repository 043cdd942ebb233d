"""The Hopper Gluon attention kernel (kernels/hstu_attention_gluon.py) vs the PyTorch reference.

Gluon kernels only run compiled (Triton's interpreter does not take them), so every comparison needs an sm_90
GPU and is marked `gpu`; the CPU tests cover the host side: which inputs the kernel takes, the 2-d views TMA
reads, and that the dispatcher falls back to the Triton kernel where it cannot run.
"""

import zlib

import pytest
import torch

from kernels import AttentionSpec, hstu_attention
from kernels.hstu_attention_gluon import (
    SHARED_MEMORY_LIMIT, GluonAttentionConfig, _page_rows_view, _token_rows, hstu_attention_gluon,
    shared_memory_bytes, unsupported_reason,
)
from kernels.hstu_attention_ref import hstu_attention_reference
from kernels.testing import AttentionCase, random_case, relative_error

SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_sm90 = pytest.mark.skipif(not SM90, reason="needs an sm_90 (Hopper) GPU")
SHALLOW_RING = GluonAttentionConfig(stages=3)  # the loader one tile ahead: the ring's tightest protocol


def test_token_and_page_views_for_tma():
    """[T, H, D] rows with dense heads read as [T, H * D] (any token stride, e.g. a chunk of a fused
    projection); pages of a [pages, 2, P, H, D] pool as [rows, H * D] with 2P rows per page."""
    fused = torch.zeros(10, 4 * 3 * 64)
    q = fused[:, 3 * 64: 6 * 64].unflatten(-1, (3, 64))
    assert _token_rows(q) == ([10, 192], [768, 1])
    assert _token_rows(torch.zeros(10, 64, 3).transpose(1, 2)) is None  # heads not dense within a row
    pool = torch.zeros(7, 2, 32, 3, 64)
    shape, strides, page_rows = _page_rows_view(pool[:, 1])
    assert (shape, strides, page_rows) == ([6 * 64 + 32, 192], [192, 1], 64)
    assert _page_rows_view(pool[:, :, 0].unsqueeze(2).expand(7, 2, 32, 3, 64)[:, 0]) is None


def test_supported_inputs_and_configs():
    q = torch.zeros(8, 3, 256, dtype=torch.bfloat16)
    assert unsupported_reason(q, q, q, None) == "needs a CUDA sm_90 device"
    assert shared_memory_bytes(256, GluonAttentionConfig(stages=5)) <= SHARED_MEMORY_LIMIT
    assert shared_memory_bytes(256, GluonAttentionConfig(stages=6)) > SHARED_MEMORY_LIMIT
    for bad in ({"stages": 2}, {"block_n": 48}, {"worker_registers": 300}):
        with pytest.raises(ValueError):
            GluonAttentionConfig(**bad)


def test_dispatcher_falls_back_where_gluon_does_not_apply(monkeypatch):
    """MTBENCH_ATTENTION_KERNEL=gluon on inputs the kernel does not take (CPU, or fp32 on a GPU) runs the
    Triton kernel; an unknown value is refused."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(4)
    case = random_case(gen, 2, heads=1, head_dim=16, max_static=10, max_rt=3, max_cand=3, cached=False, device=device)
    args = (case.q, case.k, case.v, case.offsets, case.n_new_static, case.n_rt, AttentionSpec(alpha=0.25))
    monkeypatch.setenv("MTBENCH_ATTENTION_KERNEL", "gluon")
    assert relative_error(hstu_attention(*args, impl="triton"), hstu_attention_reference(*args)) < 1e-5
    monkeypatch.setenv("MTBENCH_ATTENTION_KERNEL", "fastest")
    with pytest.raises(ValueError, match="MTBENCH_ATTENTION_KERNEL"):
        hstu_attention(*args, impl="triton")


def _cast(case: AttentionCase, dtype: torch.dtype) -> AttentionCase:
    fields = {name: getattr(case, name) for name in case.__dataclass_fields__}
    for name in ("q", "k", "v", "prefix_k", "prefix_v"):
        fields[name] = fields[name].to(dtype)
    return AttentionCase(**fields)


def _check_against_fp64(case64: AttentionCase, spec: AttentionSpec, prefix_kind: str, page_tokens: int,
                        dtype: torch.dtype, config: GluonAttentionConfig = GluonAttentionConfig()) -> None:
    """The kernel's error vs an fp64 reference within 2x that of a plain `dtype` PyTorch reference."""
    seed = torch.Generator().manual_seed(page_tokens)
    exact = hstu_attention_reference(case64.q, case64.k, case64.v, case64.offsets, case64.n_new_static,
                                     case64.n_rt, spec, case64.prefix(prefix_kind, seed, page_tokens))
    low = _cast(case64, dtype)
    prefix = low.prefix(prefix_kind, torch.Generator().manual_seed(page_tokens), page_tokens)  # same pages
    args = (low.q, low.k, low.v, low.offsets, low.n_new_static, low.n_rt, spec, prefix)
    assert unsupported_reason(low.q, low.k, low.v, prefix, config) is None
    out = hstu_attention_gluon(*args, config=config)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert relative_error(out, exact) <= 2 * relative_error(hstu_attention_reference(*args), exact)


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("head_dim,prefix_kind,page_tokens,causal,normalizer,dtype", [
    (64, "none", 32, False, "visible", torch.bfloat16),
    (128, "contiguous", 32, True, "constant", torch.float16),
    (64, "paged", 32, True, "visible", torch.bfloat16),
    (256, "paged", 64, False, "constant", torch.bfloat16),
])
def test_random_batches_match_reference(head_dim, prefix_kind, page_tokens, causal, normalizer, dtype):
    """Random lengths across the 64-row warpgroup and 128-row program boundaries (static up to 300, R up to
    40, candidates up to 150): idle second warpgroups, causal R edges, partial last pages, pages in random
    order."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{head_dim}{prefix_kind}{causal}".encode()))
    for batch in (1, 5):
        case64 = random_case(gen, batch, heads=2, head_dim=head_dim, max_static=300, max_rt=40, max_cand=150,
                             cached=prefix_kind != "none", dtype=torch.float64, device="cuda")
        spec = AttentionSpec(alpha=head_dim ** -0.5, normalizer=normalizer, norm_constant=13.0, causal_static=causal)
        _check_against_fp64(case64, spec, prefix_kind, page_tokens, dtype)


@pytest.mark.gpu
@needs_sm90
def test_edge_shapes_match_reference():
    """A lone candidate with no keys but itself, everything cached, exactly 64 and 128 rows, 129 rows (a
    second program of one row), 120 R rows (causal edges in both warpgroups) and one candidate; causal and
    not; with the shallowest ring too."""
    n_cached = torch.tensor([0, 40, 33, 0, 70, 5])
    n_new = torch.tensor([0, 0, 30, 64, 20, 0])
    n_rt = torch.tensor([0, 0, 20, 0, 30, 120])
    n_cand = torch.tensor([1, 7, 14, 64, 79, 1])
    rows = n_new + n_rt + n_cand
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    offsets[1:] = rows.cumsum(0)
    gen = torch.Generator().manual_seed(8)

    def tensor(n: int) -> torch.Tensor:
        return torch.randn(n, 2, 64, generator=gen, dtype=torch.float64).cuda()

    case64 = AttentionCase(tensor(int(offsets[-1])), tensor(int(offsets[-1])), tensor(int(offsets[-1])),
                           offsets.cuda(), n_new.cuda(), n_rt.cuda(), tensor(int(n_cached.sum())),
                           tensor(int(n_cached.sum())), n_cached.cuda())
    for causal, config in ((False, GluonAttentionConfig()), (True, GluonAttentionConfig()), (True, SHALLOW_RING)):
        spec = AttentionSpec(alpha=0.125, causal_static=causal)
        _check_against_fp64(case64, spec, "paged", 32, torch.bfloat16, config)


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("config", [GluonAttentionConfig(), SHALLOW_RING], ids=["default", "shallow-ring"])
def test_real_sizes_match_reference(config):
    """MTGR-large in bf16 (3 heads x 256; U+S up to 1032, R up to 100, C up to 200, pages of 32), then the
    timed candidate-only shape (200 candidates over 1132 cached keys)."""
    gen = torch.Generator().manual_seed(17)
    case64 = random_case(gen, 8, heads=3, head_dim=256, max_static=1032, max_rt=100, max_cand=200, cached=True,
                         dtype=torch.float64, device="cuda")
    spec = AttentionSpec(alpha=256 ** -0.5)
    _check_against_fp64(case64, spec, "paged", 32, torch.bfloat16, config)
    batch = 4
    count = lambda n: torch.full((batch,), n, dtype=torch.long, device="cuda")  # noqa: E731
    rows = lambda n: torch.randn(n, 3, 256, generator=gen, dtype=torch.float64).cuda()  # noqa: E731
    offsets = torch.arange(batch + 1, device="cuda") * 200
    cand = AttentionCase(rows(200 * batch), rows(200 * batch), rows(200 * batch), offsets, count(0), count(0),
                         rows(1132 * batch), rows(1132 * batch), count(1132))
    _check_against_fp64(cand, spec, "paged", 32, torch.bfloat16, config)


@pytest.mark.gpu
@needs_sm90
def test_dispatcher_routes_by_environment(monkeypatch):
    from kernels.hstu_attention_triton import hstu_attention_triton

    gen = torch.Generator().manual_seed(12)
    case = _cast(random_case(gen, 3, heads=2, head_dim=64, max_static=90, max_rt=10, max_cand=40, cached=True,
                             device="cuda"), torch.bfloat16)
    args = (case.q, case.k, case.v, case.offsets, case.n_new_static, case.n_rt, AttentionSpec(alpha=0.125),
            case.prefix("paged", gen, 32))
    monkeypatch.setenv("MTBENCH_ATTENTION_KERNEL", "gluon")
    assert torch.equal(hstu_attention(*args), hstu_attention_gluon(*args))
    monkeypatch.setenv("MTBENCH_ATTENTION_KERNEL", "triton")
    assert torch.equal(hstu_attention(*args), hstu_attention_triton(*args))
