"""Device slots: one `LoraBuffers` per (layer, projection group), preallocated at start.

A projection group is what the model computes in one matmul (q|k|v, o, gate|up, down; see
`lora_seam.PROJECTION_GROUPS`): its buffers stack the group's A's along the rank and its
B's along the output, so the model adds the whole group's delta with one kernel call.
Every slot is sized for `max_lora_rank` so an adapter of any allowed rank fits any slot
without allocating during serving; the memory of ranks below the maximum is padding. The
kernels read only each slot's real rank (loads are masked at `ranks[slot]`), so padding
costs memory, not compute. The buffers are allocated before the KV cache is sized, so
the KV cache gets what is left.
"""

from __future__ import annotations

import dataclasses

import torch

from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.model.lora_seam import PROJECTION_GROUPS
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora


class DeviceSlotBank:
    """`num_slots` adapter slots across every layer and projection group of the model."""

    def __init__(self, config: ModelConfig, *, num_slots: int, max_rank: int,
                 dtype: torch.dtype, device: torch.device | str):
        if num_slots < 1:
            raise ValueError(f"max_loras must be at least 1, got {num_slots}")
        if max_rank < 1:
            raise ValueError(f"max_lora_rank must be at least 1, got {max_rank}")
        shapes = config.projection_shapes()
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.num_layers = config.num_layers
        self._buffers = {
            (layer, group): LoraBuffers.allocate(
                num_slots=num_slots, max_rank=max_rank, in_features=shapes[names[0]][0],
                out_features=[shapes[name][1] for name in names], dtype=dtype, device=device)
            for layer in range(config.num_layers) for group, names in PROJECTION_GROUPS.items()
        }

    @property
    def num_bytes_per_slot(self) -> int:
        """Bytes one adapter slot takes across all layers and projections."""
        return sum(b.num_bytes_per_slot for b in self._buffers.values())

    @property
    def num_bytes(self) -> int:
        """Bytes of all slots."""
        return self.num_bytes_per_slot * self.num_slots

    def buffers(self, layer: int, group: str) -> LoraBuffers | None:
        """The slots of one projection group, or None when the bank does not cover it."""
        return self._buffers.get((layer, group))

    def write(self, slot: int, adapter) -> None:
        """Copies a LoadedAdapter into `slot`, stacking each group's projections; the
        projections it leaves alone add nothing."""
        covered = {(layer, name) for layer in range(self.num_layers)
                   for names in PROJECTION_GROUPS.values() for name in names}
        unknown = {key for key in adapter.modules if key not in covered}
        if unknown:
            raise ValueError(f"adapter changes modules this worker has no slots for: "
                             f"{sorted(unknown)[:4]}")
        for (layer, group), buffers in self._buffers.items():
            slices = [adapter.modules.get((layer, name)) for name in PROJECTION_GROUPS[group]]
            if all(weights is None for weights in slices):
                buffers.clear_slot(slot)
            else:
                buffers.write_slot(slot, [None if w is None else (w.a, w.b, w.scale)
                                          for w in slices])

    def clear(self, slot: int) -> None:
        """Empties `slot` everywhere."""
        for buffers in self._buffers.values():
            buffers.clear_slot(slot)


@dataclasses.dataclass(frozen=True)
class LoraStep:
    """The LoRA part of one step: which slot each row uses, and the slots themselves.

    The model calls `add_delta` once per (layer, projection group); it is the only place
    LoRA math enters the forward pass.
    """

    bank: DeviceSlotBank
    batch: LoraBatch

    def add_delta(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """y += the LoRA delta of each row's adapter for this projection group, in place."""
        buffers = self.bank.buffers(layer, group)
        if buffers is not None:
            # Checked once: the buffers when constructed, the rows by the batch builder
            # (x and y have one row per token of the step).
            add_lora(y, x, buffers, batch=self.batch, is_checked=True)
