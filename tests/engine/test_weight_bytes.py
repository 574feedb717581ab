"""The model reports the memory its weights take (used for memory accounting)."""

from __future__ import annotations

import torch
from safetensors import safe_open

from lorafleet.dataplane.model.decoder import DecoderModel


def _file_bytes(directory) -> int:
    total = 0
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open objects are not iterable)
            tensor = f.get_tensor(name)
            total += tensor.numel() * tensor.element_size()
    return total


def test_weight_bytes_match_the_checkpoint(checkpoints):
    directory = checkpoints("llama-gqa")
    model = DecoderModel.from_dir(directory, "cpu", torch.float32)
    assert model.weights.num_bytes() == _file_bytes(directory)


def test_tied_head_is_counted_once(checkpoints):
    directory = checkpoints("llama-tied")
    model = DecoderModel.from_dir(directory, "cpu", torch.float32)
    assert model.weights.num_bytes() == _file_bytes(directory)
