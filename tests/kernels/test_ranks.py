"""Adapters below max_rank: padded slots give exactly what the unpadded adapter computes."""

from __future__ import annotations

import pytest
import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.blocked import blocked_torch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora
from lorafleet.kernels.sgmv import sgmv_torch


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
        buffers.lora_b[slot, :, rank:] = -1e3
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
