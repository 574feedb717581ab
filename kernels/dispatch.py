"""`add_lora`: the one entry point the model calls for LoRA on a mixed batch."""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.bgmv import bgmv_torch, bgmv_triton
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.sgmv import sgmv_torch, sgmv_triton
from lorafleet.kernels.triton_support import is_triton_available

# CPU cost model of the two torch paths, in microseconds, fitted by least squares (on
# relative error) to benchmarks/lora_kernels.py on this 2-core CPU: fp32, rank 16, 2
# threads, the four projection groups the model calls (q|k|v, o, gate|up, down) of the
# tiny (hidden 256) and small (hidden 1024) Llama shapes, 1-128 rows, 1-32 adapters.
# With R = max_rank, N = slices, K = adapters in the step, n = rows with an adapter:
#   grouped (sgmv_torch)  = 9 + 8.3 K (1 + N) + 0.28e-3 K R (N in + out)
#                           + 0.73e-3 n (in + out)
#       ~8 us per op: one shrink plus one expand per slice for each adapter, then the
#       adapters' weights and the rows' activations streamed once;
#   gathered (bgmv_torch) = 17 + 42 N + 0.49e-3 n R (N in + out)
#       a fixed handful of ops (an expand and an index_add per slice) over weights
#       gathered per row, whose size is the last term.
# Gathering is never picked past 1M gathered elements: there its temporaries (4 MB and up)
# measured slower than the model says, and prefill-sized batches are grouped anyway.
# The K = 8 question (the old per-projection model picked grouped for a decode step of 32
# rows on 8 adapters, and gathering had measured faster end to end, 527 vs 350 tok/s).
# With the fused groups, per call on the tiny model (ms, grouped vs gathered): q|k|v 0.51
# vs 1.53 (one thread: 0.28 vs 0.37), o 0.22 vs 0.17, gate|up 0.37 vs 0.59, down 0.26 vs
# 0.33; end to end (tiny, 32 sequences, decode tok/s, median of 5 alternating runs at load
# average 6-7): 8 adapters grouped 576, gathered 498, this model 577; 32 adapters grouped
# 522, gathered 476, this model (gathers) 507, all three within the runs' spread (single
# runs 361-809); small model, 8 adapters: grouped 129, gathered 101, this model 128;
# 32: 124, 107, 122. So the model keeps grouping at 8 adapters, now the faster path end to
# end, and gathers from about 16 adapters on the tiny shape, where it is per call.
_GROUPED_FIXED_US = 9.0
_GROUPED_US_PER_OP = 8.3
_GROUPED_US_PER_WEIGHT = 0.28e-3
_GROUPED_US_PER_ACTIVATION = 0.73e-3
_GATHER_FIXED_US = 17.0
_GATHER_US_PER_SLICE = 42.0
_GATHER_US_PER_ELEMENT = 0.49e-3
_GATHER_MAX_ELEMENTS = 1 << 20
# The torch path's ops are small (a few rows by rank 16): spread over OpenMP threads, each
# pays a wake-up of the other threads that costs more than the op. Measured on the 2-core
# CPU (tiny Llama, 32 sequences decoding, lora_decode, quiet machine, median of 3): with
# the LoRA ops on one thread and the base model's matmuls on two, 8 adapters went from 462
# to 1,149 decode tok/s and 32 adapters from 846 to 1,081 (base 2,079 unchanged). Batches
# with more rows than this (prefill) keep every thread.
_ONE_THREAD_MAX_ROWS = 256


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
        kernel(y, x, buffers, batch=batch, is_checked=is_checked)
        return
    kernel = bgmv_torch if prefers_gathered_weights(batch, buffers) else sgmv_torch
    num_threads = torch.get_num_threads()
    if x.is_cuda or num_threads == 1 or len(batch.token_order) > _ONE_THREAD_MAX_ROWS:
        kernel(y, x, buffers, batch=batch, is_checked=is_checked)
        return
    torch.set_num_threads(1)
    try:
        kernel(y, x, buffers, batch=batch, is_checked=is_checked)
    finally:
        torch.set_num_threads(num_threads)


def prefers_gathered_weights(batch: LoraBatch, buffers: LoraBuffers) -> bool:
    """Whether the torch path should gather per-row weights rather than group by adapter."""
    num_slices, in_features = buffers.num_slices, buffers.in_features
    per_row = buffers.max_rank * (num_slices * in_features + buffers.out_features)
    num_rows, num_adapters = len(batch.token_order), batch.num_segments
    num_elements = num_rows * per_row
    if num_elements > _GATHER_MAX_ELEMENTS:
        return False
    gather_us = (_GATHER_FIXED_US + _GATHER_US_PER_SLICE * num_slices
                 + _GATHER_US_PER_ELEMENT * num_elements)
    grouped_us = (_GROUPED_FIXED_US + _GROUPED_US_PER_OP * num_adapters * (1 + num_slices)
                  + _GROUPED_US_PER_WEIGHT * num_adapters * per_row
                  + _GROUPED_US_PER_ACTIVATION * num_rows * (in_features + buffers.out_features))
    return gather_us < grouped_us
