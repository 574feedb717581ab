"""Adapters below max_rank: padded slots give exactly what the unpadded adapter computes."""

from __future__ import annotations

import pytest
import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.cpu.blocked import blocked_torch
from lorafleet.kernels.dispatch import add_lora
from lorafleet.kernels.sgmv import sgmv_torch
from tests.kernels.cases import filled_buffers, reference_lora


def _adapters(gen):
    """Two adapters, ranks 8 and 24, as (A [r, in], B [out, r], scale)."""
    return [(torch.randn(rank, 256, generator=gen) / 16, torch.randn(192, rank, generator=gen), scale)
            for rank, scale in ((8, 2.0), (24, 0.25))]


def _apply(buffers, x, slots, kernel=add_lora):
    y = torch.zeros(len(slots), 192)
    kernel(y, x, buffers, batch=LoraBatch.from_slots(slots))
    return y


@pytest.mark.parametrize("kernel", [sgmv_torch, blocked_torch], ids=["grouped", "blocked"])
@pytest.mark.parametrize("max_rank", [24, 64])
def test_padded_slots_match_unpadded_math(max_rank, kernel):
    gen = torch.Generator().manual_seed(0)
    adapters = _adapters(gen)
    buffers = LoraBuffers.allocate(num_slots=2, max_rank=max_rank, in_features=256,
                                   out_features=192, dtype=torch.float32)
    for slot, (a, b, scale) in enumerate(adapters):
        buffers.write_slot(slot, [(a, b, scale)])
        # Garbage in the padding must not reach the result (any finite value is allowed).
        rank = a.shape[0]
        buffers.lora_a[slot, rank:] = 1e3
        buffers.lora_b[slot, rank:] = -1e3
    slots = [0, 1, None, 1, 0, 0]
    x = torch.randn(len(slots), 256, generator=gen)
    y = _apply(buffers, x, slots, kernel)
    for row, slot in enumerate(slots):
        expected = torch.zeros(192)
        if slot is not None:
            a, b, scale = adapters[slot]
            expected = scale * (x[row] @ a.T) @ b.T
        torch.testing.assert_close(y[row], expected, atol=1e-5, rtol=1e-5)


def test_rewriting_a_slot_with_a_lower_rank_leaves_no_trace_of_the_old_adapter():
    gen = torch.Generator().manual_seed(1)
    (small_a, small_b, scale), (big_a, big_b, _) = _adapters(gen)
    buffers = LoraBuffers.allocate(num_slots=1, max_rank=32, in_features=256,
                                   out_features=192, dtype=torch.float32)
    buffers.write_slot(0, [(big_a, big_b, 1.0)])
    buffers.write_slot(0, [(small_a, small_b, scale)])
    x = torch.randn(3, 256, generator=gen)
    torch.testing.assert_close(_apply(buffers, x, [0, 0, 0]), scale * (x @ small_a.T) @ small_b.T,
                               atol=1e-5, rtol=1e-5)
    assert buffers.ranks[0].tolist() == [8]


def test_cleared_slot_adds_nothing():
    gen = torch.Generator().manual_seed(2)
    a, b, scale = _adapters(gen)[0]
    buffers = LoraBuffers.allocate(num_slots=1, max_rank=8, in_features=256,
                                   out_features=192, dtype=torch.float32)
    buffers.write_slot(0, [(a, b, scale)])
    buffers.clear_slot(0)
    assert torch.equal(_apply(buffers, torch.randn(2, 256, generator=gen), [0, 0]), torch.zeros(2, 192))


def test_slot_memory_is_sized_for_max_rank():
    buffers = LoraBuffers.allocate(num_slots=4, max_rank=64, in_features=4096,
                                   out_features=1024, dtype=torch.bfloat16)
    # A and B at rank 64 in bf16, plus an fp32 scale and an int32 rank.
    assert buffers.num_bytes_per_slot == 64 * (4096 + 1024) * 2 + 8


@pytest.mark.parametrize("kernel", [sgmv_torch, blocked_torch], ids=["grouped", "blocked"])
@pytest.mark.parametrize("used, slot_range", [((0, 1, 3), (0, 4)), ((0, 5, 11), None)],
                         ids=["slot-range", "gathered"])
def test_a_worker_sized_for_rank_64_computes_rank_16_adapters_at_rank_16(kernel, used,
                                                                         slot_range):
    """Users size --max-lora-rank for their largest adapter and serve mostly small ones.
    The torch paths compute (and copy) only up to the largest rank among the step's
    adapters: the slots' rows past it are never read (they hold NaN here, which any read
    would spread), idle slots of higher rank included, and q|k|v come out exact."""
    sizes = (192, 64, 64)
    ranks = [64] * 12
    for slot, rank in zip(used, (16, 8, 16), strict=True):
        ranks[slot] = rank
    buffers = filled_buffers(ranks, 64, 256, sizes, torch.float32, seed=4)
    for slot in used:  # the step's slots: rank 16 at most
        for index, columns in enumerate(buffers.slice_columns):
            buffers.slice_a(slot, index)[16:] = float("nan")
            buffers.lora_b[slot, 16:, columns] = float("nan")
    a, b, c = used
    slots = [a, b, c, a, b, c, None, a]  # the other slots (rank 64) sit idle
    assert LoraBatch.from_slots(slots).slot_blocks.slot_range == slot_range
    x = torch.randn(len(slots), 256, generator=torch.Generator().manual_seed(5))
    y = torch.zeros(len(slots), sum(sizes))
    kernel(y, x, buffers, batch=LoraBatch.from_slots(slots))
    assert not y.isnan().any()
    torch.testing.assert_close(y, reference_lora(torch.zeros_like(y), x, buffers, slots),
                               atol=1e-5, rtol=1e-5)
