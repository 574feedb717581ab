"""`PagedAttentionBatch`: one step's attention metadata as flat tensors, for the kernels.

A step's rows (query tokens) are grouped by sequence, decodes first: sequence s owns rows
query_start_loc[s] : query_start_loc[s + 1], the last num_new of its context_lens[s]
tokens, whose keys and values are already in the cache. Every tensor has a fixed rank and
dtype and no per-sequence Python objects, so a step can write it into static device
buffers (what CUDA graphs need); the few host ints size the launch grids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch


@dataclasses.dataclass(frozen=True)
class PagedAttentionBatch:
    """Which cache blocks each sequence reads and which rows are its queries.

    Attributes (S = sequences in the step, decodes first):
        block_tables: int32 [S, max_blocks]; token k of sequence s lives in block
            block_tables[s, k // block_size] at offset k % block_size. Entries past a
            sequence's last block are 0 and never read.
        context_lens: int32 [S], tokens of each sequence in the cache, this step's included.
        query_start_loc: int32 [S + 1], first row of each sequence, then the row count.
        num_decodes: the first num_decodes sequences have exactly one query row.
        max_query_len: the most rows any sequence after them has (0: decodes only).
        sliding_window: a query at position p sees keys p - window < k <= p; None: all k <= p.
    """

    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: torch.Tensor
    num_decodes: int
    max_query_len: int
    sliding_window: int | None = None

    @property
    def num_seqs(self) -> int:
        """Sequences in the step."""
        return self.context_lens.shape[0]

    @property
    def num_prefills(self) -> int:
        """Sequences after the decodes (prefill chunks, any number of rows each)."""
        return self.num_seqs - self.num_decodes

    @classmethod
    def from_sequences(
        cls, block_tables: Sequence[Sequence[int]], context_lens: Sequence[int],
        query_lens: Sequence[int], *, sliding_window: int | None = None,
        device: torch.device | str = "cpu",
    ) -> PagedAttentionBatch:
        """The batch of sequences given in row order; each block table must cover its
        context (extra entries are cut). Sequences with one query row at the front are
        the decodes."""
        if not len(block_tables) == len(context_lens) == len(query_lens):
            raise ValueError("block_tables, context_lens and query_lens differ in length")
        for index, (table, context, num_new) in enumerate(
                zip(block_tables, context_lens, query_lens, strict=True)):
            if not 0 < num_new <= context:
                raise ValueError(f"sequence {index}: {num_new} queries for {context} tokens")
            if not table:
                raise ValueError(f"sequence {index} has an empty block table")
        num_blocks = max((len(t) for t in block_tables), default=0)
        tables = [list(t) + [0] * (num_blocks - len(t)) for t in block_tables]
        starts = [0]
        for num_new in query_lens:
            starts.append(starts[-1] + num_new)
        num_decodes = next((i for i, n in enumerate(query_lens) if n != 1), len(query_lens))
        return cls(
            block_tables=torch.tensor(tables, dtype=torch.int32, device=device).view(
                len(tables), num_blocks),
            context_lens=torch.tensor(list(context_lens), dtype=torch.int32, device=device),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
            num_decodes=num_decodes,
            max_query_len=max(query_lens[num_decodes:], default=0),
            sliding_window=sliding_window,
        )


def check_attention_args(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         batch: PagedAttentionBatch) -> None:
    """Raises ValueError naming the first argument whose dtype, shape or layout is wrong.

    Expected: q [rows, heads, head_dim], k_cache and v_cache [num_blocks, block_size,
    kv_heads, head_dim] of q's dtype, heads a multiple of kv_heads, the head dimension
    contiguous, the batch's int32 tensors on q's device (rows are not counted: that
    would wait for the device).
    """
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"q must be [rows, heads, dim] and the caches [blocks, block_size, "
                         f"kv_heads, dim], got {tuple(q.shape)}, {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"cache dtypes {k_cache.dtype}, {v_cache.dtype} differ from q's {q.dtype}")
    if k_cache.shape[3] != q.shape[2] or q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} does not fit a cache of {k_cache.shape[2]} KV "
                         f"heads of dim {k_cache.shape[3]}")
    if any(t.numel() and t.stride(-1) != 1 for t in (q, k_cache, v_cache)):
        raise ValueError("q and the caches need a contiguous head dimension")
    tensors = {"block_tables": batch.block_tables, "context_lens": batch.context_lens,
               "query_start_loc": batch.query_start_loc}
    for name, tensor in tensors.items():
        if tensor.dtype != torch.int32 or tensor.device != q.device:
            raise ValueError(f"batch.{name} must be int32 on {q.device}, got {tensor.dtype} "
                             f"on {tensor.device}")
    if batch.query_start_loc.shape != (batch.num_seqs + 1,):
        raise ValueError(f"batch.query_start_loc must have {batch.num_seqs + 1} entries")
    if batch.block_tables.shape[0] != batch.num_seqs:
        raise ValueError(f"batch.block_tables must have {batch.num_seqs} rows")
