"""`LoraBuffers`: the preallocated adapter slots of one (layer, projection), in kernel layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoraBuffers:
    """Stacked A/B weights for `num_slots` adapters at `max_rank`, written in place per slot.

    The dataclass is frozen (the tensors never change identity); their contents change when
    an adapter is written into or cleared from a slot. Pass the fields to `add_lora`.

    Attributes:
        lora_a: [num_slots, max_rank, in_features], shrink weights.
        lora_b: [num_slots, out_features, max_rank], expand weights.
        scale: fp32 [num_slots], the adapter's scale (alpha / r, or alpha / sqrt(r)).
        ranks: int32 [num_slots], each slot's actual rank; 0 for an empty slot.
    """

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scale: torch.Tensor
    ranks: torch.Tensor

    @classmethod
    def allocate(
        cls,
        *,
        num_slots: int,
        max_rank: int,
        in_features: int,
        out_features: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> LoraBuffers:
        """Zeroed buffers with every slot empty."""
        if min(num_slots, max_rank, in_features, out_features) <= 0:
            raise ValueError("num_slots, max_rank, in_features and out_features must be positive")
        return cls(
            lora_a=torch.zeros((num_slots, max_rank, in_features), dtype=dtype, device=device),
            lora_b=torch.zeros((num_slots, out_features, max_rank), dtype=dtype, device=device),
            scale=torch.zeros(num_slots, dtype=torch.float32, device=device),
            ranks=torch.zeros(num_slots, dtype=torch.int32, device=device),
        )

    @property
    def num_slots(self) -> int:
        """Adapter slots in these buffers."""
        return self.lora_a.shape[0]

    @property
    def max_rank(self) -> int:
        """The rank every slot is sized for."""
        return self.lora_a.shape[1]

    @property
    def num_bytes_per_slot(self) -> int:
        """Bytes one slot occupies (A and B at max_rank, plus its scale and rank)."""
        weights = (self.lora_a[0].numel() + self.lora_b[0].numel()) * self.lora_a.element_size()
        return weights + self.scale.element_size() + self.ranks.element_size()

    def write_slot(self, slot: int, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> None:
        """Copies a rank-r adapter (A [r, in], B [out, r]) into `slot`, zero-padded to max_rank.

        The kernels never read the padding (loads are masked at the slot's rank); zeroing it
        keeps stale weights of a previous adapter out of the buffer anyway.
        """
        self._check_slot(slot)
        in_features, out_features = self.lora_a.shape[2], self.lora_b.shape[1]
        rank = lora_a.shape[0] if lora_a.dim() == 2 else None
        if lora_a.shape != (rank, in_features) or lora_b.shape != (out_features, rank):
            raise ValueError(
                f"adapter A {tuple(lora_a.shape)} / B {tuple(lora_b.shape)} do not fit "
                f"A [r, {in_features}] / B [{out_features}, r]"
            )
        if not 0 < rank <= self.max_rank:
            raise ValueError(f"adapter rank {rank} is outside [1, max_rank={self.max_rank}]")
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.lora_a[slot, :rank].copy_(lora_a)
        self.lora_b[slot, :, :rank].copy_(lora_b)
        self.scale[slot] = scale
        self.ranks[slot] = rank

    def clear_slot(self, slot: int) -> None:
        """Marks `slot` empty: rows that still point at it get nothing added."""
        self._check_slot(slot)
        self.ranks[slot] = 0
        self.scale[slot] = 0.0

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is outside [0, {self.num_slots})")
