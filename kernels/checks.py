"""Argument checks shared by every LoRA kernel entry point (Triton launchers and torch path)."""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_lora_args(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: torch.Tensor,
    ranks: torch.Tensor,
    batch: LoraBatch,
) -> None:
    """Raises ValueError naming the first argument whose dtype, shape or layout is wrong.

    Expected: x [num_tokens, in], y [num_tokens, out] (rows may be strided, columns
    contiguous), lora_a [num_slots, max_rank, in], lora_b [num_slots, out, max_rank] (both
    contiguous, same dtype as x and y), scale fp32 [num_slots], ranks int32 [num_slots].
    """
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    for name, tensor in (("y", y), ("lora_a", lora_a), ("lora_b", lora_b)):
        if tensor.dtype != x.dtype:
            raise ValueError(f"{name} dtype {tensor.dtype} differs from x dtype {x.dtype}")
    if x.dim() != 2 or y.dim() != 2 or lora_a.dim() != 3 or lora_b.dim() != 3:
        raise ValueError("x and y must be 2-D, lora_a and lora_b 3-D")
    num_slots, max_rank, in_features = lora_a.shape
    out_features = lora_b.shape[1]
    _check_shape("x", x, (batch.num_tokens, in_features))
    _check_shape("y", y, (batch.num_tokens, out_features))
    _check_shape("lora_b", lora_b, (num_slots, out_features, max_rank))
    _check_shape("scale", scale, (num_slots,))
    _check_shape("ranks", ranks, (num_slots,))
    if scale.dtype != torch.float32 or ranks.dtype != torch.int32:
        raise ValueError(f"scale must be float32 and ranks int32, got {scale.dtype} and {ranks.dtype}")
    max_slot = batch.max_slot
    if max_slot is not None and max_slot >= num_slots:
        raise ValueError(f"batch uses slot {max_slot} but the buffers have {num_slots} slots")
    _check_layout(y, x, lora_a, lora_b, scale, ranks, batch)


def checked_ranks(ranks: torch.Tensor, max_rank: int) -> list[int]:
    """The slot ranks as Python ints; raises if one lies outside [0, max_rank]."""
    values = ranks.tolist()
    for slot, rank in enumerate(values):
        if not 0 <= rank <= max_rank:
            raise ValueError(f"ranks[{slot}] = {rank} is outside [0, max_rank={max_rank}]")
    return values


def _check_layout(y, x, lora_a, lora_b, scale, ranks, batch: LoraBatch) -> None:
    """Kernels index rows by stride and columns by 1, all on one device."""
    if (x.numel() and x.stride(1) != 1) or (y.numel() and y.stride(1) != 1):
        raise ValueError("x and y need contiguous columns (stride 1 in the last dimension)")
    if not (lora_a.is_contiguous() and lora_b.is_contiguous()):
        raise ValueError("lora_a and lora_b must be contiguous")
    devices = {t.device for t in (y, x, lora_a, lora_b, scale, ranks, batch.token_order)}
    if len(devices) != 1:
        raise ValueError(f"all tensors and the batch must be on one device, got {sorted(map(str, devices))}")


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {expected}")
