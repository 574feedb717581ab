"""SGMV: LoRA over segments of rows that share an adapter (prefill-like batches).

    for each segment (rows, slot), for each slice i (columns c_i = starts[i]:starts[i+1]):
        y[rows, c_i] += scale[slot, i] * (x[rows] @ A_i[slot]^T) @ B_i[slot]^T

A slice is one projection of a fused group (q|k|v: three slices; o_proj: one). One shrink
call computes every slice's x @ A_i^T, one expand call adds every slice's delta into its
own columns of y; neither reads the zeros a block-diagonal product would.

Shapes (S = num_slots, R = max_rank, N = num_slices, T = num_tokens), all in `LoraBuffers`:
    x             [T, in_features]        activations (rows may be strided; columns contiguous)
    y             [T, sum(out_i)]         updated in place; rows in no segment are left alone
    lora_a        [S, R * N, in_features] A_i = lora_a[:, i::N] (rank-major)
    lora_b        [S, R, sum(out_i)]      B_i^T = lora_b[:, :, starts[i] : starts[i+1]] (rank-major)
    scale         [S, N] fp32             alpha / r (or the rsLoRA scale) per slot and slice
    ranks         [S, N] int32            rank per slot and slice; 0: the slice adds nothing
    slice_starts  [N + 1] int32           first output column of each slice, then the total
    batch         LoraBatch               sorted rows and the segment table

Ranks below max_rank: buffers are sized for max_rank, so a rank-r adapter pays
(R - r) / R of its slot's memory as padding (rank 8 in a max-rank-64 buffer: 7/8 of it).
What it pays in compute depends on the path:
  - Triton (both kernels): every load is masked at r < rank, so padding is never read and
    memory traffic scales with the actual rank; the tile is still BLOCK_R =
    next_power_of_2(R) wide, so the arithmetic is that of rank R (LoRA is memory-bound,
    and traffic is what the masking saves).
  - torch, grouped (`sgmv_torch`): one shrink over the slot's rank-major A rows below
    its largest slice rank, expands sliced to each rank.
  - torch, over slot blocks (`blocked_torch`, picked for steps with many adapters and
    few rows each): computes N x (the largest rank among the step's slots) columns and
    zeroes those past each slot's rank, in exchange for a fixed number of ops.
Padding contents never change a result, but must be finite for the torch paths
(0 * inf is NaN); `LoraBuffers` keeps them zero.

The Triton path runs two kernels: shrink writes scale * x @ A_i^T into an fp32 [T, N * R]
intermediate (grid: segment, row tile, slice), expand adds each slice's block times B_i^T
into its columns of y (grid: segment, row tile, slice x column tile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.checks import check_lora_args
from lorafleet.kernels.triton_support import jit, tl, triton

_BLOCK_M = 16  # rows per tile; 16 is tl.dot's minimum
_BLOCK_K = 64
_BLOCK_N = 64


@jit
def _sgmv_shrink_kernel(
    # pointers
    x_ptr, a_ptr, scale_ptr, ranks_ptr, shrunk_ptr,
    token_order_ptr, seg_starts_ptr, seg_lengths_ptr, seg_slots_ptr,
    # sizes
    in_features, max_rank, num_slices,
    # strides (in elements; innermost strides are 1)
    stride_xm, stride_as, stride_ar, stride_sm,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Program (segment, row tile, slice). Exit early past the segment's end or when this
    # slot leaves the slice empty.
    seg = tl.program_id(0)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    sl = tl.program_id(2)
    seg_len = tl.load(seg_lengths_ptr + seg)
    if tl.program_id(1) * BLOCK_M >= seg_len:
        return
    slot = tl.load(seg_slots_ptr + seg).to(tl.int64)  # slot * stride can pass 2**31
    rank = tl.minimum(tl.load(ranks_ptr + slot * num_slices + sl), max_rank)
    if rank == 0:
        return
    # Rows of this tile, gathered through the sorted order.
    m_mask = m < seg_len
    rows = tl.load(token_order_ptr + tl.load(seg_starts_ptr + seg) + m, mask=m_mask, other=0)
    r = tl.arange(0, BLOCK_R)
    r_mask = r < rank
    a_base = a_ptr + slot * stride_as + sl * stride_ar  # rank 0 of the slice (rank-major)
    # acc[m, r] = sum_k x[row m, k] * A_sl[slot, r, k], in fp32.
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < in_features
        x = tl.load(x_ptr + rows[:, None] * stride_xm + k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        a = tl.load(a_base + r[:, None] * (num_slices * stride_ar) + k[None, :],
                    mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(x, tl.trans(a), input_precision=DOT_PRECISION)
    # Scale here so expand is a plain product.
    acc *= tl.load(scale_ptr + slot * num_slices + sl)
    tl.store(shrunk_ptr + rows[:, None] * stride_sm + sl * max_rank + r[None, :], acc,
             mask=m_mask[:, None] & r_mask[None, :])


@jit
def _sgmv_expand_kernel(
    # pointers
    shrunk_ptr, b_ptr, ranks_ptr, y_ptr, slice_starts_ptr,
    token_order_ptr, seg_starts_ptr, seg_lengths_ptr, seg_slots_ptr,
    # sizes
    max_rank, num_slices, num_col_tiles,
    # strides (in elements; innermost strides are 1)
    stride_sm, stride_bs, stride_br, stride_ym,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Program (segment, row tile, slice x column tile), same early exits as shrink, and
    # past the slice's last column.
    seg = tl.program_id(0)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    sl = tl.program_id(2) // num_col_tiles
    n0 = (tl.program_id(2) % num_col_tiles) * BLOCK_N
    seg_len = tl.load(seg_lengths_ptr + seg)
    if tl.program_id(1) * BLOCK_M >= seg_len:
        return
    col0 = tl.load(slice_starts_ptr + sl)
    out_features = tl.load(slice_starts_ptr + sl + 1) - col0
    if n0 >= out_features:
        return
    slot = tl.load(seg_slots_ptr + seg).to(tl.int64)  # slot * stride can pass 2**31
    rank = tl.minimum(tl.load(ranks_ptr + slot * num_slices + sl), max_rank)
    if rank == 0:
        return
    m_mask = m < seg_len
    rows = tl.load(token_order_ptr + tl.load(seg_starts_ptr + seg) + m, mask=m_mask, other=0)
    r = tl.arange(0, BLOCK_R)
    r_mask = r < rank
    n = n0 + tl.arange(0, BLOCK_N)
    n_mask = n < out_features
    # delta[m, n] = sum_r shrunk[row m, sl, r] * lora_b[slot, r, col0 + n], in fp32.
    shrunk = tl.load(shrunk_ptr + rows[:, None] * stride_sm + sl * max_rank + r[None, :],
                     mask=m_mask[:, None] & r_mask[None, :], other=0.0)
    b = tl.load(b_ptr + slot * stride_bs + r[None, :] * stride_br + (col0 + n[:, None]),
                mask=n_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
    delta = tl.dot(shrunk, tl.trans(b), input_precision=DOT_PRECISION)
    # y[:, col0 + n] += delta, added in fp32 and rounded once.
    y_ptrs = y_ptr + rows[:, None] * stride_ym + col0 + n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (y + delta).to(y_ptr.dtype.element_ty), mask=mask)


def sgmv_triton(y, x, buffers: LoraBuffers, *, batch: LoraBatch,
                is_checked: bool = False) -> None:
    """Triton SGMV: y[rows, c_i] += scale * (x[rows] @ A_i^T) @ B_i^T per segment and slice."""
    if triton is None:
        raise RuntimeError("sgmv_triton needs Triton, which is not installed")
    if not is_checked:
        check_lora_args(y, x, buffers, batch)
    if not batch.segments:
        return
    max_rank, num_slices = buffers.max_rank, buffers.num_slices
    lora_a, lora_b = buffers.lora_a, buffers.lora_b
    block_r = max(16, triton.next_power_of_2(max_rank))
    # fp32 inputs need full-precision dots; 16-bit values are exact in tf32.
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    shrunk = batch.shrunk_workspace(num_slices * max_rank, x.device)
    segment_args = (batch.token_order, batch.segment_starts, batch.segment_lengths,
                    batch.segment_slots)
    num_row_tiles = triton.cdiv(batch.max_segment_length, _BLOCK_M)
    _sgmv_shrink_kernel[(batch.num_segments, num_row_tiles, num_slices)](
        x, lora_a, buffers.scale, buffers.ranks, shrunk, *segment_args,
        buffers.in_features, max_rank, num_slices,
        x.stride(0), lora_a.stride(0), lora_a.stride(1), shrunk.stride(0),
        BLOCK_M=_BLOCK_M, BLOCK_R=block_r, BLOCK_K=_BLOCK_K, DOT_PRECISION=precision,
    )
    num_col_tiles = triton.cdiv(max(buffers.slice_sizes), _BLOCK_N)
    grid = (batch.num_segments, num_row_tiles, num_slices * num_col_tiles)
    _sgmv_expand_kernel[grid](
        shrunk, lora_b, buffers.ranks, y, buffers.slice_starts, *segment_args,
        max_rank, num_slices, num_col_tiles,
        shrunk.stride(0), lora_b.stride(0), lora_b.stride(1), y.stride(0),
        BLOCK_M=_BLOCK_M, BLOCK_R=block_r, BLOCK_N=_BLOCK_N, DOT_PRECISION=precision,
    )


def sgmv_torch(y, x, buffers: LoraBuffers, *, batch: LoraBatch,
               is_checked: bool = False) -> None:
    """Torch SGMV, same contract as `sgmv_triton`: one shrink per segment (= per adapter)
    for all slices, then one expand per live slice into its columns.

    Reads each adapter's weights once per step, at its actual ranks; costs a few small ops
    per adapter. `dispatch.py` says when it is the CPU path.
    """
    if not is_checked:
        check_lora_args(y, x, buffers, batch)
    if not batch.segments:
        return
    slot_ranks, slot_scales = buffers.slot_ranks, buffers.slot_scales
    num_slices, columns = buffers.num_slices, buffers.slice_columns
    num_rows = len(batch.token_order)
    first = batch.sorted_rows_start
    if first is not None:  # rows already grouped by slot: work on views of x and y
        xs, ys = x[first:first + num_rows], y[first:first + num_rows]
    else:
        xs = x.index_select(0, batch.token_order)
        ys = torch.zeros((num_rows, y.shape[1]), dtype=y.dtype, device=y.device)
    for start, length, slot in batch.segments:
        ranks, scales = slot_ranks[slot], slot_scales[slot]
        top = max(ranks)
        if not top:
            continue
        rows = slice(start, start + length)
        # One shrink for every slice: the rank-major A rows below the slot's top rank,
        # then slice-major [rows, N, top] so each slice's block is a plain matrix.
        shrunk = F.linear(xs[rows], buffers.lora_a[slot, :top * num_slices])
        if num_slices > 1:
            shrunk = shrunk.view(length, top, num_slices).transpose(1, 2).contiguous()
        shrunk = shrunk.view(length, num_slices, top)
        for i, rank in enumerate(ranks):
            if rank:
                ys[rows, columns[i]].addmm_(shrunk[:, i, :rank],
                                            buffers.lora_b[slot, :rank, columns[i]],
                                            alpha=scales[i])
    if first is None:
        y.index_add_(0, batch.token_order, ys)
