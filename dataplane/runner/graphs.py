"""Decode steps replayed from CUDA graphs: one launch for the whole forward pass.

A decode step of a Llama-8B-sized model launches about a thousand small kernels (norms,
projections, rotary, attention, a shrink and an expand of LoRA per projection group);
launched one by one from Python, the host takes longer than the GPU does. A CUDA graph
records them once and replays them with one call. A graph replays fixed launches on fixed
addresses, so everything a decode step varies lives in static buffers, overwritten in
place before each replay:

    input_ids, positions, kv_positions  int64 [max bucket]
    block_tables                        int32 [max bucket, max_blocks]
    context_lens                        int32 [max bucket]
    query_start_loc                     int32 [max bucket + 1] (0, 1, 2, ...: never changes)
    token_slots                         int32 [max bucket] (-1: the base model)

One graph is captured per padded batch size, a *bucket* (1, 2, 4, 8, 16, ... up to
--max-num-seqs), and per "with LoRA" or not (a step with no adapter row launches no LoRA
kernel at all). A step of n decodes runs the smallest bucket b >= n; rows n..b-1 are
padding: they read token 0 at position 0, write their keys and values into the scratch
block (a KV block no sequence ever holds), attend to it alone, use no adapter, and their
logits are dropped. The LoRA kernels' grids are sized by the bucket's rows and read every
row's slot from `token_slots` at replay, so any mix of adapters (more than at capture, or
an adapter swapped into a slot between replays) runs the same graph; adapter weights,
ranks and scales are read in place from the slot bank. The paged-attention kernels read
block tables in place, their grids sized by the bucket and `max_blocks` (contexts up to
`max_context` tokens; longer steps run eagerly).

Steps with prefill, or more decodes than the largest bucket, run eagerly (BatchBuilder).
Off CUDA, or with `--enforce-eager`, there are no graphs: `replay` then runs the same
forward pass eagerly on the static buffers, which is how CPU tests check the buffer
filling, the padding and the bucket choice against the eager path token for token.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import torch

from lorafleet.dataplane.config.sizing import GRAPH_MAX_CONTEXT
from lorafleet.dataplane.engine.scheduler import ScheduledRequest
from lorafleet.dataplane.model.attention import AttentionMetadata, DecodeGroup
from lorafleet.dataplane.model.decoder import DecoderModel
from lorafleet.dataplane.model.lora_seam import LoraContext
from lorafleet.kernels.attention_batch import PagedAttentionBatch
from lorafleet.kernels.batch import LoraBatch

# Longest context a captured decode step attends (vLLM's max_seq_len_to_capture): the
# block tables' width, and so the attention grids', is sized for it (sizing.py also
# counts the graphs' memory with it).
DEFAULT_MAX_CONTEXT = GRAPH_MAX_CONTEXT


def attach_decode_graphs(runner, *, scratch_block: int, block_size: int, max_num_seqs: int,
                         max_context: int = DEFAULT_MAX_CONTEXT,
                         use_graphs: bool = True) -> DecodeGraphs:
    """Gives `runner` (a ModelRunner) decode graphs for up to `max_num_seqs` sequences.
    `scratch_block` is a block of its KV cache that no sequence is ever given (the
    factory allocates one past the allocator's). `use_graphs=False` (and any device but
    CUDA) replays eagerly: the same buffers, no graphs."""
    adapters = runner.adapters
    runner.graphs = DecodeGraphs(
        runner.model, runner.kv_cache,
        GraphShape(max_num_seqs, block_size,
                   min(max_context, runner.model.config.max_position_embeddings)),
        scratch_block=scratch_block, sliding_window=runner.builder.sliding_window,
        lora_step=adapters.step if adapters is not None else None, use_graphs=use_graphs)
    return runner.graphs


def batch_buckets(max_num_seqs: int) -> tuple[int, ...]:
    """Padded batch sizes to capture: powers of two below `max_num_seqs`, then it."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    buckets, size = [], 1
    while size < max_num_seqs:
        buckets.append(size)
        size *= 2
    return (*buckets, max_num_seqs)


@dataclasses.dataclass(frozen=True)
class GraphShape:
    """What the captured graphs are sized for."""

    max_num_seqs: int
    block_size: int
    max_context: int = DEFAULT_MAX_CONTEXT

    @property
    def buckets(self) -> tuple[int, ...]:
        """The padded batch sizes, smallest first."""
        return batch_buckets(self.max_num_seqs)

    @property
    def max_blocks(self) -> int:
        """Block-table entries per sequence."""
        return -(-self.max_context // self.block_size)

    def bucket_for(self, num_rows: int) -> int | None:
        """The smallest bucket holding `num_rows` decodes; None past the largest."""
        return next((b for b in self.buckets if b >= num_rows), None)


@dataclasses.dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # the graph's output buffer, [bucket, vocab]


class DecodeGraphs:
    """Static buffers, the captured graphs, and the decode steps that replay them.

    `lora_step(batch)` gives the step's LoRA context for a `LoraBatch` (the runner's
    device slots); None when the worker serves no adapters. `scratch_block` is a KV block
    no sequence holds (padding rows write there).
    """

    def __init__(self, model: DecoderModel, kv_cache: torch.Tensor, shape: GraphShape, *,
                 scratch_block: int, sliding_window: int | None,
                 lora_step: Callable[[LoraBatch], LoraContext] | None,
                 use_graphs: bool) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.shape = shape
        self.sliding_window = sliding_window
        self.lora_step = lora_step
        self.use_graphs = use_graphs and model.device.type == "cuda"
        self._scratch_position = scratch_block * shape.block_size
        self._scratch_block = scratch_block
        size, device = shape.buckets[-1], model.device
        long, int32 = {"dtype": torch.long, "device": device}, {"dtype": torch.int32,
                                                                  "device": device}
        self.input_ids = torch.zeros(size, **long)
        self.positions = torch.zeros(size, **long)
        self.kv_positions = torch.full((size,), self._scratch_position, **long)
        self.block_tables = torch.full((size, shape.max_blocks), scratch_block, **int32)
        self.context_lens = torch.ones(size, **int32)
        self.query_start_loc = torch.arange(size + 1, **int32)
        self.token_slots = torch.full((size,), -1, **int32)
        self.sample_rows = torch.arange(size, **long)
        self._host_slots: list[int | None] = [None] * size  # token_slots, for the torch path
        self._graphs: dict[tuple[int, bool], _Captured] = {}
        self._pool = None
        # Steps run per (bucket, with LoRA), and their real rows (tests, metrics).
        self.replays: collections.Counter[tuple[int, bool]] = collections.Counter()
        self.num_rows = 0

    # -- which steps ------------------------------------------------------------------

    def fits(self, entries: Sequence[ScheduledRequest]) -> bool:
        """Whether a step of these requests can replay a graph: decodes only (one token,
        sampled), at most the largest bucket, every context within max_context."""
        return (0 < len(entries) <= self.shape.buckets[-1] and all(
            len(e.token_ids) == 1 and e.is_sampling
            and e.start_position < self.shape.max_context for e in entries))

    # -- running a step ---------------------------------------------------------------

    def run(self, entries: Sequence[ScheduledRequest]) -> torch.Tensor:
        """Float32 logits [len(entries), vocab] of a decode step (`fits(entries)`), row i
        for entries[i]."""
        bucket = self.shape.bucket_for(len(entries))
        self._fill(entries, bucket)
        has_lora = any(e.adapter is not None for e in entries)
        self.replays[(bucket, has_lora)] += 1
        self.num_rows += len(entries)
        return self.replay(bucket, has_lora)[:len(entries)]

    def replay(self, bucket: int, has_lora: bool) -> torch.Tensor:
        """The bucket's logits [bucket, vocab] from the static buffers as they are now:
        the captured graph's replay (captured on first use), or the same forward pass run
        eagerly where there are no graphs."""
        if not self.use_graphs:
            return self._forward(bucket, has_lora)
        captured = self._graphs.get((bucket, has_lora))
        if captured is None:
            captured = self._capture(bucket, has_lora)
        captured.graph.replay()
        return captured.logits

    def capture_all(self) -> None:
        """Captures every bucket's graphs now (start-up), largest first so the smaller
        ones reuse its memory pool."""
        if not self.use_graphs:
            return
        for bucket in reversed(self.shape.buckets):
            for has_lora in (False, True) if self.lora_step is not None else (False,):
                if (bucket, has_lora) not in self._graphs:
                    self._capture(bucket, has_lora)

    def _fill(self, entries: Sequence[ScheduledRequest], bucket: int) -> None:
        """Writes the step into the static buffers; rows past it become padding."""
        n, size = len(entries), self.shape.block_size
        ids = [e.token_ids[0] for e in entries] + [0] * (bucket - n)
        positions = [e.start_position for e in entries] + [0] * (bucket - n)
        kv = [e.block_table[e.start_position // size] * size + e.start_position % size
              for e in entries] + [self._scratch_position] * (bucket - n)
        tables = torch.full((bucket, self.shape.max_blocks), self._scratch_block,
                            dtype=torch.int32)
        for row, e in enumerate(entries):
            used = -(-(e.start_position + 1) // size)
            tables[row, :used] = torch.tensor(e.block_table[:used], dtype=torch.int32)
        contexts = [e.start_position + 1 for e in entries] + [1] * (bucket - n)
        self._host_slots[:bucket] = [e.adapter_slot for e in entries] + [None] * (bucket - n)
        slots = [-1 if s is None else s for s in self._host_slots[:bucket]]
        copies = ((self.input_ids, ids), (self.positions, positions),
                  (self.kv_positions, kv), (self.context_lens, contexts),
                  (self.token_slots, slots))
        for buffer, values in copies:
            buffer[:bucket].copy_(torch.tensor(values, dtype=buffer.dtype), non_blocking=True)
        self.block_tables[:bucket].copy_(tables, non_blocking=True)

    # -- the forward pass over the static buffers -----------------------------------

    def _forward(self, bucket: int, has_lora: bool) -> torch.Tensor:
        lora = self._lora(bucket) if has_lora and self.lora_step is not None else None
        return self.model.forward(
            self.input_ids[:bucket], self.positions[:bucket], self._attention(bucket),
            self.kv_cache, self.sample_rows[:bucket], lora=lora)

    def _attention(self, bucket: int) -> AttentionMetadata:
        """The bucket's attention metadata, views of the static buffers: the flat batch for
        the kernels, and (where they do not run) one torch decode group over the same
        tables, its key mask computed from context_lens."""
        tables, contexts = self.block_tables[:bucket], self.context_lens[:bucket]
        paged = PagedAttentionBatch(tables, contexts, self.query_start_loc[:bucket + 1],
                                    num_decodes=bucket, max_query_len=0,
                                    sliding_window=self.sliding_window)
        decodes = ()
        if not self.use_graphs:
            decodes = (self._torch_group(bucket),)
        return AttentionMetadata(kv_positions=self.kv_positions[:bucket], decodes=decodes,
                                 prefills=(), paged=paged)

    def _torch_group(self, bucket: int) -> DecodeGroup:
        contexts = self.context_lens[:bucket].long()
        keys = torch.arange(self.shape.max_blocks * self.shape.block_size,
                            device=contexts.device)
        mask = keys[None, :] < contexts[:, None]
        if self.sliding_window is not None:
            mask &= keys[None, :] > (contexts[:, None] - 1 - self.sliding_window)
        return DecodeGroup(start=0, stop=bucket, block_tables=self.block_tables[:bucket].long(),
                           mask=mask[:, None, None, :], lengths=contexts,
                           window=self.sliding_window)

    def _lora(self, bucket: int) -> LoraContext:
        """The bucket's LoRA context: on the static slot buffer under graphs (the kernels
        read each row's slot at replay), else a batch built from this step's slots."""
        if self.use_graphs:
            return self.lora_step(LoraBatch.static(self.token_slots[:bucket]))
        return self.lora_step(LoraBatch.from_slots(self._host_slots[:bucket],
                                                   device=self.model.device))

    def _capture(self, bucket: int, has_lora: bool) -> _Captured:
        """Runs the bucket eagerly once (Triton compiles its kernels there; a host
        synchronisation inside the step raises), then records it."""
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            self._forward(bucket, has_lora)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(bucket, has_lora)
        captured = _Captured(graph, logits)
        self._graphs[(bucket, has_lora)] = captured
        return captured
