"""`LoraBatch`: the per-step description of which adapter slot each row of a batch uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# A step is decode-like (BGMV) when no adapter has more than this many rows in it: a
# row tile of the segmented kernel would then be mostly masked-out padding.
_BGMV_MAX_ROWS_PER_ADAPTER = 1


@dataclass(frozen=True)
class LoraBatch:
    """Batch metadata for the LoRA kernels, built once per step with `from_slots`.

    Rows that use an adapter are listed in `token_order`, sorted by slot (stable, so rows of
    one slot keep their batch order). A *segment* is the run of sorted rows that share a
    slot: segment i covers `token_order[segment_starts[i]: segment_starts[i] + segment_lengths[i]]`
    and uses slot `segment_slots[i]`. Rows with no adapter are in no segment; they get
    nothing added.

    Tensors live on the kernels' device; `segments` repeats the segment table as Python ints
    so the torch path never reads a device tensor back.

    Attributes:
        num_tokens: rows in `x` and `y`.
        token_slots: int32 [num_tokens], the slot of each row; -1 marks "no adapter" and is
            for the kernels only (the API takes None).
        token_order: int64 [num_adapter_tokens], row indices sorted by slot.
        segment_starts: int32 [num_segments], offsets into `token_order`.
        segment_lengths: int32 [num_segments], rows per segment.
        segment_slots: int32 [num_segments], the slot of each segment.
        segments: (start, length, slot) per segment, as Python ints.
        sorted_rows_start: when the adapter rows are already one contiguous block of rows
            in slot order, its first row (the torch path then slices instead of gathering);
            otherwise None.
        max_segment_length: rows in the longest segment (0 when no row has an adapter).
        is_bgmv: True when every adapter has a single row in this step (decode-like),
            so the one-row-per-program BGMV kernels apply; otherwise SGMV.
    """

    num_tokens: int
    token_slots: torch.Tensor
    token_order: torch.Tensor
    segment_starts: torch.Tensor
    segment_lengths: torch.Tensor
    segment_slots: torch.Tensor
    segments: tuple[tuple[int, int, int], ...]
    sorted_rows_start: int | None
    max_segment_length: int
    is_bgmv: bool

    @property
    def num_segments(self) -> int:
        """Segments (distinct adapters) in this step."""
        return len(self.segments)

    @property
    def max_slot(self) -> int | None:
        """The highest slot used, or None when no row has an adapter."""
        return max((slot for _, _, slot in self.segments), default=None)

    @classmethod
    def from_slots(
        cls, slots: Sequence[int | None] | torch.Tensor, *, device: torch.device | str = "cpu"
    ) -> LoraBatch:
        """Builds the batch from the slot of each row.

        `slots` is a sequence with a slot index (int >= 0) or None (no adapter) per row, or
        an integer tensor of slot indices when every row has an adapter.
        """
        token_slots = _slots_tensor(slots)
        adapter_rows = torch.nonzero(token_slots >= 0).flatten()
        by_slot = torch.argsort(token_slots[adapter_rows], stable=True)
        token_order = adapter_rows[by_slot]
        seg_slots, seg_lengths = torch.unique_consecutive(
            token_slots[token_order], return_counts=True
        )
        seg_starts = torch.cumsum(seg_lengths, 0) - seg_lengths
        segments = tuple(zip(seg_starts.tolist(), seg_lengths.tolist(), seg_slots.tolist(), strict=True))
        max_length = max((length for _, length, _ in segments), default=0)
        as_int32 = {"dtype": torch.int32, "device": device}
        return cls(
            num_tokens=len(token_slots),
            token_slots=token_slots.to(**as_int32),
            token_order=token_order.to(device),
            segment_starts=seg_starts.to(**as_int32),
            segment_lengths=seg_lengths.to(**as_int32),
            segment_slots=seg_slots.to(**as_int32),
            segments=segments,
            sorted_rows_start=_sorted_rows_start(token_order),
            max_segment_length=max_length,
            is_bgmv=max_length <= _BGMV_MAX_ROWS_PER_ADAPTER,
        )


def _slots_tensor(slots: Sequence[int | None] | torch.Tensor) -> torch.Tensor:
    """int64 CPU tensor of slots with -1 for no adapter; raises on anything else."""
    if isinstance(slots, torch.Tensor):
        if slots.dim() != 1 or slots.dtype.is_floating_point or slots.dtype == torch.bool:
            raise ValueError(f"slots tensor must be 1-D integer, got {slots.dtype} {tuple(slots.shape)}")
        slots = slots.to("cpu", torch.int64)
        if len(slots) and int(slots.min()) < 0:
            raise ValueError("slots tensor has a negative slot; pass a list with None for rows without an adapter")
        return slots
    converted = []
    for row, slot in enumerate(slots):
        if slot is None:
            converted.append(-1)
        elif isinstance(slot, int) and not isinstance(slot, bool) and slot >= 0:
            converted.append(slot)
        else:
            raise ValueError(f"slots[{row}] must be a slot index >= 0 or None, got {slot!r}")
    return torch.tensor(converted, dtype=torch.int64)


def _sorted_rows_start(token_order: torch.Tensor) -> int | None:
    """First row when `token_order` is a run of consecutive rows, else None."""
    if len(token_order) == 0:
        return None
    first = int(token_order[0])
    expected = torch.arange(first, first + len(token_order))
    return first if torch.equal(token_order, expected) else None
