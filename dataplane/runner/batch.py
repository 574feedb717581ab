"""One step's immutable batch description, built from the scheduler's plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable

import torch

from lorafleet.dataplane.engine.scheduler import ScheduledRequest, SchedulerOutput
from lorafleet.dataplane.model.attention import AttentionMetadata, PrefillSpan


@dataclasses.dataclass(frozen=True)
class StepBatch:
    """Everything the model needs for one step, as tensors on the runner's device.

    Rows are tokens: decodes first, then prefill chunks. `sample_rows` are the rows whose
    logits are sampled, one per entry of `sampling` (the scheduled requests that sample).
    `adapter_slots` [num_tokens] holds each token's adapter slot for the LoRA kernels
    (their convention: -1 is the base model), or is None when no token uses an adapter.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    attention: AttentionMetadata
    sample_rows: torch.Tensor
    sampling: tuple[ScheduledRequest, ...]
    adapter_slots: torch.Tensor | None


class BatchBuilder:
    """Turns a SchedulerOutput into a StepBatch for a cache with `block_size` tokens per block."""

    def __init__(
        self, block_size: int, device: torch.device, sliding_window: int | None,
        adapter_slot: Callable[[Hashable], int] | None = None,
    ) -> None:
        self.block_size = block_size
        self.device = device
        self.sliding_window = sliding_window
        self._adapter_slot = adapter_slot

    def build(self, plan: SchedulerOutput) -> StepBatch:
        """Orders the step's requests (decodes first) and lays out their tokens."""
        entries = sorted(plan.scheduled, key=lambda e: len(e.token_ids) > 1)
        ids, positions, slots, sample_rows = [], [], [], []
        for entry in entries:
            start, stop = entry.start_position, entry.start_position + len(entry.token_ids)
            ids.extend(entry.token_ids)
            positions.extend(range(start, stop))
            slots.extend(self._slots(entry.block_table, start, stop))
            if entry.is_sampling:
                sample_rows.append(len(ids) - 1)
        num_decodes = sum(1 for e in entries if len(e.token_ids) == 1)
        decode_tables, decode_mask = self._decode_layout(entries[:num_decodes])
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots), num_decodes=num_decodes,
            decode_block_tables=decode_tables, decode_mask=decode_mask,
            prefills=self._prefill_spans(entries[num_decodes:], num_decodes),
        )
        return StepBatch(
            input_ids=self._tensor(ids), positions=self._tensor(positions), attention=meta,
            sample_rows=self._tensor(sample_rows),
            sampling=tuple(e for e in entries if e.is_sampling),
            adapter_slots=self._adapter_slots(entries),
        )

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _slots(self, block_table, start: int, stop: int) -> list[int]:
        size = self.block_size
        return [block_table[p // size] * size + p % size for p in range(start, stop)]

    def _decode_layout(self, decodes: list[ScheduledRequest]):
        """Padded block tables and the key mask of the single-query sequences."""
        if not decodes:
            return None, None
        num_blocks = max(len(e.block_table) for e in decodes)
        # Padding points at block 0, a real block; the mask hides whatever it holds.
        tables = [list(e.block_table) + [0] * (num_blocks - len(e.block_table)) for e in decodes]
        context = self._tensor([e.start_position + 1 for e in decodes])
        keys = torch.arange(num_blocks * self.block_size, device=self.device)
        mask = keys[None, :] < context[:, None]
        if self.sliding_window is not None:
            mask &= keys[None, :] > (context[:, None] - 1 - self.sliding_window)
        return self._tensor(tables), mask[:, None, None, :]

    def _prefill_spans(self, prefills: list[ScheduledRequest], row: int) -> tuple:
        """Per-sequence spans of multi-token chunks, with their causal masks."""
        spans = []
        for entry in prefills:
            num_new = len(entry.token_ids)
            num_context = entry.start_position + num_new
            num_blocks = -(-num_context // self.block_size)
            spans.append(PrefillSpan(
                start=row, stop=row + num_new, num_context=num_context,
                block_table=self._tensor(list(entry.block_table[:num_blocks])),
                mask=self._prefill_mask(entry.start_position, num_new),
            ))
            row += num_new
        return tuple(spans)

    def _prefill_mask(self, start: int, num_new: int) -> torch.Tensor | None:
        """[num_new, start + num_new] causal mask; None when plain causal attention fits."""
        if start == 0 and self.sliding_window is None:
            return None
        queries = torch.arange(start, start + num_new, device=self.device)[:, None]
        keys = torch.arange(start + num_new, device=self.device)[None, :]
        mask = keys <= queries
        if self.sliding_window is not None:
            mask &= keys > queries - self.sliding_window
        return mask

    def _adapter_slots(self, entries: list[ScheduledRequest]) -> torch.Tensor | None:
        """Per-token adapter slots, or None when the whole step runs the base model."""
        if all(e.adapter is None for e in entries):
            return None
        if self._adapter_slot is None:
            raise ValueError("a request names an adapter but the runner has no adapter slots")
        slots = []
        for e in entries:
            slot = -1 if e.adapter is None else self._adapter_slot(e.adapter)
            slots.extend([slot] * len(e.token_ids))
        return self._tensor(slots)
