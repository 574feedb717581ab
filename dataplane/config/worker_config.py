"""The worker's options as one frozen object: what `lorafleet serve` takes, read by the
server's builder (server/build.py) and, pickled, by the engine process's
(engine_process/build.py)."""

from __future__ import annotations

import dataclasses
import pathlib

import torch

from lorafleet.dataplane.adapters.confinement import UNCONFINED, SourcePolicy
from lorafleet.dataplane.config.flags import CPU_THREAD_WAITS, DEFAULTS, ENGINE_RUNS
from lorafleet.dataplane.config.quotas import QuotaConfig
from lorafleet.dataplane.engine.prefix_cache import PREFIX_CACHE_SCOPES
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget, default_budget


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
    quotas: QuotaConfig = QuotaConfig()  # per-tenant limits at admission (quotas.py)
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
