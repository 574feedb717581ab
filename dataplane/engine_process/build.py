"""The engine process's half of a worker: weights, adapter slots, KV cache and the host
tier of adapters, built where the engine loop runs — in the engine process by default
(main.py), or in the server's process for `engine_runs="thread"` and for a test or
benchmark that steps an engine itself. The server's half is server/build.py.

Order matters for memory: the model's weights are placed first, then the adapter slots
are preallocated for `max_loras` x `max_lora_rank`, and only then is the KV cache sized
from what is left. Every part is built complete, in dependency order: nothing is set on
an object after it was constructed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

import torch

from lorafleet.dataplane.adapters.sources import SourceResolver
from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.engine.engine import Engine
from lorafleet.dataplane.engine.scheduler import SchedulerConfig
from lorafleet.dataplane.engine.snapshot import EngineSnapshot
from lorafleet.dataplane.engine_process.messages import EngineFacts
from lorafleet.dataplane.lora.device import DeviceAdapters
from lorafleet.dataplane.lora.host_tier import HostAdapters
from lorafleet.dataplane.lora.loading import AdapterFiles
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner.factory import create_engine, default_device, resolve_dtype
from lorafleet.kernels.cpu import native

log = logging.getLogger(__name__)


class LoadRecorder(Protocol):
    """Where adapter loads and evictions are counted: the server's metrics in the same
    process, or the events the engine loop forwards (loop.MetricEvents)."""

    def record_load(self, tier: str, seconds: float, is_ok: bool) -> None:
        """One load into `tier`, how long it took and whether it worked."""

    def record_eviction(self, tier: str) -> None:
        """One eviction from `tier`."""


@dataclasses.dataclass(frozen=True)
class EngineParts:
    """The engine and what its owner holds beside it: the host tier of adapters, the
    device slots and the adapter rules its loads follow (`files.validate` gives a
    source's digest). What the engine loop runs; a test or benchmark that steps an engine
    itself builds these too."""

    engine: Engine
    host: HostAdapters
    adapters: DeviceAdapters
    files: AdapterFiles

    def close(self) -> None:
        """Stops the host tier's load threads."""
        self.host.close()

    def facts(self, snapshot: EngineSnapshot) -> EngineFacts:
        """The sizes the server needs, with the first snapshot."""
        return EngineFacts(num_kv_blocks=self.engine.allocator.num_blocks,
                           max_model_len=self.engine.max_model_len,
                           lora_slot_bytes=self.adapters.bank.num_bytes_per_slot,
                           prompt_limits=self.engine.limits, snapshot=snapshot)


def build_engine(config: WorkerConfig,
                 recorder: LoadRecorder | None = None) -> EngineParts:
    """Loads the model's weights and builds the engine, its adapter slots and host tier
    (in the process that will run the engine loop, or for whoever steps the engine
    itself). Adapter loads and evictions go to `recorder`: the metrics themselves when
    they live in the same process, else events the loop forwards (None: not counted)."""
    recorder = recorder or _NOT_COUNTED
    model_config = ModelConfig.from_dir(config.model_dir)
    device = torch.device(config.device) if config.device else default_device()
    dtype = resolve_dtype(config.dtype, model_config.torch_dtype)
    files = adapter_files(config, model_config, pin_memory=device.type == "cuda")
    host = HostAdapters(max_host=config.max_cpu_loras,
                        load=lambda source: files.load(source.source_uri),
                        on_load=recorder.record_load, on_evict=recorder.record_eviction)
    adapters = DeviceAdapters(model_config, host, max_loras=config.max_loras,
                              max_lora_rank=config.max_lora_rank,
                              on_load=recorder.record_load, on_evict=recorder.record_eviction)
    engine = create_engine(
        config.model_dir, device=device, dtype=dtype, kv_cache=config.kv_budget(device),
        block_size=config.block_size,
        scheduler_config=SchedulerConfig(config.max_num_batched_tokens, config.max_num_seqs,
                                         config.queue_policy),
        adapters=adapters, prefix_cache_scope=config.prefix_cache_scope,
        enforce_eager=config.enforce_eager)
    if device.type == "cpu" and dtype == torch.float32:  # builds them now, not mid-step
        log.info("the CPU's small decode ops run as %s", native.describe())
    return EngineParts(engine, host, adapters, files)


def adapter_files(config: WorkerConfig, model_config: ModelConfig, *,
                  pin_memory: bool = False) -> AdapterFiles:
    """The worker's adapter rules: loads (engine side) and dry runs (server side)."""
    dtype = resolve_dtype(config.dtype, model_config.torch_dtype)
    return AdapterFiles(model_config, config.max_lora_rank, dtype,
                        resolver=SourceResolver(policy=config.sources), pin_memory=pin_memory)


class _NotCounted:
    """A recorder that counts nothing."""

    def record_load(self, tier: str, seconds: float, is_ok: bool) -> None:
        """Nothing."""

    def record_eviction(self, tier: str) -> None:
        """Nothing."""


_NOT_COUNTED = _NotCounted()
