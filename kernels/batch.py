"""`LoraBatch`: the per-step description of which adapter slot each row of a batch uses."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# A step is decode-like (BGMV) when no adapter has more than this many rows in it: a
# row tile of the segmented kernel would then be mostly masked-out padding.
_BGMV_MAX_ROWS_PER_ADAPTER = 1
# Slot blocks (see `SlotBlocks`) span the slot range from the lowest slot in the step to the
# highest when it holds at most this many slots per adapter in the step: the buffers are
# then read through views, idle slots in the range included; past it the used slots'
# weights are gathered (copied) first. Measured on the 2-core CPU (32 decode rows, one
# thread, ms; range vs gathered): 32 adapters in 32 consecutive slots, hidden 1024,
# q|k|v 0.98 vs 3.18, gate|up 1.58 vs 4.39; 16 adapters over 32 slots, q|k|v 1.46 vs 1.80,
# hidden 256 0.42 vs 0.30; 16 over 48 slots, q|k|v 2.25 vs 1.28; 8 over 32: 1.39 vs 0.58.
_MAX_RANGE_PER_ADAPTER = 1.5


@dataclass(frozen=True)
class SlotBlocks:
    """The step's adapter rows laid out as one block of `block_rows` rows per slot.

    Block b holds the rows of one slot; a slot with fewer rows (or none: an idle slot inside
    the range) is padded with copies of an adapter row whose results are never read back.
    With blocks, a shrink or an expand over every adapter in the step is one batched matmul
    (`blocked_torch`), instead of a few small matmuls per adapter. The sizes are plain
    ints, cheap enough for the dispatcher to weigh every step; the index tensors are built
    only when the blocked path runs.

    Attributes:
        num_blocks: blocks (slots) in the layout.
        block_rows: rows per block, the longest segment's length.
        slot_range: (first, end) when block b is slot first + b (the buffers are then
            sliced, not copied); None when the blocks are the used slots, gathered.
        is_dense: True when there is no padding (`padded_rows` is 0, 1, 2, ...).
    """

    num_blocks: int
    block_rows: int
    slot_range: tuple[int, int] | None
    is_dense: bool
    segments: tuple[tuple[int, int, int], ...]  # the batch's (start, length, slot)
    token_order: torch.Tensor  # the batch's rows sorted by slot

    @property
    def num_padded_rows(self) -> int:
        """Rows the batched matmuls compute, padding included."""
        return self.num_blocks * self.block_rows

    @functools.cached_property
    def block_slots(self) -> torch.Tensor:
        """int64 [num_blocks], the slot of each block (for gathering)."""
        if self.slot_range is not None:
            slots = list(range(*self.slot_range))
        else:
            slots = [slot for _, _, slot in self.segments]
        return torch.tensor(slots, dtype=torch.int64, device=self.token_order.device)

    @functools.cached_property
    def padded_rows(self) -> torch.Tensor:
        """int64 [num_adapter_tokens], where sorted row j (`token_order[j]`) sits among the
        padded rows."""
        first = self.slot_range[0] if self.slot_range is not None else 0
        padded = [((slot - first) if self.slot_range is not None else index) * self.block_rows
                  + offset
                  for index, (_, length, slot) in enumerate(self.segments)
                  for offset in range(length)]
        return torch.tensor(padded, dtype=torch.int64, device=self.token_order.device)

    @functools.cached_property
    def source_rows(self) -> torch.Tensor:
        """int64 [num_padded_rows], the row of x each padded row reads."""
        source = torch.full((self.num_padded_rows,), int(self.token_order[0]),
                            dtype=torch.int64, device=self.token_order.device)
        source[self.padded_rows] = self.token_order
        return source


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
        is_static: built by `static` over a buffer whose slots change between uses (a CUDA
            graph's): only BGMV reads it, and launches whatever the segment table says.
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
    is_static: bool = False

    @property
    def num_segments(self) -> int:
        """Segments (distinct adapters) in this step."""
        return len(self.segments)

    @functools.cached_property  # built on first use, then shared by every layer of the step
    def slot_blocks(self) -> SlotBlocks | None:
        """The rows as one block per slot (`SlotBlocks`); None when no row has an adapter."""
        if not self.segments:
            return None
        first, end = self.segments[0][2], self.segments[-1][2] + 1
        is_range = end - first <= _MAX_RANGE_PER_ADAPTER * self.num_segments
        num_blocks = end - first if is_range else self.num_segments
        block_rows = self.max_segment_length
        return SlotBlocks(
            num_blocks=num_blocks,
            block_rows=block_rows,
            slot_range=(first, end) if is_range else None,
            is_dense=len(self.token_order) == num_blocks * block_rows,
            segments=self.segments,
            token_order=self.token_order,
        )

    def shrunk_workspace(self, num_columns: int, device: torch.device) -> torch.Tensor:
        """fp32 [num_tokens, num_columns]: where the Triton kernels keep x @ A^T between
        the shrink and the expand. One buffer per step, shared by every layer and
        projection group (their launches run one after another on one stream, and an
        expand reads only what its own shrink wrote), so a step allocates it once, and a
        captured graph holds one, not one per call. Its contents are garbage."""
        held = self._workspace.get(device)
        if held is None or held.shape[1] < num_columns:
            held = torch.empty((self.num_tokens, num_columns), dtype=torch.float32,
                               device=device)
            self._workspace[device] = held
        return held[:, :num_columns]

    @functools.cached_property
    def _workspace(self) -> dict[torch.device, torch.Tensor]:
        return {}

    @property
    def max_slot(self) -> int | None:
        """The highest slot used, or None when no row has an adapter."""
        return max((slot for _, _, slot in self.segments), default=None)

    @classmethod
    def static(cls, token_slots: torch.Tensor) -> LoraBatch:
        """A BGMV batch over `token_slots` (int32, -1: no adapter), read by the kernels
        when they run, not now: the slots may change between launches (CUDA graph
        replays). It has no segment table, so only the Triton BGMV kernels take it."""
        if token_slots.dim() != 1 or token_slots.dtype != torch.int32:
            raise ValueError("static token_slots must be a 1-D int32 tensor")
        empty = token_slots.new_zeros(0)
        return cls(num_tokens=len(token_slots), token_slots=token_slots,
                   token_order=empty.long(), segment_starts=empty, segment_lengths=empty,
                   segment_slots=empty, segments=(), sorted_rows_start=None,
                   max_segment_length=1, is_bgmv=True, is_static=True)

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
