"""Triton Group LayerNorm and page copy vs their PyTorch references (CPU interpreter, or CUDA when present)."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
    for name in ("kernels.group_layernorm_triton", "kernels.page_copy_triton"):
        if name in sys.modules:  # imported compiled by an earlier test module
            importlib.reload(sys.modules[name])

from kernels import gather_from_pages, group_layernorm, scatter_to_pages  # noqa: E402
from kernels.group_layernorm_ref import group_layernorm_reference  # noqa: E402
from kernels.page_copy_ref import gather_from_pages_reference, scatter_to_pages_reference  # noqa: E402
from kernels.testing import relative_error  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("gated", [False, True])
def test_group_layernorm_matches_reference(dtype, gated):
    gen = torch.Generator().manual_seed(int(gated) * 2 + (dtype == torch.float16))
    for _ in range(3):
        tokens, width, groups = int(torch.randint(1, 40, (1,), generator=gen)), int(torch.randint(3, 70, (1,), generator=gen)), 4
        x = (torch.randn(tokens, width, generator=gen) * 3 + 1).to(dtype).to(DEVICE)
        group_ids = torch.randint(0, groups, (tokens,), generator=gen).to(DEVICE)
        weight, bias = (torch.randn(groups, width, generator=gen).to(dtype).to(DEVICE) for _ in range(2))
        gate = torch.randn(tokens, 2 * width, generator=gen).to(dtype).to(DEVICE)[:, ::2] if gated else None  # strided view
        out = group_layernorm(x, group_ids, weight, bias, 1e-5, gate, impl="triton")
        ref = group_layernorm_reference(x, group_ids, weight, bias, 1e-5, gate)
        assert out.dtype == dtype and out.shape == x.shape
        assert relative_error(out, ref) < (1e-6 if dtype == torch.float32 else 1e-3)


def _pool_and_slots(gen, n_tokens, page_tokens, heads, dim, dtype):
    n_pages = (n_tokens + page_tokens - 1) // page_tokens + 2
    pool = torch.randn(3, n_pages, 2, page_tokens, heads, dim, generator=gen).to(dtype).to(DEVICE)
    slots = torch.randperm(n_pages * page_tokens, generator=gen)[:n_tokens].to(DEVICE)  # pages in random order
    return pool, slots


@pytest.mark.parametrize("page_tokens", [1, 4, 16])
def test_scatter_to_pages_matches_reference(page_tokens):
    gen = torch.Generator().manual_seed(page_tokens)
    for n_tokens in (1, 37):
        pool, slots = _pool_and_slots(gen, n_tokens, page_tokens, heads=3, dim=8, dtype=torch.float16)
        src = torch.randn(2, n_tokens, 3, 8, generator=gen).to(DEVICE)  # fp32 into an fp16 pool
        expected = pool.clone()
        scatter_to_pages_reference(src, expected[1], slots)
        scatter_to_pages(src, pool[1], slots, impl="triton")
        assert torch.equal(pool, expected)  # other layers untouched, cast identical


@pytest.mark.parametrize("page_tokens", [1, 4, 16])
def test_gather_from_pages_matches_reference(page_tokens):
    gen = torch.Generator().manual_seed(100 + page_tokens)
    for n_tokens in (1, 41):
        pool, slots = _pool_and_slots(gen, n_tokens, page_tokens, heads=2, dim=12, dtype=torch.float32)
        expected = gather_from_pages_reference(pool[2], slots)
        assert torch.equal(gather_from_pages(pool[2], slots, impl="triton"), expected)
        out = torch.full_like(expected, float("nan"))
        assert gather_from_pages(pool[2], slots, out=out, impl="triton") is out
        assert torch.equal(out, expected)


def test_page_copy_rejects_mismatched_buffer():
    pool = torch.zeros(4, 2, 4, 2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="buffer must be"):
        scatter_to_pages(torch.zeros(2, 3, 2, 8, device=DEVICE), pool, torch.arange(5, device=DEVICE), impl="triton")


def test_triton_on_cpu_without_interpreter_is_refused(tmp_path):
    """A compiled (non-interpreted) kernel given CPU tensors fails with a clear message, not a crash."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import torch\nfrom kernels import group_layernorm\n"
        "x = torch.randn(4, 8)\n"
        "try:\n    group_layernorm(x, torch.zeros(4, dtype=torch.long), torch.ones(1, 8), torch.zeros(1, 8), impl='triton')\n"
        "except RuntimeError as err:\n    print('refused:', err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert "refused:" in result.stdout and "TRITON_INTERPRET=1" in result.stdout


def test_page_copy_configs_agree_with_reference():
    """Every tile shape of the sweep computes the same copy (several element blocks, masked tails)."""
    from kernels.page_copy_triton import PageCopyConfig, gather_from_pages_triton, scatter_to_pages_triton

    gen = torch.Generator().manual_seed(55)
    for config in (PageCopyConfig(4, 16, 4, evict_first=True), PageCopyConfig(16, 32, 8), PageCopyConfig(1, 64, 4)):
        pool, slots = _pool_and_slots(gen, 29, 4, heads=3, dim=8, dtype=torch.float32)
        src = torch.randn(2, 29, 3, 8, generator=gen).to(DEVICE)
        expected = pool.clone()
        scatter_to_pages_reference(src, expected[0], slots)
        scatter_to_pages_triton(src, pool[0], slots, config=config)
        assert torch.equal(pool, expected)
        assert torch.equal(gather_from_pages_triton(pool[1], slots, config=config), gather_from_pages_reference(pool[1], slots))
