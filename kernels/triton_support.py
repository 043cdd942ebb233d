"""Shared checks for the Triton kernels: where they can run (CUDA, or the CPU through TRITON_INTERPRET=1)."""

from __future__ import annotations

import torch
from triton.runtime.interpreter import InterpretedFunction


def triton_device_problem(
    device: torch.device, pinned: bool, interpreted: bool, peer_device: torch.device | None = None,
) -> Exception | None:
    """The error to raise for an operand on `device` (pinned or not) of a kernel, or None when it can run.

    An interpreted kernel needs CPU operands; a compiled one needs CUDA operands, except that a pinned
    CPU operand is accepted when its `peer` operand is on CUDA: CUDA dereferences pinned host memory
    directly through unified virtual addressing (zero-copy), which pageable memory does not allow.
    """
    if interpreted:
        return None if device.type == "cpu" else RuntimeError(
            f"this Triton kernel is interpreted and cannot run on {device}: "
            "unset TRITON_INTERPRET before `kernels` is imported to compile it for CUDA"
        )
    if device.type == "cuda":
        return None
    if device.type == "cpu" and peer_device is not None and peer_device.type == "cuda":
        return None if pinned else ValueError(
            "a CPU tensor given to a CUDA Triton kernel must be in pinned memory (tensor.pin_memory()) "
            "so CUDA can access it in place; pageable host memory cannot be read by a kernel"
        )
    return RuntimeError(
        f"this Triton kernel is compiled and cannot run on {device}: "
        "use CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before `kernels` is imported"
    )


def check_triton_device(t: torch.Tensor, kernel: object, peer: torch.Tensor | None = None) -> None:
    """Raise a clear error when `kernel` cannot run on `t`'s device (see `triton_device_problem`).

    Triton decides at decoration (import) time whether a kernel is compiled or interpreted, so CPU
    tensors need TRITON_INTERPRET=1 set before the kernel modules are imported. `peer` is the other
    operand of a kernel that may read or write a pinned host tensor in place (zero-copy).
    """
    pinned = t.device.type == "cpu" and t.is_pinned()
    problem = triton_device_problem(t.device, pinned, isinstance(kernel, InterpretedFunction), peer.device if peer is not None else None)
    if problem is not None:
        raise problem
