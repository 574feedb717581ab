"""Torch LoRA over slot blocks: one batched matmul for the shrink, one per slice for the expand.

The step's adapter rows are padded into one block of rows per slot (`LoraBatch.slot_blocks`);
then, with A_b and B_b the weights of block b's slot,

    shrunk[b] = x_blocks[b] @ A_b^T * gain_b        one bmm over every block
    y[rows of b, c_i] += shrunk[b, :, i] @ B_b,i^T   one bmm per slice i

Blocks over a slot range read the buffers through views (no copy); gathered blocks copy
the used slots' weights first. The op count is fixed (about 6 + 1 per slice) whatever the
number of adapters, where the grouped path (`sgmv_torch`) runs 1 + slices ops per adapter:
at 32 adapters in a decode step that is the difference between a handful of ops and a
hundred per projection group. Its cost grows with the padded rows (blocks x rows per
block), so batches with one long segment (a prefill) among single rows stay grouped
(`dispatch.py` decides). It computes all max_rank columns of every slice and zeroes
those past each rank with the gain, so padding must be finite (`LoraBuffers` keeps it
zero).
"""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.checks import check_lora_args


def blocked_torch(y: torch.Tensor, x: torch.Tensor, buffers: LoraBuffers, *,
                  batch: LoraBatch, is_checked: bool = False) -> None:
    """Same contract as `sgmv_torch`, computed over `batch.slot_blocks`."""
    if not is_checked:
        check_lora_args(y, x, buffers, batch)
    blocks = batch.slot_blocks
    if blocks is None:
        return
    if blocks.slot_range is not None:
        first, end = blocks.slot_range
        lora_a, lora_b = buffers.lora_a[first:end], buffers.lora_b[first:end]
        ranks, scale = buffers.ranks[first:end], buffers.scale[first:end]
    else:
        slots = blocks.block_slots
        lora_a, lora_b = buffers.lora_a.index_select(0, slots), buffers.lora_b.index_select(0, slots)
        ranks, scale = buffers.ranks.index_select(0, slots), buffers.scale.index_select(0, slots)
    max_rank = buffers.max_rank
    x_blocks = x.index_select(0, blocks.source_rows).view(blocks.num_blocks, blocks.block_rows, -1)
    shrunk = torch.bmm(x_blocks, lora_a.transpose(1, 2))
    # gain[b, i*R + r] = scale[b, i] for r < rank[b, i], else 0: scales, drops padding.
    is_live = torch.arange(max_rank, device=x.device) < ranks[:, :, None]
    gain = torch.where(is_live, scale[:, :, None], 0.0).flatten(1).to(x.dtype)
    shrunk.mul_(gain.unsqueeze(1))
    deltas = [torch.bmm(shrunk[:, :, i * max_rank:(i + 1) * max_rank],
                        lora_b[:, columns].transpose(1, 2))
              for i, columns in enumerate(buffers.slice_columns)]
    delta = (deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=2)).flatten(0, 1)
    if not blocks.is_dense:
        delta = delta.index_select(0, blocks.padded_rows)
    y.index_add_(0, batch.token_order, delta)
