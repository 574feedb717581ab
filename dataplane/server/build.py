"""Assembles and starts a worker: model, adapter slots and cache, engine thread,
servicers, metrics.

Order matters for memory: the model's weights are placed first, then the adapter slots
are preallocated for `max_loras` x `max_lora_rank`, and only then is the KV cache sized
from what is left.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import socket

from lorafleet.dataplane.engine.scheduler import SchedulerConfig
from lorafleet.dataplane.lora.loading import AdapterFiles
from lorafleet.dataplane.lora.runtime import LoraRuntime
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner.factory import create_engine, default_device
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget, bytes_per_block
from lorafleet.dataplane.server.bridge import EngineBridge
from lorafleet.dataplane.server.identity import base_model_of
from lorafleet.dataplane.server.metrics import WorkerMetrics
from lorafleet.dataplane.server.worker import Worker, WorkerOptions

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Everything `lorafleet serve` takes, with its defaults."""

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
    worker_id: str = dataclasses.field(default_factory=socket.gethostname)

    def kv_budget(self) -> KVCacheBudget:
        """Bytes or a fraction when given; else 85% of free GPU memory, or 1 GiB on a CPU
        (host memory is shared with everything else on the machine)."""
        if self.kv_cache_bytes is not None:
            return KVCacheBudget(num_bytes=self.kv_cache_bytes)
        if self.kv_cache_fraction is not None:
            return KVCacheBudget(fraction=self.kv_cache_fraction)
        device = self.device or str(default_device())
        if device.startswith("cuda"):
            return KVCacheBudget(fraction=0.85)
        return KVCacheBudget(num_bytes=CPU_KV_CACHE_BYTES)


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Where the memory went, printed at start."""

    lora_slot_bytes: int
    lora_total_bytes: int
    num_kv_blocks: int
    kv_block_bytes: int

    def describe(self) -> str:
        """One line for people."""
        mib = 1024 * 1024
        return (f"adapter slots: {self.lora_slot_bytes / mib:.2f} MiB each, "
                f"{self.lora_total_bytes / mib:.2f} MiB in all; KV cache: "
                f"{self.num_kv_blocks} blocks of {self.kv_block_bytes / mib:.3f} MiB")


def build_worker(config: WorkerConfig) -> tuple[Worker, MemoryReport]:
    """Loads the model and wires every worker component (the engine thread not started).

    The lambdas below bind `files` and `metrics` late: both need the engine built first.
    """
    model_config = ModelConfig.from_dir(config.model_dir)
    lora = LoraRuntime(
        model_config, max_loras=config.max_loras, max_lora_rank=config.max_lora_rank,
        max_cpu_loras=config.max_cpu_loras,
        load=lambda source: files.load(source.source_uri),
        on_load=lambda tier, secs, is_ok: metrics.record_load(tier, secs, is_ok=is_ok),
        on_evict=lambda tier: metrics.record_eviction(tier))
    engine = create_engine(
        config.model_dir, device=config.device, dtype=config.dtype,
        kv_cache=config.kv_budget(), block_size=config.block_size,
        scheduler_config=SchedulerConfig(config.max_num_batched_tokens, config.max_num_seqs),
        adapter_gate=lora, reserve_memory=lora.reserve, adapter_slot=lora.slot_of,
        lora_context=lora.lora_context)
    lora.attach(engine)
    dtype = engine.runner.model.dtype
    files = AdapterFiles(model_config, config.max_lora_rank, dtype,
                         pin_memory=engine.runner.model.device.type == "cuda")
    metrics = WorkerMetrics(config.worker_id, lambda: worker.gauges())
    options = WorkerOptions(config.worker_id, config.max_waiting, config.max_num_seqs)
    bridge = EngineBridge(engine, before_step=lora.fail_unloadable)
    base_model = base_model_of(
        config.model_dir, model_config, name=config.model_name or config.model_dir.name,
        dtype=str(dtype).removeprefix("torch."), max_context=engine.max_model_len)
    worker = Worker(bridge, lora, files, metrics, options, base_model)
    report = MemoryReport(lora.bank.num_bytes_per_slot, lora.bank.num_bytes,
                          engine.allocator.num_blocks,
                          bytes_per_block(model_config, config.block_size, dtype))
    return worker, report
