"""Bad input to the kernels' API raises a ValueError that names the problem."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora


def test_batch_from_list_groups_rows_by_slot():
    batch = LoraBatch.from_slots([2, None, 0, 2, 1, None, 0])
    assert batch.token_order.tolist() == [2, 6, 4, 0, 3]
    assert batch.segments == ((0, 2, 0), (2, 1, 1), (3, 2, 2))
    assert batch.segment_slots.tolist() == [0, 1, 2]
    assert batch.token_slots.tolist() == [2, -1, 0, 2, 1, -1, 0]
    assert (batch.num_tokens, batch.num_segments, batch.max_slot) == (7, 3, 2)
    assert not batch.is_bgmv and batch.sorted_rows_start is None


def test_batch_from_tensor_and_decode_flag():
    batch = LoraBatch.from_slots(torch.tensor([3, 1, 0]))
    assert batch.is_bgmv and batch.segments == ((0, 1, 0), (1, 1, 1), (2, 1, 3))


def test_batch_without_adapters_changes_nothing():
    batch = LoraBatch.from_slots([None, None])
    assert batch.num_segments == 0 and batch.max_slot is None
    buffers = LoraBuffers.allocate(num_slots=1, max_rank=4, in_features=8, out_features=8,
                                   dtype=torch.float32)
    y = torch.ones(2, 8)
    add_lora(y, torch.ones(2, 8), buffers, batch=batch)
    assert torch.equal(y, torch.ones(2, 8))


@pytest.mark.parametrize(
    "slots, message",
    [([0, -1], r"slots\[1\]"), ([0, 1.0], r"slots\[1\]"), ([True], r"slots\[0\]"),
     (torch.tensor([0, -1]), "negative slot"), (torch.tensor([0.5]), "integer")],
)
def test_batch_rejects_bad_slots(slots, message):
    with pytest.raises(ValueError, match=message):
        LoraBatch.from_slots(slots)


def _buffers() -> LoraBuffers:
    return LoraBuffers.allocate(num_slots=2, max_rank=4, in_features=8, out_features=6,
                                dtype=torch.float32)


@pytest.mark.parametrize(
    "y, x, slots, message",
    [(torch.zeros(3, 6), torch.zeros(3, 9), [0, None, 1], "x has shape"),
     (torch.zeros(3, 6, dtype=torch.float16), torch.zeros(3, 8), [0, None, 1], "y dtype"),
     (torch.zeros(3, 6), torch.zeros(3, 8, dtype=torch.int32), [0, None, 1], "x dtype"),
     (torch.zeros(3, 6), torch.zeros(8, 3).t(), [0, None, 1], "contiguous columns"),
     (torch.zeros(3, 6), torch.zeros(3, 8), [0, None, 2], "slot 2 but the buffers have 2 slots")],
)
def test_add_lora_rejects_bad_arguments(y, x, slots, message):
    with pytest.raises(ValueError, match=message):
        add_lora(y, x, _buffers(), batch=LoraBatch.from_slots(slots))


@pytest.mark.parametrize(
    "field, value, message",
    [("scale", torch.zeros(2, 1, dtype=torch.float16), "scale must be float32"),
     ("ranks", torch.zeros(3, 1, dtype=torch.int32), "ranks has shape"),
     ("ranks", torch.tensor([[5], [1]], dtype=torch.int32), r"ranks must lie in \[0, max_rank=4\]"),
     ("lora_b", torch.zeros(2, 6, 4, dtype=torch.float16), "share a float dtype"),
     ("slice_sizes", (3, 3), "lora_a has shape")],
)
def test_buffers_are_checked_once_when_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(_buffers(), **{field: value})


@pytest.mark.parametrize(
    "a_shape, b_shape, message",
    [((4, 8), (6, 4), None), ((5, 8), (6, 5), "rank 5"), ((2, 7), (6, 2), "do not fit")],
)
def test_write_slot_checks_the_adapter(a_shape, b_shape, message):
    buffers = LoraBuffers.allocate(num_slots=1, max_rank=4, in_features=8, out_features=6,
                                   dtype=torch.float32)
    if message is None:
        buffers.write_slot(0, [(torch.ones(a_shape), torch.ones(b_shape), 1.0)])
        assert buffers.ranks.tolist() == [[4]]
        return
    with pytest.raises(ValueError, match=message):
        buffers.write_slot(0, [(torch.ones(a_shape), torch.ones(b_shape), 1.0)])
    with pytest.raises(ValueError, match="slot 1"):
        buffers.clear_slot(1)
