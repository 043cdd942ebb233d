"""The host extent allocator places every extent exactly where a plain scan of its free list would
(first fit and best fit), through allocations, runs of equal extents, frees and batched frees."""

import random

import pytest

from mtbench.cache.extents import ExtentAllocator


class ScanAllocator:
    """The reference: one list of free (start, length) by address, scanned whole per allocation."""

    def __init__(self, total: int, fit: str, alignment: int) -> None:
        self.free_list = [(0, total)]
        self.fit, self.alignment = fit, alignment
        self.allocated: dict[int, int] = {}

    def allocate(self, length: int) -> int | None:
        need = -(-length // self.alignment) * self.alignment
        fitting = [(size, i) for i, (_, size) in enumerate(self.free_list) if size >= need]
        if not fitting:
            return None
        index = fitting[0][1] if self.fit == "first" else min(fitting)[1]
        start, size = self.free_list[index]
        if size == need:
            del self.free_list[index]
        else:
            self.free_list[index] = (start + need, size - need)
        self.allocated[start] = need
        return start

    def free(self, start: int) -> None:
        length = self.allocated.pop(start)
        spans = sorted(self.free_list + [(start, length)])
        self.free_list = [spans[0]]
        for begin, size in spans[1:]:
            last_start, last_size = self.free_list[-1]
            if last_start + last_size == begin:
                self.free_list[-1] = (last_start, last_size + size)
            else:
                self.free_list.append((begin, size))


@pytest.mark.parametrize("fit", ["first", "best"])
@pytest.mark.parametrize("seed", range(4))
def test_placements_equal_a_scan_of_the_free_list(fit: str, seed: int) -> None:
    rng = random.Random(seed)
    total, alignment = 1 << 16, 4
    alloc, reference = ExtentAllocator(total, fit=fit, alignment=alignment), ScanAllocator(total, fit, alignment)
    live: list[int] = []
    most_free = 0
    for step in range(3000):
        action = rng.random()
        grow = step % 1000 < 600  # phases of filling and draining: many free extents, blocks split and merge
        if live and action < (0.3 if grow else 0.6):
            start = live.pop(rng.randrange(len(live)))
            alloc.free(start)
            reference.free(start)
        elif live and action < (0.4 if grow else 0.75):
            batch = [live.pop(rng.randrange(len(live))) for _ in range(min(len(live), rng.randint(1, 12)))]
            alloc.free_all(batch)
            for start in batch:
                reference.free(start)
        elif action < 0.8:
            length = rng.randint(1, 160)
            start = alloc.allocate(length)
            assert start == reference.allocate(length)
            live += [] if start is None else [start]
        else:
            lengths = [rng.choice([8, 12, 40, 130]) for _ in range(rng.randint(1, 3))] * rng.randint(1, 8)
            lengths.sort(key=lambda _: rng.random() < 0.3)  # runs of equal lengths, and breaks between them
            placed = alloc.place(lengths)
            expected = [reference.allocate(length) for length in lengths]
            if None in expected:
                for start in expected:
                    if start is not None:
                        reference.free(start)
                assert placed is None
            else:
                assert placed == expected
                live += placed
        assert alloc.free_extents() == reference.free_list
        alloc.check_invariants()
        most_free = max(most_free, len(reference.free_list))
    assert most_free > 4 * ExtentAllocator.BLOCK, "too few free extents to split blocks"
    alloc.free_all(live)
    assert alloc.free_extents() == [(0, total)] and alloc.used_total == 0


def test_free_all_refuses_a_double_free_and_changes_nothing() -> None:
    alloc = ExtentAllocator(100)
    starts = alloc.place([10, 10, 10])
    alloc.free(starts[1])
    with pytest.raises(RuntimeError, match="double free"):
        alloc.free_all(starts)
    assert alloc.free_extents() == [(10, 10), (30, 70)]
    alloc.free_all([starts[2], starts[0]])
    assert alloc.free_extents() == [(0, 100)]
