"""Assembles a worker: model, adapter slots and cache, engine thread, frontend, metrics.

Order matters for memory: the model's weights are placed first, then the adapter slots
are preallocated for `max_loras` x `max_lora_rank`, and only then is the KV cache sized
from what is left. Every part is built complete, in dependency order: nothing is set on
an object after it was constructed.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable

import torch
from opentelemetry import trace

from lorafleet.dataplane.adapters.confinement import UNCONFINED, SourcePolicy
from lorafleet.dataplane.adapters.sources import SourceResolver
from lorafleet.dataplane.engine.scheduler import SchedulerConfig
from lorafleet.dataplane.lora.device import DeviceAdapters
from lorafleet.dataplane.lora.host_cache import HostCache
from lorafleet.dataplane.lora.loading import AdapterFiles
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner.factory import create_engine, default_device, resolve_dtype
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget, bytes_per_block, default_budget
from lorafleet.dataplane.server.bridge import EngineBridge
from lorafleet.dataplane.server.frontend import Frontend, PromptLimits
from lorafleet.dataplane.server.identity import base_model_of
from lorafleet.dataplane.server.metrics import WorkerMetrics
from lorafleet.dataplane.server.quotas import QuotaConfig
from lorafleet.dataplane.server.sizes import WorkerSizes
from lorafleet.dataplane.server.snapshot import take_snapshot
from lorafleet.dataplane.server.worker import Worker, WorkerOptions

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Everything `lorafleet serve` takes, with its defaults (the one home of each)."""

    model_dir: pathlib.Path
    model_name: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_loras: int = 8
    max_lora_rank: int = 64
    max_cpu_loras: int = 32
    kv_cache_bytes: int | None = None
    kv_cache_fraction: float | None = None
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_waiting: int = 256
    queue_policy: str = "fair"  # fair share between tenants, or "fifo" (engine/fairness.py)
    quotas: QuotaConfig = QuotaConfig()  # per-tenant limits at admission (server/quotas.py)
    worker_id: str = ""  # empty: derived at start from the host name and the bound port
    sources: SourcePolicy = UNCONFINED  # adapter roots, S3 allow-list, size limit

    def kv_budget(self, device: torch.device) -> KVCacheBudget:
        """Bytes or a fraction when given; else the device's default (see kv_cache.py)."""
        if self.kv_cache_bytes is not None:
            return KVCacheBudget(num_bytes=self.kv_cache_bytes)
        if self.kv_cache_fraction is not None:
            return KVCacheBudget(fraction=self.kv_cache_fraction)
        return default_budget(device)


def build_worker(config: WorkerConfig, *, tracer: trace.Tracer | None = None,
                 on_fatal: Callable[[BaseException], None] = lambda exc: None,
                 ) -> tuple[Worker, WorkerSizes]:
    """Loads the model and wires every worker component (the engine thread not started).

    `on_fatal(exc)` is called on the engine thread if the engine loop ever dies.
    """
    model_config = ModelConfig.from_dir(config.model_dir)
    device = torch.device(config.device) if config.device else default_device()
    dtype = resolve_dtype(config.dtype, model_config.torch_dtype)
    files = AdapterFiles(model_config, config.max_lora_rank, dtype,
                         resolver=SourceResolver(policy=config.sources),
                         pin_memory=device.type == "cuda")
    metrics = WorkerMetrics(config.worker_id)
    host = HostCache(max_host=config.max_cpu_loras,
                     load=lambda source: files.load(source.source_uri),
                     on_load=metrics.record_load, on_evict=metrics.record_eviction)
    adapters = DeviceAdapters(model_config, host, max_loras=config.max_loras,
                              max_lora_rank=config.max_lora_rank,
                              on_load=metrics.record_load, on_evict=metrics.record_eviction)
    engine = create_engine(
        config.model_dir, device=device, dtype=dtype, kv_cache=config.kv_budget(device),
        block_size=config.block_size,
        scheduler_config=SchedulerConfig(config.max_num_batched_tokens, config.max_num_seqs,
                                         config.queue_policy),
        adapters=adapters)
    bridge = EngineBridge(engine, take_snapshot=lambda eng: take_snapshot(eng, host),
                          on_fatal=on_fatal)
    metrics.observe(lambda: bridge.snapshot)
    frontend = Frontend(engine.tokenizer, PromptLimits(engine.max_model_len,
                                                       model_config.vocab_size))
    options = WorkerOptions(config.worker_id, config.max_waiting, config.max_num_seqs,
                            quotas=config.quotas)
    base_model = base_model_of(
        config.model_dir, model_config, name=config.model_name or config.model_dir.name,
        dtype=str(dtype).removeprefix("torch."), max_context=engine.max_model_len)
    sizes = WorkerSizes(
        max_loras=config.max_loras, max_lora_rank=config.max_lora_rank,
        max_cpu_loras=config.max_cpu_loras, lora_slot_bytes=adapters.bank.num_bytes_per_slot,
        num_kv_blocks=engine.allocator.num_blocks, kv_block_size=config.block_size,
        kv_block_bytes=bytes_per_block(model_config, config.block_size, dtype),
        max_model_len=engine.max_model_len)
    worker = Worker(bridge, host, files, frontend, metrics, options, base_model, sizes,
                    tracer=tracer or trace.NoOpTracer())
    return worker, sizes
