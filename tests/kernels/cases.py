"""Kernel test cases: adapter-popularity patterns, filled buffers, and the fp32 reference."""

from __future__ import annotations

import random

import torch

from lorafleet.kernels.buffers import LoraBuffers

# Punica's adapter-popularity patterns.
PATTERNS = ("distinct", "uniform", "zipf", "identical", "skewed")
# Every NO_ADAPTER_EVERY-th request uses the base model only.
NO_ADAPTER_EVERY = 5


def request_slots(pattern: str, num_requests: int, num_slots: int, seed: int) -> list[int | None]:
    """The adapter slot of each request under `pattern`, with base-model requests mixed in."""
    rng = random.Random(seed)
    if pattern == "distinct":
        slots = [i % num_slots for i in range(num_requests)]
    elif pattern == "uniform":
        slots = [rng.randrange(num_slots) for _ in range(num_requests)]
    elif pattern == "zipf":
        weights = [1.0 / (k + 1) ** 1.5 for k in range(num_slots)]
        slots = rng.choices(range(num_slots), weights=weights, k=num_requests)
    elif pattern == "identical":
        slots = [3 % num_slots] * num_requests
    elif pattern == "skewed":  # half the requests on one adapter, the rest spread out
        slots = [0 if i % 2 else rng.randrange(1, num_slots) for i in range(num_requests)]
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    rng.shuffle(slots)
    return [None if i % NO_ADAPTER_EVERY == NO_ADAPTER_EVERY - 1 else s for i, s in enumerate(slots)]


def token_slots(per_request: list[int | None], rows_per_request: list[int]) -> list[int | None]:
    """Per-row slots when request i contributes rows_per_request[i] consecutive rows."""
    return [slot for slot, rows in zip(per_request, rows_per_request, strict=True) for _ in range(rows)]


def filled_buffers(
    ranks: list[int | tuple[int, ...]], max_rank: int, in_features: int,
    out_features: int | tuple[int, ...], dtype: torch.dtype, seed: int,
) -> LoraBuffers:
    """Buffers with slot i holding a random adapter (deltas of order 1).

    `out_features` is one size per slice (an int: one slice); ranks[i] is slot i's rank in
    every slice, or a tuple with one rank per slice; rank 0 leaves that slice empty.
    """
    gen = torch.Generator().manual_seed(seed)
    sizes = (out_features,) if isinstance(out_features, int) else tuple(out_features)
    buffers = LoraBuffers.allocate(
        num_slots=len(ranks), max_rank=max_rank, in_features=in_features,
        out_features=sizes, dtype=dtype,
    )
    for slot, slot_ranks in enumerate(ranks):
        per_slice = slot_ranks if isinstance(slot_ranks, tuple) else (slot_ranks,) * len(sizes)
        if not any(per_slice):
            continue
        slices = []
        for index, (rank, size) in enumerate(zip(per_slice, sizes, strict=True)):
            a = torch.randn(rank, in_features, generator=gen) / in_features**0.5
            b = torch.randn(size, rank, generator=gen) / max(rank, 1) ** 0.5
            scale = 0.5 + (slot + index) % 4 * 0.5
            slices.append((a.to(dtype), b.to(dtype), scale) if rank else None)
        buffers.write_slot(slot, slices)
    return buffers


def reference_lora(
    y: torch.Tensor, x: torch.Tensor, buffers: LoraBuffers, slots: list[int | None]
) -> torch.Tensor:
    """fp32 y + delta, one row and one slice at a time, using only each slice's first
    `rank` rows of A and columns of B."""
    out = y.float().clone()
    for row, slot in enumerate(slots):
        if slot is None:
            continue
        for index, columns in enumerate(buffers.slice_columns):
            rank = int(buffers.ranks[slot, index])
            a = buffers.slice_a(slot, index)[:rank].float()
            b = buffers.lora_b[slot, :rank, columns].float().t()
            delta = (x[row].float() @ a.T) @ b.T
            out[row, columns] += float(buffers.scale[slot, index]) * delta
    return out
