"""BGMV: LoRA with one program per row (decode-like batches, one row per request).

    for each row t with slot s = token_slots[t] != -1:
        y[t] += scale[s] * (x[t] @ A[s]^T) @ B[s]^T

Shapes (S = num_slots, R = max_rank, T = num_tokens): as in `sgmv.py` —
x [T, in], y [T, out], lora_a [S, R, in], lora_b [S, out, R], scale [S] fp32,
ranks [S] int32; `batch.token_slots` [T] int32 holds each row's slot, -1 for none.

Ranks below max_rank cost padding memory but no loads: every load is masked at r < rank
(see `sgmv.py` for the full account). Each program is a matrix-vector product done as a
broadcast multiply and a row sum, since a single row is below tl.dot's 16-row minimum.
"""

from __future__ import annotations

import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.checks import check_lora_args, checked_ranks
from lorafleet.kernels.triton_support import jit, tl, triton

_BLOCK_K = 128
_BLOCK_N = 128


@jit
def _bgmv_shrink_kernel(
    # pointers
    x_ptr, a_ptr, scale_ptr, ranks_ptr, shrunk_ptr, token_slots_ptr,
    # sizes
    in_features, max_rank,
    # strides (in elements; innermost strides are 1)
    stride_xm, stride_as, stride_ar, stride_sm,
    # meta
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Program = one row. Rows with no adapter (-1) or an empty slot exit at once.
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(token_slots_ptr + row).to(tl.int64)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot), max_rank)
    if rank == 0:
        return
    r = tl.arange(0, BLOCK_R)
    r_mask = r < rank
    # acc[r] = sum_k x[row, k] * A[slot, r, k], in fp32.
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < in_features
        x = tl.load(x_ptr + row * stride_xm + k, mask=k_mask, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + slot * stride_as + r[:, None] * stride_ar + k[None, :],
                    mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a * x[None, :], axis=1)
    acc *= tl.load(scale_ptr + slot)
    tl.store(shrunk_ptr + row * stride_sm + r, acc, mask=r_mask)


@jit
def _bgmv_expand_kernel(
    # pointers
    shrunk_ptr, b_ptr, ranks_ptr, y_ptr, token_slots_ptr,
    # sizes
    out_features, max_rank,
    # strides (in elements; innermost strides are 1)
    stride_sm, stride_bs, stride_bn, stride_ym,
    # meta
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Program = (row, output column tile), same early exits as shrink.
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(token_slots_ptr + row).to(tl.int64)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot), max_rank)
    if rank == 0:
        return
    r = tl.arange(0, BLOCK_R)
    r_mask = r < rank
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < out_features
    # delta[n] = sum_r shrunk[row, r] * B[slot, n, r], in fp32.
    shrunk = tl.load(shrunk_ptr + row * stride_sm + r, mask=r_mask, other=0.0)
    b = tl.load(b_ptr + slot * stride_bs + n[:, None] * stride_bn + r[None, :],
                mask=n_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
    delta = tl.sum(b * shrunk[None, :], axis=1)
    # y += delta, added in fp32 and rounded once.
    y_ptrs = y_ptr + row * stride_ym + n
    y = tl.load(y_ptrs, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (y + delta).to(y_ptr.dtype.element_ty), mask=n_mask)


def bgmv_triton(y, x, lora_a, lora_b, scale, ranks, *, batch: LoraBatch,
                is_checked: bool = False) -> None:
    """Triton BGMV: y[t] += scale * (x[t] @ A^T) @ B^T for every row with a slot, in place."""
    if triton is None:
        raise RuntimeError("bgmv_triton needs Triton, which is not installed")
    if not is_checked:
        check_lora_args(y, x, lora_a, lora_b, scale, ranks, batch)
    if not batch.segments:
        return
    _, max_rank, in_features = lora_a.shape
    out_features = lora_b.shape[1]
    block_r = triton.next_power_of_2(max_rank)
    shrunk = torch.empty((batch.num_tokens, max_rank), dtype=torch.float32, device=x.device)
    _bgmv_shrink_kernel[(batch.num_tokens,)](
        x, lora_a, scale, ranks, shrunk, batch.token_slots,
        in_features, max_rank,
        x.stride(0), lora_a.stride(0), lora_a.stride(1), shrunk.stride(0),
        BLOCK_R=block_r, BLOCK_K=_BLOCK_K,
    )
    _bgmv_expand_kernel[(batch.num_tokens, triton.cdiv(out_features, _BLOCK_N))](
        shrunk, lora_b, ranks, y, batch.token_slots,
        out_features, max_rank,
        shrunk.stride(0), lora_b.stride(0), lora_b.stride(1), y.stride(0),
        BLOCK_R=block_r, BLOCK_N=_BLOCK_N,
    )


def bgmv_torch(y, x, lora_a, lora_b, scale, ranks, *, batch: LoraBatch,
               is_checked: bool = False) -> None:
    """Torch BGMV, same contract as `bgmv_triton`: each row gathers its slot's weights.

    Batched matrix-vector products over weights gathered per row. It computes all max_rank
    columns and zeroes those past each slot's rank, so padding must be finite
    (`LoraBuffers` keeps it zero). Its cost grows with rows x max_rank x (in + out), but it
    runs a fixed handful of ops, which makes it the faster CPU path for small hidden sizes
    with many adapters in a step (see `dispatch.py`). `index_select` and `vecdot` because
    they measured 4-8x faster on CPU than advanced indexing and `bmm` at these shapes.
    """
    if not is_checked:
        check_lora_args(y, x, lora_a, lora_b, scale, ranks, batch)
    if not batch.segments:
        return
    checked_ranks(ranks, lora_a.shape[1])
    rows = batch.token_order
    slots = batch.token_slots.index_select(0, rows)
    # gain[s, r] = scale[s] for r < rank[s], else 0: applies the scale and drops padding.
    is_live = torch.arange(lora_a.shape[1], device=x.device) < ranks[:, None]
    gain = torch.where(is_live, scale[:, None], 0.0).to(x.dtype).index_select(0, slots)
    x_rows = x.index_select(0, rows).unsqueeze(1)
    shrunk = torch.linalg.vecdot(lora_a.index_select(0, slots), x_rows).mul_(gain)
    delta = torch.linalg.vecdot(lora_b.index_select(0, slots), shrunk.unsqueeze(1))
    y.index_add_(0, rows, delta)
