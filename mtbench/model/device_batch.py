"""Move a `RequestBatch` built on the host to the GPU in ONE pinned, non-blocking copy.

`build_batch(..., device)` would copy each of its ~20 index tensors from pageable memory, and every
such copy makes the host wait until the GPU has drained its stream; in the replay loop that would
serialise the next batch's host work with the previous batch's device work. Here every tensor of
the batch is packed into one pinned buffer per dtype, copied once, and split back into views.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from mtbench.device import PINNED_STAGING, pack_aligned, split_aligned
from mtbench.model.batch import GroupFeatures, RequestBatch


def _tensor_slots(batch: RequestBatch) -> list[tuple[str, str | None, torch.Tensor]]:
    """(field, GroupFeatures sub-field or None, tensor) of every tensor the batch holds."""
    slots = []
    for field in fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor):
            slots.append((field.name, None, value))
        elif isinstance(value, GroupFeatures):
            slots += [(field.name, sub.name, getattr(value, sub.name)) for sub in fields(value)]
    return slots


def batch_to_device(batch: RequestBatch, device: torch.device) -> RequestBatch:
    """`batch` with every tensor on `device` (the batch itself when it is already there or on the CPU)."""
    if device.type != "cuda" or batch.device == device:
        return batch
    slots = _tensor_slots(batch)
    moved: dict[int, torch.Tensor] = {}
    for dtype in {tensor.dtype for _, _, tensor in slots}:
        group = [(index, tensor) for index, (_, _, tensor) in enumerate(slots) if tensor.dtype == dtype]
        packed = PINNED_STAGING.upload(pack_aligned([tensor for _, tensor in group]), device)
        pieces = split_aligned(packed, [tensor.numel() for _, tensor in group])
        for (index, tensor), piece in zip(group, pieces):
            moved[index] = piece.view(tensor.shape)
    changes: dict[str, object] = {}
    for index, (name, sub, _) in enumerate(slots):
        if sub is None:
            changes[name] = moved[index]
        else:
            group = changes.get(name, getattr(batch, name))
            changes[name] = replace(group, **{sub: moved[index]})
    return replace(batch, **changes)
