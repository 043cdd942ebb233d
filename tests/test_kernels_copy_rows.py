"""kernels.copy_rows: Triton (CPU interpreter, or CUDA when present) == reference == a plain Python loop."""


import pytest
import torch

CUDA = torch.cuda.is_available()

from kernels import copy_rows
from kernels.copy_rows_ref import copy_rows_reference
from kernels.copy_rows_triton import copy_rows_blocks
from kernels.triton_support import triton_device_problem

DEVICE = "cuda" if CUDA else "cpu"
CPU, GPU = torch.device("cpu"), torch.device("cuda")


def _loop_copy(src: torch.Tensor, src_rows: torch.Tensor, dst: torch.Tensor, dst_rows: torch.Tensor) -> None:
    for s, d in zip(src_rows.tolist(), dst_rows.tolist()):
        if s >= 0 and d >= 0:
            dst[d] = src[s]


def _operand(gen: torch.Generator, rows: int, width: int, dtype: torch.dtype, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(parent tensor, [rows, width] view of it): contiguous, big[:, :W], or one chunk of a [T, 4 * W] tensor."""
    extra = {"contiguous": 0, "wide": 5, "chunk": 3 * width}[layout]
    parent = torch.randn(rows, width + extra, generator=gen).to(dtype).to(DEVICE)
    if layout == "chunk":
        return parent, parent.chunk(4, dim=1)[int(torch.randint(0, 4, (1,), generator=gen))]
    return parent, parent[:, :width]


def _same_view(parent: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """`view`'s window into another tensor shaped like its parent (e.g. a clone of the parent)."""
    return parent.as_strided(view.shape, view.stride(), view.storage_offset())


def _random_indices(gen: torch.Generator, n: int, n_src: int, n_dst: int, index_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """n entries: src rows with repeats, distinct dst rows, about 15% negative on each side."""
    src_rows = torch.randint(0, n_src, (n,), generator=gen)
    dst_rows = torch.randperm(n_dst, generator=gen)[:n]
    src_rows[torch.rand(n, generator=gen) < 0.15] = -1
    dst_rows[torch.rand(n, generator=gen) < 0.15] = -int(torch.randint(1, 1000, (1,), generator=gen))
    return src_rows.to(index_dtype).to(DEVICE), dst_rows.to(index_dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_copy_rows_triton_matches_reference_and_loop(dtype, index_dtype):
    gen = torch.Generator().manual_seed(7 * (dtype == torch.bfloat16) + (index_dtype == torch.int64))
    layouts = ("contiguous", "wide", "chunk")
    for case in range(6):
        width = {0: 1030, 3: 48}.get(case, int(torch.randint(1, 40, (1,), generator=gen)))  # 1030: two width blocks
        n_src, n_dst = (int(x) for x in torch.randint(1, 60, (2,), generator=gen))
        n = int(torch.randint(0, n_dst + 1, (1,), generator=gen))
        src_parent, src = _operand(gen, n_src, width, dtype, layouts[case % 3])
        dst_parent, dst = _operand(gen, n_dst, width, dtype, layouts[(case + 1) % 3])
        src_rows, dst_rows = _random_indices(gen, n, n_src, n_dst, index_dtype)
        src_before = src_parent.clone()

        expected_parent = dst_parent.clone()
        _loop_copy(src, src_rows, _same_view(expected_parent, dst), dst_rows)
        reference_parent = dst_parent.clone()
        copy_rows_reference(src, src_rows, _same_view(reference_parent, dst), dst_rows)
        copy_rows(src, src_rows, dst, dst_rows, impl="triton")

        assert torch.equal(reference_parent, expected_parent)
        assert torch.equal(dst_parent, expected_parent)  # columns beyond W and unnamed rows untouched
        assert torch.equal(src_parent, src_before)


def test_copy_rows_empty_and_all_skipped_leave_dst_untouched():
    gen = torch.Generator().manual_seed(3)
    src = torch.randn(5, 16, generator=gen).to(DEVICE)
    dst = torch.randn(6, 16, generator=gen).to(DEVICE)
    before = dst.clone()
    for impl in ("triton", "reference"):
        empty = torch.empty(0, dtype=torch.long, device=DEVICE)
        copy_rows(src, empty, dst, empty, impl=impl)
        skipped = torch.tensor([-1, 2, -1, 4], device=DEVICE)
        copy_rows(src, skipped, dst, skipped.flip(0), impl=impl)  # every pair has a negative side
        assert torch.equal(dst, before)


def test_copy_rows_reference_accepts_indices_on_another_device():
    """CPU src/dst with int32/int64 indices on DEVICE (CUDA where present) and a CPU src_rows."""
    gen = torch.Generator().manual_seed(11)
    src = torch.randn(9, 8, generator=gen)
    for index_dtype in (torch.int32, torch.int64):
        src_rows, dst_rows = _random_indices(gen, 7, 9, 12, index_dtype)
        dst, expected = torch.zeros(12, 8), torch.zeros(12, 8)
        copy_rows_reference(src, src_rows.cpu(), dst, dst_rows)
        _loop_copy(src, src_rows, expected, dst_rows)
        assert torch.equal(dst, expected)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: (torch.zeros(4, 8), torch.zeros(4, 7)), "width mismatch"),
        (lambda: (torch.zeros(4, 8), torch.zeros(4, 8, dtype=torch.float16)), "dtype mismatch"),
        (lambda: (torch.zeros(4, 8), torch.zeros(8, 4).t()), "unit inner stride"),
        (lambda: (torch.zeros(4, 2, 4), torch.zeros(4, 8)), "must be 2-d"),
    ],
)
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_copy_rows_rejects_bad_tensors(make, message, impl):
    src, dst = (t.to(DEVICE) for t in make())
    rows = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        copy_rows(src, rows, dst, rows, impl=impl)


@pytest.mark.parametrize(
    ("src_rows", "dst_rows", "message"),
    [
        (torch.arange(3), torch.arange(4), "index length mismatch"),
        (torch.arange(3), torch.arange(3, dtype=torch.int32), "index dtype mismatch"),
        (torch.arange(3.0), torch.arange(3.0), "int32/int64"),
        (torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long), "1-d"),
    ],
)
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_copy_rows_rejects_bad_indices(src_rows, dst_rows, message, impl):
    with pytest.raises(ValueError, match=message):
        copy_rows(torch.zeros(4, 8, device=DEVICE), src_rows.to(DEVICE), torch.zeros(4, 8, device=DEVICE), dst_rows.to(DEVICE), impl=impl)


def test_copy_rows_bad_impl_is_refused():
    rows = torch.arange(2)
    with pytest.raises(ValueError, match="impl must be one of"):
        copy_rows(torch.zeros(2, 4), rows, torch.zeros(2, 4), rows, impl="cuda")


def test_dispatcher_routes_by_impl_and_environment(monkeypatch):
    import kernels.dispatch as dispatch

    calls = []
    monkeypatch.setattr(dispatch, "copy_rows_reference", lambda *args: calls.append("reference"))
    src, rows = torch.randn(4, 8, device=DEVICE), torch.arange(4, device=DEVICE)
    dst = torch.zeros(4, 8, device=DEVICE)
    copy_rows(src, rows, dst, rows)  # auto: Triton on CUDA, the reference on CPU
    assert calls == ([] if CUDA else ["reference"])
    calls.clear()
    copy_rows(src, rows, dst, rows, impl="triton")
    assert calls == [] and torch.equal(dst, src)
    monkeypatch.setenv("MTBENCH_KERNELS", "reference")
    copy_rows(src, rows, dst, rows, impl="triton")
    assert calls == ["reference"]


def test_zero_copy_placement_rules():
    """Which (device, pinned, peer) operands a compiled or interpreted kernel accepts, and with which error."""
    compiled, interpreted = False, True
    assert triton_device_problem(GPU, False, compiled, peer_device=CPU) is None
    assert triton_device_problem(CPU, True, compiled, peer_device=GPU) is None  # zero-copy through UVA
    unpinned = triton_device_problem(CPU, False, compiled, peer_device=GPU)
    assert isinstance(unpinned, ValueError) and "pinned" in str(unpinned)
    for peer in (None, CPU):  # a host tensor needs a CUDA partner, pinned or not
        assert isinstance(triton_device_problem(CPU, True, compiled, peer_device=peer), RuntimeError)
    assert triton_device_problem(CPU, False, interpreted, peer_device=CPU) is None
    assert isinstance(triton_device_problem(GPU, False, interpreted, peer_device=CPU), RuntimeError)


def test_copy_rows_blocks_fit_the_row():
    assert copy_rows_blocks(768) == (8, 1024)  # bf16 K/V rows: 12 heads x 64
    for width in (1, 3, 64, 100, 768, 1024, 3000, 5000):
        block_r, block_w = copy_rows_blocks(width)
        assert block_w & (block_w - 1) == 0 and 1 <= block_r <= 16
        assert block_w >= min(width, 1024) and block_r * block_w <= 16384


# ---- real GPU: zero-copy transfers at the real size and inside a CUDA graph (skipped without CUDA) ----

gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")
REAL_ROWS, REAL_WIDTH = 100_000, 768


def _real_indices(gen: torch.Generator, n: int, n_src: int, n_dst: int) -> tuple[torch.Tensor, torch.Tensor]:
    src_rows = torch.randperm(n_src, generator=gen)[:n]
    dst_rows = torch.randperm(n_dst, generator=gen)[:n]
    dst_rows[torch.rand(n, generator=gen) < 0.1] = -1
    return src_rows.cuda(), dst_rows.cuda()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("direction", ["host_to_gpu", "gpu_to_host"])
def test_gpu_zero_copy_pinned_host_matches_reference(direction):
    gen = torch.Generator().manual_seed(5)
    host = torch.randn(REAL_ROWS, REAL_WIDTH, generator=gen).to(torch.bfloat16).pin_memory()
    device = torch.randn(REAL_ROWS // 2, 2 * REAL_WIDTH, generator=gen).to(torch.bfloat16).cuda()[:, :REAL_WIDTH]
    src, dst = (host, device) if direction == "host_to_gpu" else (device, host)
    src_rows, dst_rows = _real_indices(gen, 40_000, src.shape[0], dst.shape[0])
    expected = dst.clone()
    copy_rows_reference(src, src_rows, expected, dst_rows)
    copy_rows(src, src_rows, dst, dst_rows)  # auto: Triton, reading/writing the pinned tensor in place
    torch.cuda.synchronize()
    assert torch.equal(dst, expected)


@pytest.mark.gpu
@gpu
def test_gpu_unpinned_host_tensor_is_refused():
    rows = torch.arange(4, device="cuda")
    with pytest.raises(ValueError, match="pinned"):
        copy_rows(torch.zeros(8, 16), rows, torch.zeros(8, 16, device="cuda"), rows)


@pytest.mark.gpu
@gpu
def test_gpu_copy_rows_in_cuda_graph_replays_with_new_indices():
    gen = torch.Generator().manual_seed(9)
    src = torch.randn(4096, REAL_WIDTH, generator=gen).to(torch.bfloat16).cuda()
    pool = torch.zeros(8192, REAL_WIDTH, dtype=torch.bfloat16, device="cuda")
    src_rows = torch.arange(4096, device="cuda")
    dst_rows = torch.full((4096,), -1, dtype=torch.long, device="cuda")
    copy_rows(src, src_rows, pool, dst_rows)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        copy_rows(src, src_rows, pool, dst_rows)
    for _ in range(2):
        new_rows = torch.randperm(8192, generator=gen)[:4096].cuda()
        new_rows[torch.rand(4096, generator=gen).cuda() < 0.3] = -1
        dst_rows.copy_(new_rows)
        expected = pool.clone()
        copy_rows_reference(src, src_rows, expected, dst_rows)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(pool, expected)
