"""Torch LoRA over slot blocks: one batched matmul for the shrink, one per slice for the expand.

The step's adapter rows are padded into one block of rows per slot (`LoraBatch.slot_blocks`);
then, with A_b and B_b the weights of block b's slot,

    shrunk[b] = (A_b @ x_blocks[b]^T)^T * gain_b    one bmm over every block
    y[rows of b, c_i] += shrunk[b, :, i] @ B_b,i^T   one bmm per slice i

Blocks over a slot range read the buffers through views (no copy); gathered blocks copy
the used slots' weights first. The op count is fixed (about 6 + 1 per slice) whatever the
number of adapters, where the grouped path (`sgmv_torch`) runs 1 + slices ops per adapter:
at 32 adapters in a decode step that is the difference between a handful of ops and a
hundred per projection group. Its cost grows with the padded rows (blocks x rows per
block), so batches with one long segment (a prefill) among single rows stay grouped
(`dispatch.py` decides). Every block computes the step's top rank (the largest among
its slots: rank-major A makes that the first top x N rows) and the gain zeroes the
columns past each slot's own rank, so padding must be finite (`LoraBuffers` keeps it
zero). A worker sized for rank 64 serving rank-16 adapters computes rank 16.
"""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.checks import check_lora_args


def step_rank(batch: LoraBatch, buffers: LoraBuffers) -> int:
    """The largest slice rank among the adapters the step's rows use (0: none adds)."""
    ranks = buffers.slot_ranks
    return max((max(ranks[slot]) for _, _, slot in batch.segments), default=0)


def blocked_torch(y: torch.Tensor, x: torch.Tensor, buffers: LoraBuffers, *,
                  batch: LoraBatch, is_checked: bool = False) -> None:
    """Same contract as `sgmv_torch`, computed over `batch.slot_blocks`."""
    if not is_checked:
        check_lora_args(y, x, buffers, batch)
    blocks = batch.slot_blocks
    if blocks is None:
        return
    # Every block computes the top rank of the step's slots (idle slots of a range are
    # computed for nothing and never read back): rank-major A rows below it, all slices.
    top = step_rank(batch, buffers)
    if not top:
        return
    num_slices = buffers.num_slices
    lora_a, lora_b = buffers.lora_a[:, :top * num_slices], buffers.lora_b[:, :top]
    gain = buffers.gain_upto(top, x.dtype)
    if blocks.slot_range is not None:
        first, end = blocks.slot_range
        lora_a, lora_b, gain = lora_a[first:end], lora_b[first:end], gain[first:end]
    else:  # copies only the rows and columns below the top rank
        slots = blocks.block_slots
        lora_a, lora_b = lora_a.index_select(0, slots), lora_b.index_select(0, slots)
        gain = gain.index_select(0, slots)
    # Rows already in block order (consecutive, no padding: every row its own slot's, in
    # slot order) are views of x and y; otherwise they are gathered and scattered back.
    row_start = batch.sorted_rows_start if blocks.is_dense else None
    if row_start is not None:
        rows = slice(row_start, row_start + blocks.num_padded_rows)
        x_blocks = x[rows].reshape(blocks.num_blocks, blocks.block_rows, -1)
    else:
        x_blocks = x.index_select(0, blocks.source_rows).view(blocks.num_blocks,
                                                               blocks.block_rows, -1)
    # A_b @ x_b^T, not x_b @ A_b^T: the same products, but MKL's batched matmul streams A
    # at twice the rate this way (one thread, 32 slots of the demo model's q|k|v: 23 GB/s
    # against 11), and reading A is half of what this call costs.
    shrunk = torch.bmm(lora_a, x_blocks.transpose(1, 2))
    # Rank-major rows (r * N + i) to slice-major [blocks, rows, N, top], times the gain
    # (scales, drops padding).
    ranked = shrunk.view(blocks.num_blocks, top, num_slices, blocks.block_rows).permute(0, 3, 2, 1)
    shrunk = torch.empty_like(ranked, memory_format=torch.contiguous_format)
    torch.mul(ranked, gain.unsqueeze(1), out=shrunk)
    deltas = [torch.bmm(shrunk[:, :, i], lora_b[:, :, columns])
              for i, columns in enumerate(buffers.slice_columns)]
    delta = (deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=2)).flatten(0, 1)
    if row_start is not None:
        y[rows].add_(delta)
        return
    if not blocks.is_dense:
        delta = delta.index_select(0, blocks.padded_rows)
    y.index_add_(0, batch.token_order, delta)
