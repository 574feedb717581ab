"""Paged attention: each query row against its sequence's keys, read in place from the cache.

    for each sequence s, row t of s at position p, query head h (KV head g = h // group):
        out[t, h] = softmax_k(q[t, h] . K[s, k, g] / sqrt(D)) @ V[s, k, g]
                    over keys k <= p (and k > p - window with a sliding window)
        where K[s, k] = k_cache[block_tables[s, k // B], k % B]

Shapes (T = rows, H = query heads, G = KV heads, D = head dim, B = block size; the rows
and tables are described by a `PagedAttentionBatch`, kernels/attention_batch.py):
    q         [T, H, D]                 rows and heads may be strided; D contiguous
    k_cache   [num_blocks, B, G, D]     v_cache the same; any strides but D contiguous
    out       [T, H, D]                 returned, contiguous, q's dtype

Three kernels, all reading blocks in place (no gathered copy of the context):
  - decode (one row per sequence): a program per (sequence, KV head, partition of
    `partition_size` keys); its rows are the H / G query heads sharing the KV head, so
    each key block is loaded once for the whole group. With more than one partition
    (long contexts: flash-decoding) each writes its unnormalised output, running max and
    sum to fp32 scratch, and a combine kernel (a program per sequence and head) merges them.
  - prefill (any rows per sequence: prompts, chunks starting past 0): a program per
    (sequence, tile of rows, KV head), a tile holding BLOCK_M // group query tokens times
    their group's heads, its key loop stopping at the tile's last position (causal).
Both run an online softmax in fp32 (exp2, the 1/sqrt(D) and log2(e) folded into q);
inputs are converted to fp32 as they are loaded. The torch path that serves CPU and is the
test oracle is `paged_attention` in dataplane/model/attention.py.
"""

from __future__ import annotations

import math

import torch

from lorafleet.kernels.attention_batch import PagedAttentionBatch, check_attention_args
from lorafleet.kernels.triton_support import jit, tl, triton

# Keys per step of a decode program: at head dim 128, bf16, 4 warps, ptxas for sm_90 gives
# 128 registers a thread at 16 keys and 232 at 32 (fewer programs resident per SM).
_DECODE_BLOCK_N = 16
_PREFILL_BLOCK_M = 64  # rows (query tokens x heads of a group) per prefill program
_PREFILL_BLOCK_N = 32
_PARTITION_SIZE = 512  # keys per decode program; a multiple of _DECODE_BLOCK_N
_MIN_DOT = 16  # tl.dot's smallest dimension
_LOG2E = 1.4426950408889634


@jit
def _attend(
    acc, m_i, l_i, q, q_pos, k_head_ptr, v_head_ptr, table_ptr, lo, hi, window, block_size,
    stride_kb, stride_kt, stride_vb, stride_vt, d, d_mask,
    BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Keys lo..hi-1 of one sequence and KV head, BLOCK_N at a time, each through its block.
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < hi
        block = tl.load(table_ptr + n // block_size, mask=n_mask, other=0).to(tl.int64)
        offset = n % block_size
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_head_ptr + block[:, None] * stride_kb + offset[:, None] * stride_kt
                    + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_head_ptr + block[:, None] * stride_vb + offset[:, None] * stride_vt
                    + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        # Scores in log2 units (q carries log2(e) / sqrt(D)); hidden keys are -inf.
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        visible = n_mask[None, :] & (n[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            visible = visible & (n[None, :] > q_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
        # Online softmax; a row that has seen no key yet keeps max -inf, so subtract 0.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@jit
def _decode_range(first, context, window, PARTITION_SIZE: tl.constexpr,
                  HAS_WINDOW: tl.constexpr):
    # Keys [lo, hi) of the partition starting at key `first`, for a query at context - 1.
    lo = first
    hi = tl.minimum(first + PARTITION_SIZE, context)
    if HAS_WINDOW:
        lo = tl.maximum(lo, context - window)
    return lo, hi


@jit
def _decode_kernel(
    # pointers
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
    block_tables_ptr, context_lens_ptr, query_start_loc_ptr,
    # sizes
    group, num_heads, num_parts, head_dim, block_size, window, scale,
    # strides (in elements; the head dimension's stride is 1)
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ot, stride_oh, stride_table,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PARTITION_SIZE: tl.constexpr, IS_SPLIT: tl.constexpr, HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Program (sequence, KV head, partition); a partition with no visible key exits (the
    # combine leaves it out the same way).
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    context = tl.load(context_lens_ptr + seq)
    lo, hi = _decode_range(part * PARTITION_SIZE, context, window, PARTITION_SIZE, HAS_WINDOW)
    if lo >= hi:
        return
    # Rows: the query heads sharing this KV head, padded to BLOCK_M.
    row = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    g = tl.arange(0, BLOCK_M)
    heads = kv_head * group + g
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    q_mask = (g < group)[:, None] & d_mask[None, :]
    q = tl.load(q_ptr + row * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=q_mask, other=0.0).to(tl.float32) * scale
    q_pos = tl.zeros((BLOCK_M,), dtype=tl.int32) + (context - 1)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc, m_i, l_i = _attend(
        acc, m_i, l_i, q, q_pos, k_cache_ptr + kv_head * stride_kh,
        v_cache_ptr + kv_head * stride_vh, block_tables_ptr + seq * stride_table, lo, hi,
        window, block_size, stride_kb, stride_kt, stride_vb, stride_vt, d, d_mask,
        BLOCK_N, HAS_WINDOW, DOT_PRECISION)
    if IS_SPLIT:  # partials [seq, head, part] (+ [D] for the output), combined later
        part_row = (seq * num_heads + heads) * num_parts + part
        tl.store(part_max_ptr + part_row, m_i, mask=g < group)
        tl.store(part_sum_ptr + part_row, l_i, mask=g < group)
        tl.store(part_acc_ptr + part_row[:, None] * head_dim + d[None, :], acc, mask=q_mask)
    else:
        out = acc / l_i[:, None]
        tl.store(out_ptr + row * stride_ot + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=q_mask)


@jit
def _decode_combine_kernel(
    # pointers
    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, context_lens_ptr, query_start_loc_ptr,
    # sizes
    num_heads, num_parts, head_dim, window,
    # strides
    stride_ot, stride_oh,
    # meta
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, PARTITION_SIZE: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    # Program (sequence, head): rescale each partition to the common max, then normalise.
    seq = tl.program_id(0)
    head = tl.program_id(1)
    context = tl.load(context_lens_ptr + seq)
    p = tl.arange(0, BLOCK_P)
    lo, hi = _decode_range(p * PARTITION_SIZE, context, window, PARTITION_SIZE, HAS_WINDOW)
    valid = (p < num_parts) & (lo < hi)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    part_row = (seq * num_heads + head) * num_parts + p
    m = tl.load(part_max_ptr + part_row, mask=valid, other=float("-inf"))
    l_p = tl.load(part_sum_ptr + part_row, mask=valid, other=0.0)
    acc = tl.load(part_acc_ptr + part_row[:, None] * head_dim + d[None, :],
                  mask=valid[:, None] & d_mask[None, :], other=0.0)
    weight = tl.exp2(m - tl.max(m, axis=0))  # 0 for partitions left out
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(l_p * weight, axis=0)
    row = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    tl.store(out_ptr + row * stride_ot + head * stride_oh + d,
             out.to(out_ptr.dtype.element_ty), mask=d_mask)


@jit
def _prefill_kernel(
    # pointers
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    block_tables_ptr, context_lens_ptr, query_start_loc_ptr,
    # sizes
    num_decodes, group, head_dim, block_size, window, scale,
    # strides (in elements; the head dimension's stride is 1)
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ot, stride_oh, stride_table,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program (prefill sequence, tile of query tokens, KV head); tiles past the sequence's
    # rows exit.
    seq = num_decodes + tl.program_id(0)
    kv_head = tl.program_id(2)
    tokens_per_tile = BLOCK_M // group
    first = tl.program_id(1) * tokens_per_tile
    row0 = tl.load(query_start_loc_ptr + seq)
    num_new = tl.load(query_start_loc_ptr + seq + 1) - row0
    if first >= num_new:
        return
    context = tl.load(context_lens_ptr + seq)
    start = context - num_new  # position of the sequence's first query
    # Row m of the tile: query token first + m // group, head m % group of the group.
    m = tl.arange(0, BLOCK_M)
    token = first + m // group
    heads = kv_head * group + m % group
    row_mask = (m < tokens_per_tile * group) & (token < num_new)
    rows = (row0 + token).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    q_mask = row_mask[:, None] & d_mask[None, :]
    q = tl.load(q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=q_mask, other=0.0).to(tl.float32) * scale
    # Keys up to the tile's last query (causal), from the first one's window.
    hi = start + tl.minimum(first + tokens_per_tile, num_new)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(start + first - window + 1, 0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc, m_i, l_i = _attend(
        acc, m_i, l_i, q, start + token, k_cache_ptr + kv_head * stride_kh,
        v_cache_ptr + kv_head * stride_vh, block_tables_ptr + seq * stride_table, lo, hi,
        window, block_size, stride_kb, stride_kt, stride_vb, stride_vt, d, d_mask,
        BLOCK_N, HAS_WINDOW, DOT_PRECISION)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # l_i is 0 only on padding rows
    tl.store(out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=q_mask)


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                           batch: PagedAttentionBatch, partition_size: int = _PARTITION_SIZE,
                           is_checked: bool = False) -> torch.Tensor:
    """out [T, H, D]: every row of `batch` attended against its sequence's cached keys.

    The keys and values of this step's rows must already be in the cache. Decodes longer
    than `partition_size` keys (a multiple of 16) are split across programs and combined.
    """
    if triton is None:
        raise RuntimeError("paged_attention_triton needs Triton, which is not installed")
    if not is_checked:
        check_attention_args(q, k_cache, v_cache, batch)
    if partition_size <= 0 or partition_size % _DECODE_BLOCK_N:
        raise ValueError(f"partition_size must be a positive multiple of {_DECODE_BLOCK_N}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    head_dim = q.shape[2]
    # Sizes, scale, strides and meta both kernels take (by keyword).
    common = dict(
        group=q.shape[1] // k_cache.shape[2], head_dim=head_dim, block_size=k_cache.shape[1],
        window=batch.sliding_window or 0, scale=_LOG2E / math.sqrt(head_dim),
        stride_qt=q.stride(0), stride_qh=q.stride(1),
        stride_kb=k_cache.stride(0), stride_kt=k_cache.stride(1), stride_kh=k_cache.stride(2),
        stride_vb=v_cache.stride(0), stride_vt=v_cache.stride(1), stride_vh=v_cache.stride(2),
        stride_ot=out.stride(0), stride_oh=out.stride(1),
        stride_table=batch.block_tables.stride(0),
        BLOCK_D=max(_MIN_DOT, triton.next_power_of_2(head_dim)),
        HAS_WINDOW=batch.sliding_window is not None,
        # fp32 inputs need full-precision dots (the float32 parity with transformers);
        # 16-bit keys and values are exact in tf32, and its rounding of the scaled q and of
        # the probabilities stays below a 16-bit output's.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    tables = (batch.block_tables, batch.context_lens, batch.query_start_loc)
    if batch.num_decodes:
        _launch_decode(q, k_cache, v_cache, out, tables, batch, partition_size, common)
    if batch.num_prefills:
        block_m = max(_PREFILL_BLOCK_M, triton.next_power_of_2(common["group"]))
        grid = (batch.num_prefills, triton.cdiv(batch.max_query_len, block_m // common["group"]),
                k_cache.shape[2])
        _prefill_kernel[grid](q, k_cache, v_cache, out, *tables, num_decodes=batch.num_decodes,
                              **common, BLOCK_M=block_m, BLOCK_N=_PREFILL_BLOCK_N, num_warps=8)
    return out


def _launch_decode(q, k_cache, v_cache, out, tables, batch: PagedAttentionBatch,
                   partition_size: int, common: dict) -> None:
    """The decode kernel over the first num_decodes sequences, split into partitions of
    `partition_size` keys when the block tables reach past one (then combined)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_parts = triton.cdiv(batch.block_tables.shape[1] * k_cache.shape[1], partition_size)
    is_split = num_parts > 1
    shape = (batch.num_decodes, num_heads, num_parts) if is_split else (0,)
    partials = [torch.empty(size, dtype=torch.float32, device=q.device)  # acc, max, sum
                for size in ((*shape, head_dim) if is_split else shape, shape, shape)]
    block_m = max(_MIN_DOT, triton.next_power_of_2(common["group"]))
    _decode_kernel[(batch.num_decodes, k_cache.shape[2], num_parts)](
        q, k_cache, v_cache, out, *partials, *tables, num_heads=num_heads, num_parts=num_parts,
        **common, BLOCK_M=block_m, BLOCK_N=_DECODE_BLOCK_N, PARTITION_SIZE=partition_size,
        IS_SPLIT=is_split,
    )
    if is_split:
        _decode_combine_kernel[(batch.num_decodes, num_heads)](
            out, *partials, batch.context_lens, batch.query_start_loc, num_heads, num_parts,
            head_dim, common["window"], out.stride(0), out.stride(1),
            BLOCK_P=triton.next_power_of_2(num_parts), BLOCK_D=common["BLOCK_D"],
            PARTITION_SIZE=partition_size, HAS_WINDOW=common["HAS_WINDOW"],
        )
