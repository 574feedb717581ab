"""SGMV: LoRA over segments of rows that share an adapter (prefill-like batches).

    for each segment (rows, slot):  y[rows] += scale[slot] * (x[rows] @ A[slot]^T) @ B[slot]^T

Shapes (S = num_slots, R = max_rank, T = num_tokens):
    x        [T, in_features]        activations (rows may be strided; columns contiguous)
    y        [T, out_features]       updated in place; rows in no segment are left alone
    lora_a   [S, R, in_features]     shrink weights, one stacked buffer per (layer, projection)
    lora_b   [S, out_features, R]    expand weights
    scale    [S] fp32                alpha / r (or the rsLoRA scale) per slot
    ranks    [S] int32               actual rank per slot; 0 marks an empty slot
    batch    LoraBatch               sorted rows and the segment table

Ranks below max_rank: buffers are sized for max_rank, so a rank-r adapter pays
(R - r) / R of its slot's memory as padding (rank 8 in a max-rank-64 buffer: 7/8 of it).
What it pays in compute depends on the path:
  - Triton (both kernels): every load is masked at r < rank, so padding is never read and
    memory traffic scales with the actual rank; the tile is still BLOCK_R =
    next_power_of_2(R) wide, so the arithmetic is that of rank R (LoRA is memory-bound,
    and traffic is what the masking saves).
  - torch, grouped (`sgmv_torch`): slices A[slot, :r] and B[slot, :, :r]; no padding cost.
  - torch, gathered (`bgmv_torch`, picked for small hidden sizes): computes all R columns
    and zeroes the padded ones, paying rank-R work; cheap at the sizes where it is picked.
Padding contents never change a result, but must be finite for the gathered path
(0 * inf is NaN); `LoraBuffers` keeps them zero.

The Triton path runs two kernels: shrink writes scale * x @ A^T into an fp32 [T, R]
intermediate, expand adds that times B^T into y.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.checks import check_lora_args, checked_ranks
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
    in_features, max_rank,
    # strides (in elements; innermost strides are 1)
    stride_xm, stride_as, stride_ar, stride_sm,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Program (segment, row tile). Exit early past the segment's end or on an empty slot.
    seg = tl.program_id(0)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    seg_len = tl.load(seg_lengths_ptr + seg)
    if tl.program_id(1) * BLOCK_M >= seg_len:
        return
    slot = tl.load(seg_slots_ptr + seg).to(tl.int64)  # slot * stride can pass 2**31
    rank = tl.minimum(tl.load(ranks_ptr + slot), max_rank)
    if rank == 0:
        return
    # Rows of this tile, gathered through the sorted order.
    m_mask = m < seg_len
    rows = tl.load(token_order_ptr + tl.load(seg_starts_ptr + seg) + m, mask=m_mask, other=0)
    r = tl.arange(0, BLOCK_R)
    r_mask = r < rank
    # acc[m, r] = sum_k x[row m, k] * A[slot, r, k], in fp32.
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < in_features
        x = tl.load(x_ptr + rows[:, None] * stride_xm + k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        a = tl.load(a_ptr + slot * stride_as + r[:, None] * stride_ar + k[None, :],
                    mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(x, tl.trans(a), input_precision=DOT_PRECISION)
    # Scale here so expand is a plain product.
    acc *= tl.load(scale_ptr + slot)
    tl.store(shrunk_ptr + rows[:, None] * stride_sm + r[None, :], acc,
             mask=m_mask[:, None] & r_mask[None, :])


@jit
def _sgmv_expand_kernel(
    # pointers
    shrunk_ptr, b_ptr, ranks_ptr, y_ptr,
    token_order_ptr, seg_starts_ptr, seg_lengths_ptr, seg_slots_ptr,
    # sizes
    out_features, max_rank,
    # strides (in elements; innermost strides are 1)
    stride_sm, stride_bs, stride_bn, stride_ym,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Program (segment, row tile, output column tile), same early exits as shrink.
    seg = tl.program_id(0)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    seg_len = tl.load(seg_lengths_ptr + seg)
    if tl.program_id(1) * BLOCK_M >= seg_len:
        return
    slot = tl.load(seg_slots_ptr + seg).to(tl.int64)  # slot * stride can pass 2**31
    rank = tl.minimum(tl.load(ranks_ptr + slot), max_rank)
    if rank == 0:
        return
    m_mask = m < seg_len
    rows = tl.load(token_order_ptr + tl.load(seg_starts_ptr + seg) + m, mask=m_mask, other=0)
    r = tl.arange(0, BLOCK_R)
    r_mask = r < rank
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < out_features
    # delta[m, n] = sum_r shrunk[row m, r] * B[slot, n, r], in fp32.
    shrunk = tl.load(shrunk_ptr + rows[:, None] * stride_sm + r[None, :],
                     mask=m_mask[:, None] & r_mask[None, :], other=0.0)
    b = tl.load(b_ptr + slot * stride_bs + n[:, None] * stride_bn + r[None, :],
                mask=n_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
    delta = tl.dot(shrunk, tl.trans(b), input_precision=DOT_PRECISION)
    # y += delta, added in fp32 and rounded once.
    y_ptrs = y_ptr + rows[:, None] * stride_ym + n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (y + delta).to(y_ptr.dtype.element_ty), mask=mask)


def sgmv_triton(y, x, lora_a, lora_b, scale, ranks, *, batch: LoraBatch,
                is_checked: bool = False) -> None:
    """Triton SGMV: y[rows] += scale * (x[rows] @ A^T) @ B^T per segment, in place."""
    if triton is None:
        raise RuntimeError("sgmv_triton needs Triton, which is not installed")
    if not is_checked:
        check_lora_args(y, x, lora_a, lora_b, scale, ranks, batch)
    if not batch.segments:
        return
    _, max_rank, in_features = lora_a.shape
    out_features = lora_b.shape[1]
    block_r = max(16, triton.next_power_of_2(max_rank))
    # fp32 inputs need full-precision dots; 16-bit values are exact in tf32.
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    shrunk = torch.empty((batch.num_tokens, max_rank), dtype=torch.float32, device=x.device)
    segment_args = (batch.token_order, batch.segment_starts, batch.segment_lengths,
                    batch.segment_slots)
    num_row_tiles = triton.cdiv(batch.max_segment_length, _BLOCK_M)
    _sgmv_shrink_kernel[(batch.num_segments, num_row_tiles)](
        x, lora_a, scale, ranks, shrunk, *segment_args,
        in_features, max_rank,
        x.stride(0), lora_a.stride(0), lora_a.stride(1), shrunk.stride(0),
        BLOCK_M=_BLOCK_M, BLOCK_R=block_r, BLOCK_K=_BLOCK_K, DOT_PRECISION=precision,
    )
    grid = (batch.num_segments, num_row_tiles, triton.cdiv(out_features, _BLOCK_N))
    _sgmv_expand_kernel[grid](
        shrunk, lora_b, ranks, y, *segment_args,
        out_features, max_rank,
        shrunk.stride(0), lora_b.stride(0), lora_b.stride(1), y.stride(0),
        BLOCK_M=_BLOCK_M, BLOCK_R=block_r, BLOCK_N=_BLOCK_N, DOT_PRECISION=precision,
    )


def sgmv_torch(y, x, lora_a, lora_b, scale, ranks, *, batch: LoraBatch,
               is_checked: bool = False) -> None:
    """Torch SGMV, same contract as `sgmv_triton`: one matmul pair per segment (= per adapter).

    Reads each adapter's weights once per step, at its actual rank; costs a few small ops
    (~12 us on this CPU) per adapter. `dispatch.py` says when it is the CPU path.
    """
    if not is_checked:
        check_lora_args(y, x, lora_a, lora_b, scale, ranks, batch)
    if not batch.segments:
        return
    slot_ranks, slot_scales = checked_ranks(ranks, lora_a.shape[1]), scale.tolist()
    num_rows = len(batch.token_order)
    first = batch.sorted_rows_start
    if first is not None:  # rows already grouped by slot: work on views of x and y
        xs, ys = x[first:first + num_rows], y[first:first + num_rows]
    else:
        xs = x.index_select(0, batch.token_order)
        ys = torch.zeros((num_rows, y.shape[1]), dtype=y.dtype, device=y.device)
    for start, length, slot in batch.segments:
        rank = slot_ranks[slot]
        if rank == 0:
            continue
        rows = slice(start, start + length)
        shrunk = F.linear(xs[rows], lora_a[slot, :rank])
        ys[rows].addmm_(shrunk, lora_b[slot, :, :rank].t(), alpha=slot_scales[slot])
    if first is None:
        y.index_add_(0, batch.token_order, ys)
