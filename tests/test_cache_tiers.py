"""GPU pool, host extent allocator and host layouts (CPU tensors; random cases)."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from mtbench.cache.host import ExtentAllocator, HostArena
from mtbench.cache.layouts import LAYOUT_NAMES, HostPlacement, TransferJob, make_layout
from mtbench.cache.pool import KVShape, PagedKVPool
from mtbench.cache.transfer import TransferEngine, TransferFailed
from mtbench.errors import MtbenchError

SHAPE = KVShape(layers=3, heads=2, head_dim=4, dtype=torch.float32, page_tokens=4)


def test_shape_sizes_follow_pages() -> None:
    assert SHAPE.bytes_per_token == 3 * 2 * 2 * 4 * 4
    assert SHAPE.pages_for(1) == 1 and SHAPE.pages_for(4) == 1 and SHAPE.pages_for(5) == 2
    assert SHAPE.entry_bytes(5) == 2 * SHAPE.page_bytes


@pytest.mark.parametrize("seed", range(5))
def test_pool_alloc_free_invariants(seed: int) -> None:
    rng = random.Random(seed)
    pool = PagedKVPool(SHAPE, 20 * SHAPE.page_bytes + 7, "cpu")
    assert pool.num_pages == 20 and pool.kv.shape == (3, 20, 2, 4, 2, 4)
    owned: list[list[int]] = []
    for _ in range(300):
        if owned and rng.random() < 0.45:
            pages = owned.pop(rng.randrange(len(owned)))
            pool.free(pages)
        else:
            n_tokens = rng.randint(1, 30)
            free_before = pool.num_free_pages
            pages = pool.allocate(n_tokens)
            if pages is None:
                assert SHAPE.pages_for(n_tokens) > free_before and pool.num_free_pages == free_before
                continue
            assert len(pages) == SHAPE.pages_for(n_tokens)
            owned.append(pages)
        in_use = [p for pages in owned for p in pages]
        assert len(in_use) == len(set(in_use)), "a page is owned twice"
        assert len(in_use) + pool.num_free_pages == pool.num_pages
        assert pool.used_bytes == len(in_use) * SHAPE.page_bytes
    for pages in owned:
        pool.free(pages)
    assert pool.num_free_pages == pool.num_pages
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(owned[0] if owned else [0])
    with pytest.raises(RuntimeError):
        pool.free([-1])


def test_pool_smaller_than_a_page_is_refused() -> None:
    with pytest.raises(MtbenchError, match="smaller than one page"):
        PagedKVPool(SHAPE, SHAPE.page_bytes - 1, "cpu")


def test_pool_slots_and_page_table() -> None:
    pool = PagedKVPool(SHAPE, 10 * SHAPE.page_bytes, "cpu")
    slots = pool.slots([7, 2], 6)
    assert slots.tolist() == [28, 29, 30, 31, 8, 9]
    table = pool.page_table([[3], [7, 2]])
    assert table.tolist() == [[3, 0], [7, 2]]


@pytest.mark.parametrize("fit", ["first", "best"])
@pytest.mark.parametrize("seed", range(6))
def test_extent_allocator_random_invariants(fit: str, seed: int) -> None:
    rng = random.Random(seed)
    alloc = ExtentAllocator(1000, fit=fit, alignment=4)
    live: dict[int, int] = {}
    for _ in range(400):
        if live and rng.random() < 0.5:
            start = rng.choice(list(live))
            alloc.free(start)
            del live[start]
        else:
            length = rng.randint(1, 120)
            start = alloc.allocate(length)
            if start is None:
                assert alloc.largest_free < -(-length // 4) * 4
                continue
            assert start % 4 == 0
            live[start] = -(-length // 4) * 4
        spans = sorted(live.items())
        for (s1, l1), (s2, _) in zip(spans, spans[1:]):
            assert s1 + l1 <= s2, "allocated extents overlap"
        free = alloc.free_extents()
        for (s1, l1), (s2, _) in zip(free, free[1:]):
            assert s1 + l1 < s2, "free extents adjacent (not coalesced) or overlapping"
        assert alloc.free_total + sum(live.values()) == 1000
        assert 0.0 <= alloc.fragmentation() < 1.0
    for start in list(live):
        alloc.free(start)
    assert alloc.free_extents() == [(0, 1000)] and alloc.fragmentation() == 0.0


def test_extent_allocator_coalescing_and_fragmentation() -> None:
    alloc = ExtentAllocator(100)
    a, b, c, d = (alloc.allocate(25) for _ in range(4))
    assert (a, b, c, d) == (0, 25, 50, 75)
    alloc.free(a)
    alloc.free(c)
    assert alloc.free_extents() == [(0, 25), (50, 25)]
    assert alloc.fragmentation() == pytest.approx(0.5)
    assert alloc.allocate(30) is None
    alloc.free(b)  # merges with both neighbours
    assert alloc.free_extents() == [(0, 75)] and alloc.fragmentation() == 0.0
    with pytest.raises(RuntimeError, match="double free"):
        alloc.free(b)


def test_best_fit_picks_smallest_hole() -> None:
    alloc = ExtentAllocator(100, fit="best")
    starts = [alloc.allocate(10) for _ in range(10)]
    alloc.free(starts[1])  # hole of 10 at 10
    alloc.free(starts[5])
    alloc.free(starts[6])  # hole of 20 at 50
    assert alloc.allocate(8) == 10
    first = ExtentAllocator(100, fit="first")
    starts = [first.allocate(10) for _ in range(10)]
    first.free(starts[5])
    first.free(starts[6])
    first.free(starts[1])
    assert first.allocate(10) == 10


def test_host_arena_views_and_bad_request() -> None:
    arena = HostArena(4096, torch.float32, pin=False)
    offset = arena.allocate(10)
    view = arena.view(offset, (2, 5))
    view.fill_(3.0)
    assert arena.buffer[offset : offset + 10].sum().item() == 30.0
    assert arena.used_bytes >= 40
    with pytest.raises(MtbenchError, match="bytes"):
        HostArena(1 << 62, torch.float32, pin=False)


def _fill_entry(pool: PagedKVPool, pages: list[int], n_tokens: int, gen: torch.Generator) -> torch.Tensor:
    """Random K/V [layers, 2, n, H, D] written into the entry's pages; returns it."""
    data = torch.randn((SHAPE.layers, 2, n_tokens, SHAPE.heads, SHAPE.head_dim), generator=gen)
    slots = pool.slots(pages, n_tokens)
    for layer in range(SHAPE.layers):
        pool.kv[layer, slots // SHAPE.page_tokens, :, slots % SHAPE.page_tokens] = data[layer].transpose(0, 1)
    return data


def _read_entry(pool: PagedKVPool, pages: list[int], n_tokens: int) -> torch.Tensor:
    slots = pool.slots(pages, n_tokens)
    return torch.stack([pool.kv[l, slots // SHAPE.page_tokens, :, slots % SHAPE.page_tokens].transpose(0, 1)
                        for l in range(SHAPE.layers)])


@pytest.mark.parametrize("layout_name", LAYOUT_NAMES)
@pytest.mark.parametrize("seed", range(4))
def test_layout_round_trip_is_exact(layout_name: str, seed: int) -> None:
    """GPU pages -> host (store) -> other GPU pages (load) reproduces every byte, for random lengths;
    odd seeds issue the load from the loader thread."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    pool = PagedKVPool(SHAPE, 64 * SHAPE.page_bytes, "cpu")
    arena = HostArena(64 * SHAPE.page_bytes, SHAPE.dtype, pin=False, fit=rng.choice(["first", "best"]))
    layout = make_layout(layout_name, SHAPE)
    engine = TransferEngine(pool, arena, layout, load_thread=bool(seed % 2))
    originals, jobs = [], []
    for index in range(5):
        n_tokens = rng.randint(1, 17)
        pages = pool.allocate(n_tokens)
        rng.shuffle(pages)
        originals.append(_fill_entry(pool, pages, n_tokens, gen))
        offsets = [arena.allocate(size) for size in layout.extent_elements(n_tokens)]
        jobs.append(TransferJob((index, 0), HostPlacement(offsets, n_tokens), pages))
    # odd seeds store the entries one by one, even seeds in one batched transfer
    handles = [engine.store(job) for job in jobs] if seed % 2 else engine.store_many(jobs)
    assert all(handle is not None and handle.done() for handle in handles)
    for job in jobs:
        pool.free(job.pages)
    pool.kv.zero_()
    reloads = []
    for job in jobs:
        pages = pool.allocate(job.placement.n_tokens)
        rng.shuffle(pages)
        reloads.append(TransferJob(job.key, job.placement, pages))
    handle = engine.load(reloads)
    handle.synchronize()
    assert not handle.failed and handle.done()
    for original, job in zip(originals, reloads):
        assert torch.equal(_read_entry(pool, job.pages, job.placement.n_tokens), original)
    assert handle.bytes_moved == sum(SHAPE.bytes_per_token * j.placement.n_tokens for j in reloads)


def test_load_fault_is_reported_and_other_jobs_still_load() -> None:
    gen = torch.Generator().manual_seed(0)
    pool = PagedKVPool(SHAPE, 16 * SHAPE.page_bytes, "cpu")
    arena = HostArena(16 * SHAPE.page_bytes, SHAPE.dtype, pin=False)
    layout = make_layout("hybrid", SHAPE)

    def fail_user_1(job: TransferJob, direction: str) -> None:
        if job.key[0] == 1 and direction == "load":
            raise TransferFailed("injected")

    engine = TransferEngine(pool, arena, layout, fault_hook=fail_user_1)
    jobs, originals = [], []
    for user in range(3):
        pages = pool.allocate(6)
        originals.append(_fill_entry(pool, pages, 6, gen))
        placement = HostPlacement([arena.allocate(s) for s in layout.extent_elements(6)], 6)
        job = TransferJob((user, 0), placement, pages)
        engine.store(job)
        jobs.append(job)
    pool.kv.zero_()
    handle = engine.load(jobs)
    assert [j.key for j in handle.failed] == [(1, 0)]
    assert [j.key for j in handle.jobs] == [(0, 0), (2, 0)]
    assert torch.equal(_read_entry(pool, jobs[0].pages, 6), originals[0])
    assert torch.equal(_read_entry(pool, jobs[2].pages, 6), originals[2])


def test_unknown_layout_is_refused() -> None:
    with pytest.raises(MtbenchError, match="hybrid"):
        make_layout("columnar", SHAPE)


@pytest.mark.parametrize("seed", range(3))
def test_pool_scratch_pages_are_apart_from_the_capacity(seed: int) -> None:
    rng = random.Random(seed)
    pool = PagedKVPool(SHAPE, 6 * SHAPE.page_bytes, "cpu", scratch_pages=5)
    assert pool.capacity_bytes == 6 * SHAPE.page_bytes and pool.kv.shape[1] == 11
    held = []
    for _ in range(60):
        if held and rng.random() < 0.4:
            pool.free(held.pop(rng.randrange(len(held))))
            continue
        scratch = rng.random() < 0.5
        pages = (pool.allocate_scratch if scratch else pool.allocate)(rng.randint(1, 3 * SHAPE.page_tokens))
        if pages is not None:
            assert all((page >= 6) == scratch for page in pages)
            held.append(pages)
        in_use = [p for pages in held for p in pages]
        assert len(in_use) == len(set(in_use))
        assert pool.num_free_pages == 6 - sum(p < 6 for p in in_use)
        assert pool.num_free_scratch_pages == 5 - sum(p >= 6 for p in in_use)
    for pages in held:
        pool.free(pages)
    with pytest.raises(RuntimeError):
        pool.free([7])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pinned staging)")
def test_pinned_staging_uploads_survive_slot_reuse() -> None:
    from mtbench.device import PinnedStaging

    staging = PinnedStaging(slots=2)
    gen = torch.Generator().manual_seed(0)
    sources = [torch.randint(0, 1 << 30, (int(n),), generator=gen) for n in torch.randint(1, 50_000, (12,), generator=gen)]
    uploaded = [staging.upload(source, torch.device("cuda")) for source in sources]
    for source, device_copy in zip(sources, uploaded):
        assert torch.equal(device_copy.cpu(), source)


def test_loader_thread_reports_issued_layers_and_errors() -> None:
    """A handle from the loader thread is done only once every layer was issued; waiting on a layer
    blocks until it is; a failure inside the thread reaches whoever waits, as an error."""
    pool = PagedKVPool(SHAPE, 16 * SHAPE.page_bytes, "cpu")
    arena = HostArena(16 * SHAPE.page_bytes, SHAPE.dtype, pin=False)
    layout = make_layout("hybrid", SHAPE)
    engine = TransferEngine(pool, arena, layout, load_thread=True)
    pages = pool.allocate(5)
    job = TransferJob((0, 0), HostPlacement([arena.allocate(size) for size in layout.extent_elements(5)], 5), pages)
    release = threading.Event()
    original = layout.load_layers

    def gated(*args, **kwargs):
        release.wait(timeout=10)
        return original(*args, **kwargs)

    layout.load_layers = gated
    handle = engine.load([job])
    assert handle.issued is not None and not handle.done(), "done before the thread issued anything"
    release.set()
    handle.wait_layer(SHAPE.layers - 1, [])
    assert handle.done()

    def broken(*args, **kwargs):
        raise RuntimeError("copy engine on fire")

    layout.load_layers = broken
    failing = engine.load([job])
    with pytest.raises(RuntimeError, match="issuing host->GPU loads failed"):
        failing.wait_layer(0, [])
    with pytest.raises(RuntimeError, match="copy engine on fire"):
        engine.finish_issuing()
