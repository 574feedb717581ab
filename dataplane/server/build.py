"""Assembles a worker: the server's half (tokenizer and frontend, adapter validation,
metrics, version table), around an engine link whose engine is built where it runs.

The engine's half (weights, adapter slots, KV cache, the host tier of adapters) is built
by engine_process/build.py in the engine process by default (process_link.py starts it),
or in this process for `engine_runs="thread"` (thread_link.py). This half never holds
the model's weights.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from opentelemetry import trace

from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.config.worker_sizes import WorkerSizes
from lorafleet.dataplane.engine_process.build import adapter_files, build_engine
from lorafleet.dataplane.engine_process.messages import MetricEvent
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner.factory import resolve_dtype
from lorafleet.dataplane.runner.kv_cache import bytes_per_block
from lorafleet.dataplane.server.bridge import EngineBridge, EngineLink
from lorafleet.dataplane.server.frontend import Frontend
from lorafleet.dataplane.server.identity import base_model_of
from lorafleet.dataplane.server.metrics import WorkerMetrics
from lorafleet.dataplane.server.process_link import ProcessLink
from lorafleet.dataplane.server.thread_link import ThreadLink
from lorafleet.dataplane.server.tokenizer import Tokenizer
from lorafleet.dataplane.server.worker import Worker

log = logging.getLogger(__name__)


def build_worker(config: WorkerConfig, *, tracer: trace.Tracer | None = None,
                 on_fatal: Callable[[BaseException], None] = lambda exc: None,
                 ) -> tuple[Worker, WorkerSizes]:
    """A worker with its engine in this process, run by a thread once started, whatever
    `config.engine_runs` says. To step an engine yourself, use `build_engine`.

    `on_fatal(exc)` is called on the engine thread if the engine loop ever dies.
    """
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
    base_model = base_model_of(
        config.model_dir, model_config, name=config.model_name or config.model_dir.name,
        dtype=str(dtype).removeprefix("torch."), max_context=facts.max_model_len)
    sizes = WorkerSizes(
        max_loras=config.max_loras, max_lora_rank=config.max_lora_rank,
        max_cpu_loras=config.max_cpu_loras, lora_slot_bytes=facts.lora_slot_bytes,
        num_kv_blocks=facts.num_kv_blocks, kv_block_size=config.block_size,
        kv_block_bytes=bytes_per_block(model_config, config.block_size, dtype),
        max_model_len=facts.max_model_len)
    worker = Worker(bridge, adapter_files(config, model_config), frontend, metrics, config,
                    base_model, sizes, tracer=tracer or trace.NoOpTracer())
    return worker, sizes


def _record(metrics: WorkerMetrics, events: tuple[MetricEvent, ...]) -> None:
    """Counts the engine side's adapter loads and evictions in /metrics."""
    for event in events:
        if event.seconds is None:
            metrics.record_eviction(event.tier)
        else:
            metrics.record_load(event.tier, event.seconds, event.is_ok)
