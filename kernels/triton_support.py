"""Shared checks for the Triton kernels: where they can run (CUDA, or the CPU through TRITON_INTERPRET=1)."""

from __future__ import annotations

import torch
from triton.runtime.interpreter import InterpretedFunction


def check_triton_device(t: torch.Tensor, kernel: object) -> None:
    """Raise a clear error when `kernel` cannot run on `t`'s device.

    Triton decides at decoration (import) time whether a kernel is compiled or interpreted, so CPU
    tensors need TRITON_INTERPRET=1 set before the kernel modules are imported.
    """
    interpreted = isinstance(kernel, InterpretedFunction)
    if (t.is_cuda and not interpreted) or (t.device.type == "cpu" and interpreted):
        return
    raise RuntimeError(
        f"this Triton kernel is {'interpreted' if interpreted else 'compiled'} and cannot run on {t.device}: "
        "use CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before `kernels` is imported"
    )
