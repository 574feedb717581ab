"""Runs one planned step: build the batch, run the decoder, sample."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

import torch

from lorafleet.dataplane.engine.outputs import SampledToken
from lorafleet.dataplane.engine.scheduler import SchedulerOutput
from lorafleet.dataplane.lora.device import DeviceAdapters
from lorafleet.dataplane.model.decoder import DecoderModel
from lorafleet.dataplane.runner.batch import BatchBuilder, StepBatch
from lorafleet.dataplane.runner.graphs import DecodeGraphs
from lorafleet.dataplane.runner.sampler import Sampler


class ModelRunner:
    """Owns the model, the KV cache tensor, the device adapter slots and the sampler;
    implements the engine's Runner.

    `adapters` (optional) holds the device slots: the plan's installs are copied into them
    before the forward pass, and each step's LoRA context comes from them — the adapter
    engine's single entry point into the forward pass. `graphs` (optional, set by
    `attach_decode_graphs`) runs the decode steps that fit it from CUDA graphs.
    """

    def __init__(
        self, model: DecoderModel, kv_cache: torch.Tensor, builder: BatchBuilder,
        adapters: DeviceAdapters | None = None,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.builder = builder
        self.sampler = Sampler(model.device)
        self.adapters = adapters
        self.graphs: DecodeGraphs | None = None

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput) -> Mapping[str, SampledToken]:
        """Computes the plan's tokens; returns the sampled token of each sampling request."""
        for slot, key in plan.slot_installs:
            self.install_adapter(slot, key)
        if self.graphs is not None and self.graphs.fits(plan.scheduled):
            return self.sampler.sample(self.graphs.run(plan.scheduled), plan.scheduled)
        batch = self.builder.build(plan)
        logits = self.forward(batch)
        if not batch.sampling:
            return {}
        return self.sampler.sample(logits, batch.sampling)

    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Float32 logits of the batch's sample rows."""
        lora = None
        if batch.lora is not None:
            if self.adapters is None:
                raise ValueError("a request names an adapter but the runner has no adapter slots")
            lora = self.adapters.step(batch.lora)
        return self.model.forward(
            batch.input_ids, batch.positions, batch.attention, self.kv_cache,
            batch.sample_rows, lora=lora,
        )

    def release(self, request_ids: Iterable[str]) -> None:
        """Forgets the sampling state of finished requests."""
        self.sampler.release(request_ids)

    @torch.inference_mode()
    def install_adapter(self, slot: int, key: Hashable) -> None:
        """Copies adapter `key` from the host tier into device slot `slot`."""
        self.adapters.install(slot, key)

    @torch.inference_mode()
    def clear_adapter_slot(self, slot: int) -> None:
        """Empties device slot `slot`."""
        self.adapters.clear(slot)
