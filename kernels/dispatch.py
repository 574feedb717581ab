"""`add_lora`: the one entry point the model calls for LoRA on a mixed batch."""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.bgmv import bgmv_torch, bgmv_triton
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.sgmv import sgmv_torch, sgmv_triton
from lorafleet.kernels.triton_support import is_triton_available

# CPU cost model, fitted on this 2-core CPU (fp32, rank 16, hidden 64-4096, 1-128 rows,
# 1-64 adapters, 1 and 2 threads). Grouping rows by adapter (`sgmv_torch`) costs ~12 us
# of op overhead per adapter in the step. Gathering each row's weights (`bgmv_torch`)
# costs ~35 us more in fixed ops plus ~0.45 ns per gathered weight element
# (rows x max_rank x (in + out)) up to ~256K elements; past that its temporaries leave
# the cache and it turns slow and erratic (10-100x), so it is never picked there.
# Result: gathering wins for small hidden sizes with many adapters (hidden 64, 32 rows on
# 32 adapters: 99 us vs 384 us), grouping everywhere else (hidden 4096, 32 rows on 32
# adapters: 1.3 ms vs 3.6 ms). benchmarks/lora_kernels.py measures both paths.
_GROUPED_US_PER_ADAPTER = 12.0
_GATHER_EXTRA_FIXED_US = 35.0
_GATHER_US_PER_ELEMENT = 0.45e-3
_GATHER_MAX_ELEMENTS = 262_144


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
    batch by the cost model above. `is_checked=True` skips the per-call checks of x, y and
    the batch, for callers whose rows match the batch by construction (the model's forward
    pass): they cost more than a small kernel.
    """
    if x.is_cuda and is_triton_available():
        kernel = bgmv_triton if batch.is_bgmv else sgmv_triton
    else:
        kernel = bgmv_torch if prefers_gathered_weights(batch, buffers) else sgmv_torch
    kernel(y, x, buffers, batch=batch, is_checked=is_checked)


def prefers_gathered_weights(batch: LoraBatch, buffers: LoraBuffers) -> bool:
    """Whether the torch path should gather per-row weights rather than group by adapter."""
    num_elements = len(batch.token_order) * buffers.max_rank * (
        buffers.num_slices * buffers.in_features + buffers.out_features)
    if num_elements > _GATHER_MAX_ELEMENTS:
        return False
    gather_us = _GATHER_EXTRA_FIXED_US + _GATHER_US_PER_ELEMENT * num_elements
    return gather_us < _GROUPED_US_PER_ADAPTER * batch.num_segments
