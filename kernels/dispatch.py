"""`add_lora`: the one entry point the model calls for LoRA on a mixed batch.

    y[t, c_i] += scale[s, i] * (x[t] @ A_i[s]^T) @ B_i[s]^T   for each row t whose adapter slot is s

and each slice i (one projection of a fused group such as q|k|v; c_i its columns of y).
Build a `LoraBatch` (kernels/batch.py) once per step from the per-row slots, keep each
(layer, projection group)'s adapters in `LoraBuffers` (kernels/buffers.py), and call
`add_lora`. SGMV/BGMV run in Triton on CUDA, in torch elsewhere (kernels/cpu/).
"""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.bgmv import bgmv_triton
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.checks import check_lora_args
from lorafleet.kernels.cpu.lora import add_lora_torch
from lorafleet.kernels.sgmv import sgmv_triton
from lorafleet.kernels.triton_support import is_triton_available


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    buffers: LoraBuffers,
    *,
    batch: LoraBatch,
    is_checked: bool = False,
) -> None:
    """y[t, c_i] += scale[s, i] * (x[t] @ A_i[s]^T) @ B_i[s]^T for every row t with a slot s
    and every slice i of the buffers (c_i: the slice's columns of y).

    In place on `y`; rows without an adapter are left alone. Shapes are those of
    `sgmv.py`; padding past a slot's rank must be finite (`LoraBuffers` keeps it zero).
    CUDA tensors go to the Triton kernels when Triton is installed (BGMV when
    `batch.is_bgmv`, SGMV otherwise); other tensors go to the faster torch path for this
    batch, as the CPU backend chooses (kernels/cpu/lora.py). `is_checked=True` skips the
    per-call checks of x, y and the batch, for callers whose rows match the batch by
    construction (the model's forward pass): they cost more than a small kernel.
    """
    if not is_checked:
        check_lora_args(y, x, buffers, batch)
    if batch.is_static and not (x.is_cuda and is_triton_available()):
        raise ValueError("a static LoRA batch runs on the Triton BGMV kernels only (CUDA)")
    if x.is_cuda and is_triton_available():
        kernel = bgmv_triton if batch.is_bgmv else sgmv_triton
        kernel(y, x, buffers, batch=batch, is_checked=True)
        return
    add_lora_torch(y, x, buffers, batch=batch)
