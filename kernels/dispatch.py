"""`add_lora`: the one entry point the model calls for LoRA on a mixed batch."""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.bgmv import bgmv_triton
from lorafleet.kernels.sgmv import sgmv_torch, sgmv_triton
from lorafleet.kernels.triton_support import is_triton_available


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: torch.Tensor,
    ranks: torch.Tensor,
    *,
    batch: LoraBatch,
) -> None:
    """y[t] += scale[s] * (x[t] @ lora_a[s]^T) @ lora_b[s]^T for every row t with a slot s.

    In place on `y`; rows without an adapter are left alone. Shapes are those of
    `sgmv.py`. CUDA tensors go to the Triton kernels when Triton is installed (BGMV when
    `batch.is_bgmv`, SGMV otherwise); everything else goes to the torch path, which groups
    rows by adapter for both kinds of batch because that measured fastest on CPU.
    """
    if x.is_cuda and is_triton_available():
        kernel = bgmv_triton if batch.is_bgmv else sgmv_triton
        kernel(y, x, lora_a, lora_b, scale, ranks, batch=batch)
    else:
        sgmv_torch(y, x, lora_a, lora_b, scale, ranks, batch=batch)
