"""BGMV: LoRA with one program per row (decode-like batches, one row per request).

    for each row t with slot s = token_slots[t] != -1, for each slice i (columns c_i):
        y[t, c_i] += scale[s, i] * (x[t] @ A_i[s]^T) @ B_i[s]^T

Shapes and slices (S = num_slots, R = max_rank, N = num_slices, T = num_tokens): as in
`sgmv.py` — x [T, in], y [T, sum(out_i)], lora_a [S, R * N, in] (rank-major), lora_b [S, R, sum(out_i)] (rank-major),
scale [S, N] fp32, ranks [S, N] int32, slice_starts [N + 1] int32;
`batch.token_slots` [T] int32 holds each row's slot, -1 for none.

Ranks below max_rank cost padding memory but no loads: every load is masked at r < rank
(see `sgmv.py` for the full account). Each program is a matrix-vector product done as a
broadcast multiply and a row sum, since a single row is below tl.dot's 16-row minimum.
"""

from __future__ import annotations

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.checks import check_lora_args
from lorafleet.kernels.triton_support import jit, tl, triton

_BLOCK_K = 128
_BLOCK_N = 128


@jit
def _bgmv_shrink_kernel(
    # pointers
    x_ptr, a_ptr, scale_ptr, ranks_ptr, shrunk_ptr, token_slots_ptr,
    # sizes
    in_features, max_rank, num_slices,
    # strides (in elements; innermost strides are 1)
    stride_xm, stride_as, stride_ar, stride_sm,
    # meta
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Program = (row, slice). Rows with no adapter (-1) or an empty slice exit at once.
    row = tl.program_id(0).to(tl.int64)
    sl = tl.program_id(1)
    slot = tl.load(token_slots_ptr + row).to(tl.int64)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot * num_slices + sl), max_rank)
    if rank == 0:
        return
    r = tl.arange(0, BLOCK_R)
    r_mask = r < rank
    a_base = a_ptr + slot * stride_as + sl * stride_ar  # rank 0 of the slice (rank-major)
    # acc[r] = sum_k x[row, k] * A_sl[slot, r, k], in fp32.
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < in_features
        x = tl.load(x_ptr + row * stride_xm + k, mask=k_mask, other=0.0).to(tl.float32)
        a = tl.load(a_base + r[:, None] * (num_slices * stride_ar) + k[None, :],
                    mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a * x[None, :], axis=1)
    acc *= tl.load(scale_ptr + slot * num_slices + sl)
    tl.store(shrunk_ptr + row * stride_sm + sl * max_rank + r, acc, mask=r_mask)


@jit
def _bgmv_expand_kernel(
    # pointers
    shrunk_ptr, b_ptr, ranks_ptr, y_ptr, token_slots_ptr, slice_starts_ptr,
    # sizes
    max_rank, num_slices,
    # strides (in elements; innermost strides are 1)
    stride_sm, stride_bs, stride_br, stride_ym,
    # meta
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Program = (row, slice, column tile), same early exits as shrink, and past the
    # slice's last column.
    row = tl.program_id(0).to(tl.int64)
    sl = tl.program_id(1)
    n0 = tl.program_id(2) * BLOCK_N
    col0 = tl.load(slice_starts_ptr + sl)
    out_features = tl.load(slice_starts_ptr + sl + 1) - col0
    if n0 >= out_features:
        return
    slot = tl.load(token_slots_ptr + row).to(tl.int64)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot * num_slices + sl), max_rank)
    if rank == 0:
        return
    r = tl.arange(0, BLOCK_R)
    r_mask = r < rank
    n = n0 + tl.arange(0, BLOCK_N)
    n_mask = n < out_features
    # delta[n] = sum_r shrunk[row, sl, r] * lora_b[slot, r, col0 + n], in fp32.
    shrunk = tl.load(shrunk_ptr + row * stride_sm + sl * max_rank + r, mask=r_mask, other=0.0)
    b = tl.load(b_ptr + slot * stride_bs + r[None, :] * stride_br + (col0 + n[:, None]),
                mask=n_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
    delta = tl.sum(b * shrunk[None, :], axis=1)
    # y[row, col0 + n] += delta, added in fp32 and rounded once.
    y_ptrs = y_ptr + row * stride_ym + col0 + n
    y = tl.load(y_ptrs, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (y + delta).to(y_ptr.dtype.element_ty), mask=n_mask)


def bgmv_triton(y, x, buffers: LoraBuffers, *, batch: LoraBatch,
                is_checked: bool = False) -> None:
    """Triton BGMV: y[t, c_i] += scale * (x[t] @ A_i^T) @ B_i^T per row with a slot and slice."""
    if triton is None:
        raise RuntimeError("bgmv_triton needs Triton, which is not installed")
    if not is_checked:
        check_lora_args(y, x, buffers, batch)
    if not batch.segments and not batch.is_static:
        return
    max_rank, num_slices = buffers.max_rank, buffers.num_slices
    lora_a, lora_b = buffers.lora_a, buffers.lora_b
    block_r = triton.next_power_of_2(max_rank)
    shrunk = batch.shrunk_workspace(num_slices * max_rank, x.device)
    _bgmv_shrink_kernel[(batch.num_tokens, num_slices)](
        x, lora_a, buffers.scale, buffers.ranks, shrunk, batch.token_slots,
        buffers.in_features, max_rank, num_slices,
        x.stride(0), lora_a.stride(0), lora_a.stride(1), shrunk.stride(0),
        BLOCK_R=block_r, BLOCK_K=_BLOCK_K,
    )
    grid = (batch.num_tokens, num_slices, triton.cdiv(max(buffers.slice_sizes), _BLOCK_N))
    _bgmv_expand_kernel[grid](
        shrunk, lora_b, buffers.ranks, y, batch.token_slots, buffers.slice_starts,
        max_rank, num_slices,
        shrunk.stride(0), lora_b.stride(0), lora_b.stride(1), y.stride(0),
        BLOCK_R=block_r, BLOCK_N=_BLOCK_N,
    )

