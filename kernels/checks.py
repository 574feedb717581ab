"""Per-call argument checks shared by every LoRA kernel entry point (Triton and torch).

The buffers check themselves once, when constructed (`LoraBuffers.__post_init__`); a call
only checks the activations and the batch against them.
"""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers


def check_lora_args(y: torch.Tensor, x: torch.Tensor, buffers: LoraBuffers,
                    batch: LoraBatch) -> None:
    """Raises ValueError naming the first argument whose dtype, shape or layout is wrong.

    Expected: x [num_tokens, in_features], y [num_tokens, out_features] (all slices; rows
    may be strided, columns contiguous), both of the buffers' dtype and device; every slot
    the batch uses exists.
    """
    dtype = buffers.lora_a.dtype
    for name, tensor in (("x", x), ("y", y)):
        if tensor.dtype != dtype:
            raise ValueError(f"{name} dtype {tensor.dtype} differs from the buffers' {dtype}")
        if tensor.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got {tensor.dim()}-D")
    _check_shape("x", x, (batch.num_tokens, buffers.in_features))
    _check_shape("y", y, (batch.num_tokens, buffers.out_features))
    max_slot = batch.max_slot
    if max_slot is not None and max_slot >= buffers.num_slots:
        raise ValueError(f"batch uses slot {max_slot} but the buffers have "
                         f"{buffers.num_slots} slots")
    if (x.numel() and x.stride(1) != 1) or (y.numel() and y.stride(1) != 1):
        raise ValueError("x and y need contiguous columns (stride 1 in the last dimension)")
    devices = {t.device for t in (y, x, buffers.lora_a, batch.token_order)}
    if len(devices) != 1:
        raise ValueError(f"all tensors and the batch must be on one device, got "
                         f"{sorted(map(str, devices))}")


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {expected}")
