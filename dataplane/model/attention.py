"""Attention over a paged KV cache.

The cache of one layer is a pair of tensors [num_blocks, block_size, num_kv_heads,
head_dim]; token t of a sequence lives in block block_table[t // block_size] at offset
t % block_size. A step's tokens are ordered decodes first (one query each, attended in
padded batches of similar context length), then prefill chunks (several queries each,
attended per sequence).

Two paths compute the same thing. On CUDA with Triton, the paged-attention kernels
(kernels/paged_attention.py) read the blocks in place, described by the step's flat
`PagedAttentionBatch`; elsewhere (the CPU worker, and as the kernels' test oracle) torch
gathers each group's blocks and runs SDPA, described by decode groups and prefill spans.
`BatchBuilder` builds the description of the path the step takes (both when asked). On
a CPU in float32 the CPU backend's native kernels store the keys and values and attend
the decode groups where their blocks lie (kernels/cpu/native.py); prefills keep SDPA.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lorafleet.kernels.attention_batch import PagedAttentionBatch
from lorafleet.kernels.cpu import native
from lorafleet.kernels.paged_attention import paged_attention_triton
from lorafleet.kernels.triton_support import is_triton_available


@dataclasses.dataclass(frozen=True)
class PrefillSpan:
    """A sequence computing several tokens this step: batch rows [start, stop).

    `block_table` covers its `num_context` tokens (earlier ones plus these); `mask` is
    [num_new, num_context] (True: attend), or None for a causal prompt starting at 0.
    """

    start: int
    stop: int
    num_context: int
    block_table: torch.Tensor
    mask: torch.Tensor | None


@dataclasses.dataclass(frozen=True)
class DecodeGroup:
    """Single-query sequences at batch rows [start, stop), attended as one padded batch.

    block_tables [rows, max_blocks] (padding points at any real block); mask [rows, 1, 1,
    num_keys] hides padded keys (True: attend) for the torch path; the CPU's native
    kernel reads `lengths` [rows] (keys per sequence) and `window` (a sliding window's
    keys, None: all) instead.
    """

    start: int
    stop: int
    block_tables: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    window: int | None = None


@dataclasses.dataclass(frozen=True)
class AttentionMetadata:
    """Where this step's keys and values go and what each query attends to.

    kv_positions [num_tokens] is each token's position in the flattened KV cache; decode groups come first in
    the batch, prefill spans after them. `paged` describes the same step as flat tensors
    for the paged-attention kernels (None when the step was built for the torch path
    only); when the kernels run the step, `decodes` and `prefills` may be empty.
    """

    kv_positions: torch.Tensor
    decodes: tuple[DecodeGroup, ...]
    prefills: tuple[PrefillSpan, ...]
    paged: PagedAttentionBatch | None = None


def runs_paged_kernels(device: torch.device) -> bool:
    """Whether `paged_attention` on `device` runs the Triton kernels (given `meta.paged`)."""
    return device.type == "cuda" and is_triton_available()


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
) -> torch.Tensor:
    """Stores k, v [tokens, kv_heads, dim] in the cache, then attends q [tokens, heads, dim]."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    # Native: each token's heads side by side (views of the q|k|v output are).
    is_native = native.runs(q, k, v, k_cache) and q.stride(1) == k.stride(1) == v.stride(1) \
        == head_dim
    if is_native:
        native.store_kv(k, v, k_cache, v_cache, meta.kv_positions)
    else:
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.kv_positions, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.kv_positions, v)
    if meta.paged is not None and runs_paged_kernels(q.device):
        return paged_attention_triton(q, k_cache, v_cache, batch=meta.paged, is_checked=True)
    # Groups and spans cover the rows in order: a step of one group (most decode steps)
    # returns its output as it is.
    decode = _decode_native if is_native else _decode
    parts = [decode(q[group.start : group.stop], k_cache, v_cache, group)
             for group in meta.decodes]
    parts += [_prefill(q[span.start : span.stop], k_cache, v_cache, span)
              for span in meta.prefills]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _gather(cache: torch.Tensor, block_tables: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[seqs, kv_heads, tokens, dim] keys or values of the given block tables."""
    seqs, num_blocks = block_tables.shape
    # index_select on the block dimension copies several times faster than cache[tables].
    blocks = cache.index_select(0, block_tables.flatten())
    blocks = blocks.view(seqs, num_blocks * cache.shape[1], *cache.shape[2:])
    return blocks[:, :num_tokens].transpose(1, 2)


def _decode(q, k_cache, v_cache, group: DecodeGroup) -> torch.Tensor:
    """One query per sequence, the group's sequences in one padded, masked batch."""
    tables, mask = group.block_tables, group.mask
    keys = _gather(k_cache, tables, mask.shape[-1])
    values = _gather(v_cache, tables, mask.shape[-1])
    # The query heads sharing a KV head become that head's rows: one query position, so no
    # causal structure is lost, and SDPA skips the GQA expansion (faster on CPU).
    seqs, num_kv_heads = keys.shape[0], keys.shape[1]
    grouped = q.view(seqs, num_kv_heads, -1, q.shape[-1])
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask)
    return out.reshape(q.shape)


def _decode_native(q, k_cache, v_cache, group: DecodeGroup) -> torch.Tensor:
    """`_decode` by the CPU's native kernel: no gather, no padded keys."""
    return native.decode_attention(q, k_cache, v_cache, group.block_tables, group.lengths,
                                   group.window)


def _prefill(q, k_cache, v_cache, span: PrefillSpan) -> torch.Tensor:
    """Several queries of one sequence against its whole context."""
    table = span.block_table.unsqueeze(0)
    keys = _gather(k_cache, table, span.num_context)
    values = _gather(v_cache, table, span.num_context)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), keys, values,
        attn_mask=span.mask, is_causal=span.mask is None, enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1)
