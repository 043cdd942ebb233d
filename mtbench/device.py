"""Which torch device a command runs on."""

import torch

from mtbench.errors import MtbenchError


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
