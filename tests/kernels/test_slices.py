"""Fused projection groups (q|k|v, gate|up): one call adds every slice's delta to its columns.

Checked against each projection's own LoRA computed from the adapter's weights, with mixed
ranks per slice and adapters that leave some projections of the group alone.
"""

from __future__ import annotations

import pytest
import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.cpu.blocked import blocked_torch
from lorafleet.kernels.dispatch import add_lora
from lorafleet.kernels.sgmv import sgmv_torch

IN_FEATURES = 96
SIZES = (64, 32, 32)  # q, k, v of a GQA layer
MAX_RANK = 16
# Per slot, the rank of q, k and v; 0: the adapter leaves that projection alone.
SLOT_RANKS = [(8, 0, 8), (16, 16, 16), (4, 12, 0), (0, 0, 0), (0, 8, 0)]
KERNELS = {"add_lora": add_lora, "grouped": sgmv_torch, "blocked": blocked_torch}


def _adapters(seed: int) -> list[list[tuple | None]]:
    """Per slot, per slice: (A [r, in], B [out, r], scale) or None."""
    gen = torch.Generator().manual_seed(seed)
    adapters = []
    for slot, ranks in enumerate(SLOT_RANKS):
        slices = []
        for index, (rank, size) in enumerate(zip(ranks, SIZES, strict=True)):
            a = torch.randn(rank, IN_FEATURES, generator=gen) / IN_FEATURES**0.5
            b = torch.randn(size, rank, generator=gen)
            slices.append((a, b, 0.25 + slot + index) if rank else None)
        adapters.append(slices)
    return adapters


def _fused(adapters) -> LoraBuffers:
    buffers = LoraBuffers.allocate(num_slots=len(adapters), max_rank=MAX_RANK,
                                   in_features=IN_FEATURES, out_features=SIZES,
                                   dtype=torch.float32)
    for slot, slices in enumerate(adapters):
        buffers.write_slot(slot, slices)
    return buffers


def _expected(y, x, adapters, slots) -> torch.Tensor:
    """Each projection's own LoRA, from the adapter's weights, one row at a time."""
    out, start = y.clone(), 0
    for index, size in enumerate(SIZES):
        for row, slot in enumerate(slots):
            weights = None if slot is None else adapters[slot][index]
            if weights is not None:
                a, b, scale = weights
                out[row, start:start + size] += scale * (x[row] @ a.T) @ b.T
        start += size
    return out


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("slots", [[0, 1, None, 2, 3, 4], [1, 1, 1, 0, 0, None, 2, 2, 4]],
                         ids=["decode", "prefill"])
def test_one_call_adds_each_slice_to_its_columns(kernel, slots):
    adapters = _adapters(seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(slots), IN_FEATURES, generator=gen)
    y = torch.randn(len(slots), sum(SIZES), generator=gen)
    expected = _expected(y, x, adapters, slots)
    KERNELS[kernel](y, x, _fused(adapters), batch=LoraBatch.from_slots(slots))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_fused_group_equals_one_buffer_per_projection():
    """The one-slice case is the same code: three unfused calls give the fused call's sums."""
    adapters = _adapters(seed=2)
    slots = [4, 0, None, 1, 2, 3, 0]
    x = torch.randn(len(slots), IN_FEATURES)
    fused_y = torch.zeros(len(slots), sum(SIZES))
    batch = LoraBatch.from_slots(slots)
    add_lora(fused_y, x, _fused(adapters), batch=batch)
    start = 0
    for index, size in enumerate(SIZES):
        single = LoraBuffers.allocate(num_slots=len(adapters), max_rank=MAX_RANK,
                                      in_features=IN_FEATURES, out_features=size,
                                      dtype=torch.float32)
        for slot, slices in enumerate(adapters):
            if slices[index] is not None:
                single.write_slot(slot, [slices[index]])
        y = torch.zeros(len(slots), size)
        add_lora(y, x, single, batch=batch)
        torch.testing.assert_close(fused_y[:, start:start + size], y, atol=1e-6, rtol=1e-6)
        start += size


def test_slices_an_adapter_leaves_alone_get_nothing():
    adapters = _adapters(seed=3)
    x, y = torch.randn(2, IN_FEATURES), torch.zeros(2, sum(SIZES))
    add_lora(y, x, _fused(adapters), batch=LoraBatch.from_slots([0, 4]))  # q,v only; k only
    q, k, v = y.split(SIZES, dim=1)
    assert torch.equal(k[0], torch.zeros(32)) and q[0].abs().sum() > 0 and v[0].abs().sum() > 0
    assert torch.equal(q[1], torch.zeros(64)) and torch.equal(v[1], torch.zeros(32))
    assert k[1].abs().sum() > 0


def test_rewriting_a_slot_drops_the_slices_the_new_adapter_leaves_alone():
    adapters = _adapters(seed=4)
    buffers = _fused(adapters)
    buffers.write_slot(1, adapters[4])  # slot 1 had q, k and v; the new adapter only k
    x = torch.randn(3, IN_FEATURES)
    for kernel in (sgmv_torch, blocked_torch):
        y = torch.zeros(3, sum(SIZES))
        kernel(y, x, buffers, batch=LoraBatch.from_slots([1, 1, 1]))
        expected = _expected(torch.zeros(3, sum(SIZES)), x, adapters, [4, 4, 4])
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert buffers.ranks[1].tolist() == [0, 8, 0]


@pytest.mark.parametrize(
    "slices, message",
    [([None, None], "2 slices for a group of 3"),
     ([None, (torch.ones(4, IN_FEATURES), torch.ones(64, 4), 1.0), None], "slice 1"),
     ([(torch.ones(17, IN_FEATURES), torch.ones(64, 17), 1.0), None, None], "rank 17")],
)
def test_write_slot_names_the_slice_that_does_not_fit(slices, message):
    buffers = _fused(_adapters(seed=5))
    with pytest.raises(ValueError, match=message):
        buffers.write_slot(0, slices)


def test_slot_memory_of_a_group_is_that_of_its_projections():
    buffers = LoraBuffers.allocate(num_slots=2, max_rank=16, in_features=4096,
                                   out_features=(4096, 1024, 1024), dtype=torch.bfloat16)
    # A [3 x 16, 4096] and B [6144, 16] in bf16, plus an fp32 scale and an int32 rank per slice.
    assert buffers.num_bytes_per_slot == (3 * 16 * 4096 + 6144 * 16) * 2 + 3 * 8
    assert buffers.slice_starts.tolist() == [0, 4096, 5120, 6144]
