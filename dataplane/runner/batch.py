"""One step's immutable batch description, built from the scheduler's plan."""

from __future__ import annotations

import dataclasses

import torch

from lorafleet.dataplane.engine.scheduler import ScheduledRequest, SchedulerOutput
from lorafleet.dataplane.model.attention import (
    AttentionMetadata,
    DecodeGroup,
    PrefillSpan,
    runs_paged_kernels,
)
from lorafleet.kernels.attention_batch import PagedAttentionBatch
from lorafleet.kernels.batch import LoraBatch


@dataclasses.dataclass(frozen=True)
class StepBatch:
    """Everything the model needs for one step, as tensors on the runner's device.

    Rows are tokens: decodes first, then prefill chunks. `sample_rows` are the rows whose
    logits are sampled, one per entry of `sampling` (the scheduled requests that sample).
    `lora` says which adapter slot each row uses (built once per step), or is None when no
    token uses an adapter.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    attention: AttentionMetadata
    sample_rows: torch.Tensor
    sampling: tuple[ScheduledRequest, ...]
    lora: LoraBatch | None


class BatchBuilder:
    """Turns a SchedulerOutput into a StepBatch for a cache with `block_size` tokens per block.

    is_paged: also describe each step as a flat `PagedAttentionBatch` for the paged-attention
    kernels; None (the default): on CUDA only, so the CPU worker's steps pay nothing for it.
    The torch path's decode groups and prefill spans are built unless the kernels will run
    the step (CUDA with Triton), so on CPU `is_paged=True` gives both descriptions.
    """

    def __init__(self, block_size: int, device: torch.device, sliding_window: int | None,
                 *, is_paged: bool | None = None) -> None:
        self.block_size = block_size
        self.device = torch.device(device)
        self.sliding_window = sliding_window
        self.is_paged = self.device.type == "cuda" if is_paged is None else is_paged
        self.is_torch_path = not (self.is_paged and runs_paged_kernels(self.device))

    def build(self, plan: SchedulerOutput) -> StepBatch:
        """Orders the step's requests (decodes by context length, then prefill chunks) and
        lays out their tokens."""
        decodes = sorted((e for e in plan.scheduled if len(e.token_ids) == 1),
                         key=lambda e: e.start_position)
        entries = decodes + [e for e in plan.scheduled if len(e.token_ids) > 1]
        ids, positions, kv_positions, sample_rows = [], [], [], []
        for entry in entries:
            start, stop = entry.start_position, entry.start_position + len(entry.token_ids)
            ids.extend(entry.token_ids)
            positions.extend(range(start, stop))
            kv_positions.extend(self._kv_positions(entry.block_table, start, stop))
            if entry.is_sampling:
                sample_rows.append(len(ids) - 1)
        torch_path = self.is_torch_path
        meta = AttentionMetadata(
            kv_positions=self._tensor(kv_positions),
            decodes=self._decode_groups(decodes) if torch_path else (),
            prefills=self._prefill_spans(entries[len(decodes):], len(decodes)) if torch_path else (),
            paged=self._paged_batch(entries) if self.is_paged else None,
        )
        return StepBatch(
            input_ids=self._tensor(ids), positions=self._tensor(positions), attention=meta,
            sample_rows=self._tensor(sample_rows),
            sampling=tuple(e for e in entries if e.is_sampling),
            lora=self._lora_batch(entries),
        )

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _kv_positions(self, block_table, start: int, stop: int) -> list[int]:
        size = self.block_size
        return [block_table[p // size] * size + p % size for p in range(start, stop)]

    def _paged_batch(self, entries: list[ScheduledRequest]) -> PagedAttentionBatch:
        """The step as flat tensors (rows in `entries` order: decodes first)."""
        size = self.block_size
        contexts = [e.start_position + len(e.token_ids) for e in entries]
        return PagedAttentionBatch.from_sequences(
            [e.block_table[:-(-c // size)] for e, c in zip(entries, contexts, strict=True)],
            contexts, [len(e.token_ids) for e in entries],
            sliding_window=self.sliding_window, device=self.device)

    def _decode_groups(self, decodes: list[ScheduledRequest]) -> tuple[DecodeGroup, ...]:
        """Splits decodes (sorted by context) so no group pads its keys to more than twice
        its shortest context: padded keys are gathered and attended for nothing."""
        groups, start = [], 0
        for row in range(1, len(decodes) + 1):
            if row == len(decodes) or (
                decodes[row].start_position + 1 > 2 * (decodes[start].start_position + 1)
            ):
                groups.append(self._decode_group(decodes[start:row], start))
                start = row
        return tuple(groups)

    def _decode_group(self, decodes: list[ScheduledRequest], start: int) -> DecodeGroup:
        """Padded block tables and key mask of single-query sequences at rows start.. ."""
        context = [e.start_position + 1 for e in decodes]
        num_blocks = -(-max(context) // self.block_size)
        # Padding points at block 0, a real block; the mask hides whatever it holds.
        tables = [list(e.block_table[:num_blocks]) + [0] * (num_blocks - len(e.block_table))
                  for e in decodes]
        lengths = self._tensor(context)
        keys = torch.arange(max(context), device=self.device)
        mask = keys[None, :] < lengths[:, None]
        if self.sliding_window is not None:
            mask &= keys[None, :] > (lengths[:, None] - 1 - self.sliding_window)
        return DecodeGroup(start=start, stop=start + len(decodes),
                           block_tables=self._tensor(tables), mask=mask[:, None, None, :],
                           lengths=lengths, window=self.sliding_window)

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

    def _lora_batch(self, entries: list[ScheduledRequest]) -> LoraBatch | None:
        """Which slot each token uses, or None when the whole step runs the base model."""
        if all(e.adapter is None for e in entries):
            return None
        slots: list[int | None] = []
        for e in entries:
            slots.extend([e.adapter_slot] * len(e.token_ids))
        return LoraBatch.from_slots(slots, device=self.device)
