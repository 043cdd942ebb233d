"""Which torch device a command runs on, and whether cache tiers of a given size fit on this machine."""

import os
import threading

import torch

from mtbench.errors import MtbenchError
from mtbench.units import format_bytes

MEMORY_HEADROOM = 0.9  # a cache may take at most this share of the memory available now
# Triton compiles a kernel variant per 16-byte alignment of each pointer argument: views of one
# upload at data-dependent offsets would compile new variants mid-run (seconds on the GPU each).
UPLOAD_ALIGN_BYTES = 16


def available_host_memory() -> int | None:
    """Bytes of host memory available now: MemAvailable from /proc/meminfo (Linux), else the free
    physical pages (os.sysconf); None when neither is known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_cache_memory(device: torch.device, gpu_bytes: int, host_bytes: int) -> None:
    """Refuse tiers this machine cannot hold, before any is allocated. On the CPU both tiers live in
    host memory; on CUDA the GPU tier must fit the device's free memory, and the host tier, which is
    pinned (page-locked, never swapped), the host memory available now."""
    host_need = host_bytes + (gpu_bytes if device.type != "cuda" else 0)
    available = available_host_memory()
    if available is not None and host_need > MEMORY_HEADROOM * available:
        tiers = "--host-cache" + (" + --gpu-cache (both in host memory on the CPU)" if device.type != "cuda" else " (pinned)")
        raise MtbenchError(f"{tiers} {format_bytes(host_need)} does not fit: this machine has {format_bytes(available)} "
                           f"of memory available, so at most about {format_bytes(MEMORY_HEADROOM * available)} fits")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if gpu_bytes > MEMORY_HEADROOM * free:
            raise MtbenchError(f"--gpu-cache {format_bytes(gpu_bytes)} does not fit: {device} has {format_bytes(free)} free, "
                               f"so at most about {format_bytes(MEMORY_HEADROOM * free)} fits next to the model")


def resolve_device(name: str) -> torch.device:
    """torch device from a name (cpu, cuda, cuda:N, or auto: cuda when a GPU is present, else cpu);
    MtbenchError when CUDA is asked for but missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise MtbenchError(f"--device: cannot use {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtbenchError(f"--device {name}: no CUDA GPU is available on this machine (use --device cpu)")
    return device


def serve_from_one_host_thread(device: torch.device) -> None:
    """On CUDA, cut torch's CPU intra-op pool to one thread, unless OMP_NUM_THREADS asks otherwise.

    A GPU server's host work is one thread issuing kernels and copies. Torch's pool (an OpenMP thread
    per core) still wakes for the few CPU tensor ops over its grain size, and its threads then spin
    waiting for the next one. On the H200 host (16 CPUs) they kept 4-11 CPUs busy while the no-cache
    server ran. In spans the serving thread's own host work then ran 2-3x slower, with no page faults,
    preemptions or stolen time. With one thread the machine ran 1 busy CPU, and those slow batches
    were gone (reports/BENCHMARKS.md, section 13)."""
    if device.type == "cuda" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def aligned_numel(numel: int, element_size: int) -> int:
    """`numel` rounded up so the next part of a packed upload starts UPLOAD_ALIGN_BYTES-aligned."""
    step = max(1, UPLOAD_ALIGN_BYTES // element_size)
    return -(-numel // step) * step


def pack_aligned(parts: list[torch.Tensor]) -> torch.Tensor:
    """One flat tensor of `parts` (one dtype) end to end, each padded to UPLOAD_ALIGN_BYTES (see there)."""
    flat = [part.reshape(-1) for part in parts]
    padding = [aligned_numel(p.numel(), p.element_size()) - p.numel() for p in flat]
    pieces = [piece for p, pad in zip(flat, padding) for piece in (p, p.new_zeros(pad))]
    return torch.cat(pieces) if pieces else torch.empty(0)


def split_aligned(packed: torch.Tensor, numels: list[int]) -> list[torch.Tensor]:
    """The parts of a `pack_aligned` tensor (flat), each starting UPLOAD_ALIGN_BYTES-aligned."""
    element_size = packed.element_size()
    padded = [aligned_numel(n, element_size) for n in numels]
    chunks = packed.split(padded)
    return [chunk[:n] for chunk, n in zip(chunks, numels)]


class PinnedStaging:
    """Reused pinned host buffers for the replay's small per-batch host->device uploads.

    `Tensor.pin_memory()` takes a block from PyTorch's caching host allocator, and a size it has not
    served yet pins fresh memory (cudaHostAlloc), which can stall the host for milliseconds in the
    middle of a batch. Here a ring of `slots` buffers, each grown to the largest upload it carried, is
    used in turn; a slot is overwritten only once the copy that last read it completed (its event), so
    with enough slots the host never waits. Slots start at `min_bytes` (most uploads fit), so pinning
    happens during the first few batches (warm-up), not later.
    """

    def __init__(self, slots: int = 16, min_bytes: int = 8 << 20) -> None:
        self.min_bytes = min_bytes
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._events: list[torch.cuda.Event | None] = [None] * slots
        self._next = 0
        self._lock = threading.Lock()

    def upload(self, host: torch.Tensor, device: torch.device, out: torch.Tensor | None = None) -> torch.Tensor:
        """`host` copied to `device` (into `out` when given) without blocking, on the current stream."""
        if device.type != "cuda":
            return host if out is None else out.copy_(host)
        with self._lock:  # the replay's loader thread uploads too
            return self._upload(host, device, out)

    def _upload(self, host: torch.Tensor, device: torch.device, out: torch.Tensor | None) -> torch.Tensor:
        slot = self._next
        self._next = (slot + 1) % len(self._buffers)
        if self._events[slot] is not None:
            self._events[slot].synchronize()
        host = host.contiguous()
        size = host.numel() * host.element_size()
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[slot] = torch.empty(max(2 * size, self.min_bytes), dtype=torch.uint8, pin_memory=True)
        staged = buffer[:size].view(host.dtype).view(host.shape)
        staged.copy_(host)
        if out is None:
            out = staged.to(device, non_blocking=True)
        else:
            out.copy_(staged, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self._events[slot] = event
        return out


PINNED_STAGING = PinnedStaging()  # one per process, shared by the replay's main and loader threads
