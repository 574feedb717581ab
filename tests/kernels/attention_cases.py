"""Paged-attention test cases: one step's sequences, laid out by the runner's BatchBuilder.

A case is a list of sequences (start position, new tokens) scheduled in one step; the
builder orders them (decodes first) and describes them for both attention paths. Each
sequence's blocks are scattered over the cache in a shuffled order, and the cache holds
random keys and values everywhere, so a kernel that reads the wrong block, a key past the
context or a padding row shows in its output.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.scheduler import ScheduledRequest, SchedulerOutput
from lorafleet.dataplane.model.attention import AttentionMetadata, paged_attention
from lorafleet.dataplane.runner.batch import BatchBuilder

SPARE_BLOCKS = 3  # blocks no sequence owns (their random contents must never be read)


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """One step: `seqs` holds (start_position, num_new) per sequence, in plan order."""

    seqs: tuple[tuple[int, int], ...]
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    block_size: int = 4
    sliding_window: int | None = None
    partition_size: int = 512  # keys per decode program (smaller: the split path)
    is_q_strided: bool = False  # q as a view with strided rows and heads

    @property
    def num_rows(self) -> int:
        """Query rows in the step."""
        return sum(num_new for _, num_new in self.seqs)


def block_tables(spec: AttentionSpec, seed: int) -> list[list[int]]:
    """Each sequence's blocks, drawn from a shuffled cache: no table is contiguous."""
    sizes = [-(-(start + num_new) // spec.block_size) for start, num_new in spec.seqs]
    order = list(range(sum(sizes) + SPARE_BLOCKS))
    random.Random(seed).shuffle(order)
    tables, used = [], 0
    for size in sizes:
        tables.append(order[used:used + size])
        used += size
    return tables


def step_metadata(spec: AttentionSpec, device, *, is_paged: bool | None = True,
                  seed: int = 0) -> AttentionMetadata:
    """The step's attention metadata as the runner builds it on `device`."""
    scheduled = tuple(
        ScheduledRequest(request_id=f"r{i}", token_ids=(1,) * num_new, start_position=start,
                         block_table=tuple(table), adapter=None, params=SamplingParams(),
                         is_sampling=True)
        for i, ((start, num_new), table) in enumerate(zip(spec.seqs, block_tables(spec, seed),
                                                          strict=True)))
    plan = SchedulerOutput(scheduled=scheduled, preempted_ids=(), num_batched_tokens=spec.num_rows)
    builder = BatchBuilder(spec.block_size, torch.device(device), spec.sliding_window,
                           is_paged=is_paged)
    return builder.build(plan).attention


def step_tensors(spec: AttentionSpec, dtype: torch.dtype, device, *, seed: int = 0) -> dict:
    """q [rows, heads, dim], this step's k and v, and random caches, on `device`."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(len(t) for t in block_tables(spec, seed)) + SPARE_BLOCKS
    cache_shape = (num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    rows, heads, dim = spec.num_rows, spec.num_heads, spec.head_dim
    q = torch.randn(rows, heads + 3 if spec.is_q_strided else heads, dim, generator=gen)
    tensors = {"q": q, "k": torch.randn(rows, spec.num_kv_heads, dim, generator=gen),
               "v": torch.randn(rows, spec.num_kv_heads, dim, generator=gen),
               "k_cache": torch.randn(cache_shape, generator=gen),
               "v_cache": torch.randn(cache_shape, generator=gen)}
    tensors = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    if spec.is_q_strided:  # heads 1.. of a wider tensor: row stride != heads * dim
        tensors["q"] = tensors["q"][:, 1:heads + 1]
    return tensors


def torch_attention(tensors: dict, meta: AttentionMetadata) -> torch.Tensor:
    """The torch path's output in fp32 (the oracle), on copies of the caches."""
    fp32 = {name: t.float() for name, t in tensors.items()}  # .float() copies 16-bit ones
    if tensors["k_cache"].dtype == torch.float32:
        fp32["k_cache"], fp32["v_cache"] = fp32["k_cache"].clone(), fp32["v_cache"].clone()
    return paged_attention(fp32["q"], fp32["k"], fp32["v"], fp32["k_cache"], fp32["v_cache"],
                           meta)


def store_step_kv(tensors: dict, meta: AttentionMetadata) -> None:
    """Writes the step's k and v into the caches, as `paged_attention` does first."""
    k_cache, v_cache = tensors["k_cache"], tensors["v_cache"]
    heads, dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, heads, dim).index_copy_(0, meta.kv_positions, tensors["k"])
    v_cache.view(-1, heads, dim).index_copy_(0, meta.kv_positions, tensors["v"])
