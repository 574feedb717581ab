"""Device slots: one `LoraBuffers` per (layer, projection), preallocated at start.

Every slot is sized for `max_lora_rank` so an adapter of any allowed rank fits any slot
without allocating during serving; the memory of ranks below the maximum is padding. The
kernels read only each slot's real rank (loads are masked at `ranks[slot]`), so padding
costs memory, not compute. The buffers are allocated before the KV cache is sized, so
the KV cache gets what is left.
"""

from __future__ import annotations

import dataclasses

import torch

from lorafleet.dataplane.model.config import PROJECTIONS, ModelConfig
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora


class DeviceSlotBank:
    """`num_slots` adapter slots across every layer and projection of the model."""

    def __init__(self, config: ModelConfig, *, num_slots: int, max_rank: int,
                 dtype: torch.dtype, device: torch.device | str,
                 projections: tuple[str, ...] = PROJECTIONS):
        if num_slots < 1:
            raise ValueError(f"max_loras must be at least 1, got {num_slots}")
        if max_rank < 1:
            raise ValueError(f"max_lora_rank must be at least 1, got {max_rank}")
        shapes = config.projection_shapes()
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.projections = projections
        self._buffers = {
            (layer, proj): LoraBuffers.allocate(
                num_slots=num_slots, max_rank=max_rank, in_features=shapes[proj][0],
                out_features=shapes[proj][1], dtype=dtype, device=device)
            for layer in range(config.num_layers) for proj in projections
        }

    @property
    def num_bytes_per_slot(self) -> int:
        """Bytes one adapter slot takes across all layers and projections."""
        return sum(b.num_bytes_per_slot for b in self._buffers.values())

    @property
    def num_bytes(self) -> int:
        """Bytes of all slots."""
        return self.num_bytes_per_slot * self.num_slots

    def buffers(self, layer: int, projection: str) -> LoraBuffers | None:
        """The slots of one projection, or None when the bank does not cover it."""
        return self._buffers.get((layer, projection))

    def write(self, slot: int, adapter) -> None:
        """Copies a LoadedAdapter into `slot`; projections it leaves alone add nothing."""
        unknown = {key for key in adapter.modules if key not in self._buffers}
        if unknown:
            raise ValueError(f"adapter changes modules this worker has no slots for: "
                             f"{sorted(unknown)[:4]}")
        for key, buffers in self._buffers.items():
            weights = adapter.modules.get(key)
            if weights is None:
                buffers.clear_slot(slot)
            else:
                buffers.write_slot(slot, weights.a, weights.b, weights.scale)

    def clear(self, slot: int) -> None:
        """Empties `slot` everywhere."""
        for buffers in self._buffers.values():
            buffers.clear_slot(slot)


@dataclasses.dataclass(frozen=True)
class LoraStep:
    """The LoRA part of one step: which slot each row uses, and the slots themselves.

    The model calls `add_delta` once per (layer, projection); it is the only place LoRA math
    enters the forward pass.
    """

    bank: DeviceSlotBank
    batch: LoraBatch

    def add_delta(self, layer: int, projection: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """y += the LoRA delta of each row's adapter for this projection, in place."""
        buffers = self.bank.buffers(layer, projection)
        if buffers is not None:
            # Checked once: the buffers by LoraBuffers.allocate, the rows by the batch
            # builder (x and y have one row per token of the step).
            add_lora(y, x, buffers.lora_a, buffers.lora_b, buffers.scale, buffers.ranks,
                     batch=self.batch, is_checked=True)

