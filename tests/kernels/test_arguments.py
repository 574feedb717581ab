"""Bad input to the kernels' API raises a ValueError that names the problem."""

from __future__ import annotations

import pytest
import torch

from lorafleet.kernels import LoraBatch, LoraBuffers, add_lora


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
    add_lora(y, torch.ones(2, 8), buffers.lora_a, buffers.lora_b, buffers.scale, buffers.ranks,
             batch=batch)
    assert torch.equal(y, torch.ones(2, 8))


@pytest.mark.parametrize(
    "slots, message",
    [([0, -1], r"slots\[1\]"), ([0, 1.0], r"slots\[1\]"), ([True], r"slots\[0\]"),
     (torch.tensor([0, -1]), "negative slot"), (torch.tensor([0.5]), "integer")],
)
def test_batch_rejects_bad_slots(slots, message):
    with pytest.raises(ValueError, match=message):
        LoraBatch.from_slots(slots)


def _args(**overrides):
    buffers = LoraBuffers.allocate(num_slots=2, max_rank=4, in_features=8, out_features=6,
                                   dtype=torch.float32)
    args = {"y": torch.zeros(3, 6), "x": torch.zeros(3, 8), "lora_a": buffers.lora_a,
            "lora_b": buffers.lora_b, "scale": buffers.scale, "ranks": buffers.ranks,
            "batch": LoraBatch.from_slots([0, None, 1])}
    return {**args, **overrides}


@pytest.mark.parametrize(
    "overrides, message",
    [({"x": torch.zeros(3, 9)}, "x has shape"),
     ({"y": torch.zeros(3, 6, dtype=torch.float16)}, "y dtype"),
     ({"x": torch.zeros(3, 8, dtype=torch.int32)}, "x must be float32"),
     ({"scale": torch.zeros(2, dtype=torch.float16)}, "scale must be float32"),
     ({"ranks": torch.zeros(3, dtype=torch.int32)}, "ranks has shape"),
     ({"x": torch.zeros(8, 3).t()}, "contiguous columns"),
     ({"batch": LoraBatch.from_slots([0, None, 2])}, "slot 2 but the buffers have 2 slots"),
     ({"ranks": torch.tensor([5, 1], dtype=torch.int32)}, r"ranks\[0\] = 5")],
)
def test_add_lora_rejects_bad_arguments(overrides, message):
    args = _args(**overrides)
    batch = args.pop("batch")
    with pytest.raises(ValueError, match=message):
        add_lora(*args.values(), batch=batch)


@pytest.mark.parametrize(
    "a_shape, b_shape, message",
    [((4, 8), (6, 4), None), ((5, 8), (6, 5), "rank 5"), ((2, 7), (6, 2), "do not fit")],
)
def test_write_slot_checks_the_adapter(a_shape, b_shape, message):
    buffers = LoraBuffers.allocate(num_slots=1, max_rank=4, in_features=8, out_features=6,
                                   dtype=torch.float32)
    if message is None:
        buffers.write_slot(0, torch.ones(a_shape), torch.ones(b_shape), 1.0)
        assert int(buffers.ranks[0]) == 4
        return
    with pytest.raises(ValueError, match=message):
        buffers.write_slot(0, torch.ones(a_shape), torch.ones(b_shape), 1.0)
    with pytest.raises(ValueError, match="slot 1"):
        buffers.clear_slot(1)
