"""The torch LoRA paths on a CPU: which one a batch takes, and on how many threads.

`add_lora_torch` is what `kernels/dispatch.add_lora` runs off CUDA (and on CUDA without
Triton): the grouped path (`sgmv_torch`) or the slot-block path (`blocked_torch`), chosen
per call by a cost model, with the small ops of a decode batch on one thread unless the
process's OpenMP threads spin for them (LORA_THREADS_ENV).
"""

from __future__ import annotations

import functools
import os

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.cpu.blocked import blocked_torch, step_rank
from lorafleet.kernels.sgmv import sgmv_torch

# CPU cost model of the two torch paths, in microseconds, fitted by least squares (on
# relative error) to benchmarks/lora_kernels.py on this 2-core CPU: fp32, rank 16, one
# thread (as `add_lora` runs them), the four projection groups the model calls (q|k|v, o,
# gate|up, down) of the tiny (hidden 256) and small (hidden 1024) Llama shapes, 1-128
# rows, 1-32 adapters, rows in adapter runs and shuffled; 400 cases. With R = the
# step's top rank (the largest among its adapters, `step_rank`), N = slices, K = adapters
# in the step, n = rows with an adapter, in/out the group's sizes:
#   grouped (sgmv_torch) = 12.5 + 7.7 K (1 + N) + 0.37e-3 K R (N in + out)
#                          + 1.05e-3 n (in + out)
#       ~8 us per op: one shrink plus one expand per slice for each adapter, then the
#       adapters' weights and the rows' activations streamed once;
#   blocked (blocked_torch) = 16.7 + 27.2 N + 0.30e-3 B R (N in + out) + 2.26e-3 P (in + out)
#                             [+ 0.15e-3 B R (N in + out) when the slots are gathered]
#       a fixed handful of ops whatever K: B = slot blocks, P = padded rows (B x the
#       longest segment), so its activations cost grows with the padding. The fit saw
#       slots in one range only; the gather term is the copy measured apart (8 adapters
#       of hidden 1024, q|k|v: gathered 0.52 ms against 0.43 over a range).
# The model picks the faster path in 93% of the cases, losing 1.4% of the total time
# against always picking right (a fixed "4+ adapters and little padding" rule lost 8%).
# Gathered slot blocks are never picked past 1M gathered elements: copying larger
# weights measured 2-4x slower per element (32 adapters of hidden 1024: 2.2 ms for the
# q|k|v copy alone), and the grouped path reads them in place.
_GROUPED_FIXED_US = 12.5
_GROUPED_US_PER_OP = 7.7
_GROUPED_US_PER_WEIGHT = 0.37e-3
_GROUPED_US_PER_ACTIVATION = 1.05e-3
_BLOCKED_FIXED_US = 16.7
_BLOCKED_US_PER_SLICE = 27.2
_BLOCKED_US_PER_WEIGHT = 0.30e-3
_BLOCKED_US_PER_ACTIVATION = 2.26e-3
_GATHER_US_PER_WEIGHT = 0.15e-3
_GATHER_MAX_ELEMENTS = 1 << 20
# The torch path's ops are small (a few rows by rank 16). Where OpenMP's idle threads sleep
# at once, or spin only briefly (libgomp cuts the spin to ~100 iterations once its threads
# outnumber the CPUs, as in any process where two threads ran parallel torch ops), each op
# spread over the threads pays a wake-up that costs more than the op, so they run on one
# thread: on the 2-core CPU, tiny Llama, 32 sequences, 8 adapters went from 462 to 1,149
# decode tok/s, 32 adapters from 846 to 1,081; the demo model's shape, 32 adapters, decode
# step 168-177 ms against 210-223 on both threads (OMP_WAIT_POLICY=PASSIVE). In the engine
# process of `lorafleet serve --cpu-thread-wait spin` (one OpenMP team whose threads spin;
# it is started with LORA_THREADS_ENV=all) the other thread is awake and both win: 137-146
# ms against 151-165 at 32 adapters, equal or better at 2 and 8. Batches with more rows
# than this (prefill) keep every thread.
LORA_THREADS_ENV = "LORAFLEET_CPU_LORA_THREADS"
_ONE_THREAD_MAX_ROWS = 256


def add_lora_torch(y: torch.Tensor, x: torch.Tensor, buffers: LoraBuffers, *,
                   batch: LoraBatch) -> None:
    """`add_lora` by the faster torch path for this batch (arguments already checked)."""
    kernel = blocked_torch if prefers_slot_blocks(batch, buffers) else sgmv_torch
    num_threads = torch.get_num_threads()
    if (x.is_cuda or num_threads == 1 or len(batch.token_order) > _ONE_THREAD_MAX_ROWS
            or uses_every_thread()):
        kernel(y, x, buffers, batch=batch, is_checked=True)
        return
    torch.set_num_threads(1)
    try:
        kernel(y, x, buffers, batch=batch, is_checked=True)
    finally:
        torch.set_num_threads(num_threads)


@functools.cache
def uses_every_thread() -> bool:
    """Whether LoRA's small ops run on every thread in this process (LORA_THREADS_ENV=all:
    the engine process whose threads spin), not on one; read once."""
    return os.environ.get(LORA_THREADS_ENV, "one") == "all"


def prefers_slot_blocks(batch: LoraBatch, buffers: LoraBuffers) -> bool:
    """Whether the torch path should run over slot blocks rather than group by adapter."""
    blocks = batch.slot_blocks
    if blocks is None:
        return False
    per_slot = step_rank(batch, buffers) * (buffers.num_slices * buffers.in_features
                                            + buffers.out_features)
    weights = blocks.num_blocks * per_slot
    if blocks.slot_range is None and weights > _GATHER_MAX_ELEMENTS:
        return False
    activations = buffers.in_features + buffers.out_features
    num_rows, num_adapters = len(batch.token_order), batch.num_segments
    blocked_us = (_BLOCKED_FIXED_US + _BLOCKED_US_PER_SLICE * buffers.num_slices
                  + _BLOCKED_US_PER_WEIGHT * weights
                  + _BLOCKED_US_PER_ACTIVATION * blocks.num_padded_rows * activations)
    if blocks.slot_range is None:
        blocked_us += _GATHER_US_PER_WEIGHT * weights
    grouped_us = (_GROUPED_FIXED_US + _GROUPED_US_PER_OP * num_adapters * (1 + buffers.num_slices)
                  + _GROUPED_US_PER_WEIGHT * num_adapters * per_slot
                  + _GROUPED_US_PER_ACTIVATION * num_rows * activations)
    return blocked_us < grouped_us
