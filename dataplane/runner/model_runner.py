"""Runs one planned step: build the batch, run the decoder, sample."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from lorafleet.dataplane.engine.outputs import SampledToken
from lorafleet.dataplane.engine.scheduler import SchedulerOutput
from lorafleet.dataplane.model.decoder import DecoderModel
from lorafleet.dataplane.runner.batch import BatchBuilder, StepBatch
from lorafleet.dataplane.sampler import Sampler


class ModelRunner:
    """Owns the model, the KV cache tensor and the sampler; implements the engine's Runner.

    `lora_context` (optional) turns a StepBatch into the LoraContext the model's
    projections call; it is the adapter engine's single entry point into the forward pass.
    """

    def __init__(
        self, model: DecoderModel, kv_cache: torch.Tensor, builder: BatchBuilder,
        lora_context=None,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.builder = builder
        self.sampler = Sampler(model.device)
        self._lora_context = lora_context

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput) -> Mapping[str, SampledToken]:
        """Computes the plan's tokens; returns the sampled token of each sampling request."""
        batch = self.builder.build(plan)
        logits = self.forward(batch)
        if not batch.sampling:
            return {}
        return self.sampler.sample(logits, batch.sampling)

    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Float32 logits of the batch's sample rows."""
        lora = None
        if batch.adapter_slots is not None and self._lora_context is not None:
            lora = self._lora_context(batch)
        return self.model.forward(
            batch.input_ids, batch.positions, batch.attention, self.kv_cache,
            batch.sample_rows, lora=lora,
        )

    def release(self, request_ids: Iterable[str]) -> None:
        """Forgets the sampling state of finished requests."""
        self.sampler.release(request_ids)
