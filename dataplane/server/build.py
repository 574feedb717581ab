"""Assembles a worker: model, adapter slots and cache, engine loop, frontend, metrics.

Two halves, built where they live: `build_engine` (weights, adapter slots, KV cache, the
host tier of adapters) runs where the engine loop runs — in the engine process by
default, or in this process for `engine_runs="thread"`; the server's half (tokenizer,
adapter validation, metrics, version table) never holds the model's weights.

Order matters for memory: the model's weights are placed first, then the adapter slots
are preallocated for `max_loras` x `max_lora_rank`, and only then is the KV cache sized
from what is left. Every part is built complete, in dependency order: nothing is set on
an object after it was constructed.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
from collections.abc import Callable

import torch
from opentelemetry import trace

from lorafleet.dataplane.adapters.confinement import UNCONFINED, SourcePolicy
from lorafleet.dataplane.adapters.sources import SourceResolver
from lorafleet.dataplane.engine.engine import Engine
from lorafleet.dataplane.engine.prefix_cache import PREFIX_CACHE_SCOPES
from lorafleet.dataplane.engine.scheduler import SchedulerConfig
from lorafleet.dataplane.engine.snapshot import EngineSnapshot
from lorafleet.dataplane.engine_process.loop import MetricEvents
from lorafleet.dataplane.engine_process.messages import EngineFacts, MetricEvent
from lorafleet.dataplane.lora.device import DeviceAdapters
from lorafleet.dataplane.lora.host_cache import HostCache
from lorafleet.dataplane.lora.loading import AdapterFiles
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner.factory import create_engine, default_device, resolve_dtype
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget, bytes_per_block, default_budget
from lorafleet.dataplane.server.bridge import EngineBridge, EngineLink
from lorafleet.dataplane.server.flags import CPU_THREAD_WAITS, DEFAULTS, ENGINE_RUNS
from lorafleet.dataplane.server.frontend import Frontend
from lorafleet.dataplane.server.identity import base_model_of
from lorafleet.dataplane.server.metrics import WorkerMetrics
from lorafleet.dataplane.server.quotas import QuotaConfig
from lorafleet.dataplane.server.sizes import WorkerSizes
from lorafleet.dataplane.server.worker import Worker, WorkerOptions
from lorafleet.dataplane.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Everything `lorafleet serve` takes; an option's default is the one its flag has
    (flags.py, the one home of each)."""

    model_dir: pathlib.Path
    model_name: str | None = DEFAULTS["model_name"]
    device: str | None = DEFAULTS["device"]
    dtype: str | None = DEFAULTS["dtype"]
    max_loras: int = DEFAULTS["max_loras"]
    max_lora_rank: int = DEFAULTS["max_lora_rank"]
    max_cpu_loras: int = DEFAULTS["max_cpu_loras"]
    kv_cache_bytes: int | None = DEFAULTS["kv_cache_bytes"]
    kv_cache_fraction: float | None = DEFAULTS["kv_cache_fraction"]
    block_size: int = DEFAULTS["block_size"]
    max_num_seqs: int = DEFAULTS["max_num_seqs"]
    max_num_batched_tokens: int = DEFAULTS["max_num_batched_tokens"]
    max_waiting: int = DEFAULTS["max_waiting"]
    # Fair share between tenants, or "fifo" (engine/fairness.py).
    queue_policy: str = DEFAULTS["queue_policy"]
    quotas: QuotaConfig = QuotaConfig()  # per-tenant limits at admission (server/quotas.py)
    worker_id: str = DEFAULTS["worker_id"]  # empty: derived at start from host and port
    sources: SourcePolicy = UNCONFINED  # adapter roots, S3 allow-list, size limit
    engine_runs: str = DEFAULTS["engine_runs"]  # one of ENGINE_RUNS
    # One of CPU_THREAD_WAITS (server/process_link.py says why).
    cpu_thread_wait: str = DEFAULTS["cpu_thread_wait"]
    # Seconds the engine process may take to build.
    engine_start_timeout: float = DEFAULTS["engine_start_timeout"]
    # Who shares cached prompt KV: "tenant", "global", or None (off; engine/prefix_cache.py).
    prefix_cache_scope: str | None = DEFAULTS["prefix_cache_scope"]
    # No CUDA graphs for decode steps (runner/graphs.py).
    enforce_eager: bool = DEFAULTS["enforce_eager"]

    def __post_init__(self) -> None:
        if self.engine_runs not in ENGINE_RUNS:
            raise ValueError(f"engine_runs must be one of {ENGINE_RUNS}, "
                             f"not {self.engine_runs!r}")
        if self.cpu_thread_wait not in CPU_THREAD_WAITS:
            raise ValueError(f"cpu_thread_wait must be one of {CPU_THREAD_WAITS}, "
                             f"not {self.cpu_thread_wait!r}")
        if self.prefix_cache_scope not in (*PREFIX_CACHE_SCOPES, None):
            raise ValueError(f"prefix_cache_scope must be one of {PREFIX_CACHE_SCOPES} "
                             f"or None, not {self.prefix_cache_scope!r}")
        if not self.engine_start_timeout > 0:
            raise ValueError(f"engine_start_timeout must be positive, "
                             f"not {self.engine_start_timeout!r}")

    def kv_budget(self, device: torch.device) -> KVCacheBudget:
        """Bytes or a fraction when given; else the device's default (see kv_cache.py)."""
        if self.kv_cache_bytes is not None:
            return KVCacheBudget(num_bytes=self.kv_cache_bytes)
        if self.kv_cache_fraction is not None:
            return KVCacheBudget(fraction=self.kv_cache_fraction)
        return default_budget(device)


@dataclasses.dataclass(frozen=True)
class EngineParts:
    """The engine and what its owner holds beside it: the host tier of adapters, the
    device slots and the adapter rules its loads follow (`files.validate` gives a
    source's digest). What the engine loop runs; a test or benchmark that steps an engine
    itself builds these too."""

    engine: Engine
    host: HostCache
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
                 recorder: WorkerMetrics | MetricEvents | None = None) -> EngineParts:
    """Loads the model's weights and builds the engine, its adapter slots and host tier
    (in the process that will run the engine loop, or for whoever steps the engine
    itself). Adapter loads and evictions go to `recorder`: the metrics themselves when
    they live in the same process, else events the loop forwards (None: not counted)."""
    recorder = recorder or _NOT_COUNTED
    model_config = ModelConfig.from_dir(config.model_dir)
    device = torch.device(config.device) if config.device else default_device()
    dtype = resolve_dtype(config.dtype, model_config.torch_dtype)
    files = _adapter_files(config, model_config, pin_memory=device.type == "cuda")
    host = HostCache(max_host=config.max_cpu_loras,
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
    return EngineParts(engine, host, adapters, files)


def build_worker(config: WorkerConfig, *, tracer: trace.Tracer | None = None,
                 on_fatal: Callable[[BaseException], None] = lambda exc: None,
                 ) -> tuple[Worker, WorkerSizes]:
    """A worker with its engine in this process, run by a thread once started, whatever
    `config.engine_runs` says. To step an engine yourself, use `build_engine`.

    `on_fatal(exc)` is called on the engine thread if the engine loop ever dies.
    """
    from lorafleet.dataplane.server.thread_link import ThreadLink

    metrics = WorkerMetrics(config.worker_id)  # counts loads as they happen, as before
    parts = build_engine(config, metrics)
    link = ThreadLink(parts.engine, parts.host, facts=parts.facts)
    return _assemble(config, link, Tokenizer.from_dir(config.model_dir), metrics, tracer,
                     on_fatal)


def build_process_worker(config: WorkerConfig, *, tracer: trace.Tracer | None = None,
                         on_fatal: Callable[[BaseException], None] = lambda exc: None,
                         stop: threading.Event | None = None,
                         ) -> tuple[Worker, WorkerSizes]:
    """A worker whose engine runs in its own process (started and built here; blocking).
    Raises the engine process's start-up error with its type. `on_fatal(exc)` is called
    on a reader thread if that process ever dies. Setting `stop` while the engine
    process builds kills it and raises StartupStopped."""
    from lorafleet.dataplane.server.process_link import ProcessLink

    ModelConfig.from_dir(config.model_dir)  # a wrong directory fails before any spawn
    tokenizer = Tokenizer.from_dir(config.model_dir)
    link = ProcessLink(config, stop=stop)
    try:
        return _assemble(config, link, tokenizer, WorkerMetrics(config.worker_id), tracer,
                         on_fatal)
    except BaseException:
        link.stop(10.0)
        raise


def build_serving_worker(config: WorkerConfig, *, stop: threading.Event | None = None,
                         **options) -> tuple[Worker, WorkerSizes]:
    """The worker `lorafleet serve` runs: its engine where `config.engine_runs` says.
    `stop` cuts an engine process's start short (an engine on a thread builds to the end)."""
    if config.engine_runs == "thread":
        return build_worker(config, **options)
    return build_process_worker(config, stop=stop, **options)


def _assemble(config: WorkerConfig, link: EngineLink, tokenizer: Tokenizer,
              metrics: WorkerMetrics, tracer: trace.Tracer | None,
              on_fatal: Callable[[BaseException], None]) -> tuple[Worker, WorkerSizes]:
    """The server's half of the worker, around an engine link whose engine is built."""
    model_config = ModelConfig.from_dir(config.model_dir)
    dtype = resolve_dtype(config.dtype, model_config.torch_dtype)
    bridge = EngineBridge(link, on_events=lambda events: _record(metrics, events),
                          on_fatal=on_fatal)
    metrics.observe(lambda: bridge.snapshot)
    facts = link.facts
    frontend = Frontend(tokenizer, facts.prompt_limits)
    options = WorkerOptions(config.worker_id, config.max_waiting, config.max_num_seqs,
                            quotas=config.quotas)
    base_model = base_model_of(
        config.model_dir, model_config, name=config.model_name or config.model_dir.name,
        dtype=str(dtype).removeprefix("torch."), max_context=facts.max_model_len)
    sizes = WorkerSizes(
        max_loras=config.max_loras, max_lora_rank=config.max_lora_rank,
        max_cpu_loras=config.max_cpu_loras, lora_slot_bytes=facts.lora_slot_bytes,
        num_kv_blocks=facts.num_kv_blocks, kv_block_size=config.block_size,
        kv_block_bytes=bytes_per_block(model_config, config.block_size, dtype),
        max_model_len=facts.max_model_len)
    worker = Worker(bridge, _adapter_files(config, model_config), frontend, metrics, options,
                    base_model, sizes, tracer=tracer or trace.NoOpTracer())
    return worker, sizes


def _adapter_files(config: WorkerConfig, model_config: ModelConfig, *,
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


def _record(metrics: WorkerMetrics, events: tuple[MetricEvent, ...]) -> None:
    """Counts the engine side's adapter loads and evictions in /metrics."""
    for event in events:
        if event.seconds is None:
            metrics.record_eviction(event.tier)
        else:
            metrics.record_load(event.tier, event.seconds, event.is_ok)
