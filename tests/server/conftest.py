"""One worker on the LoRA suite, shared by the server tests of a module."""

from __future__ import annotations

import pytest

from lorafleet.dataplane.config.worker_config import WorkerConfig
from tests.support.worker_thread import WorkerThread


def worker_config(base, **overrides) -> WorkerConfig:
    """A small float32 CPU worker; its engine on a thread (starts in a fraction of the
    time; tests/server/test_engine_process.py covers the engine in its own process)."""
    options = dict(device="cpu", dtype="float32", kv_cache_bytes=16 << 20, block_size=4,
                   max_loras=4, max_cpu_loras=8, worker_id="test-worker",
                   engine_runs="thread")
    options.update(overrides)
    return WorkerConfig(base, **options)


@pytest.fixture(scope="module")
def served(lora_suite):
    """A worker serving the base model and all eight suite adapters (as given at start)."""
    base, adapters = lora_suite
    worker = WorkerThread(worker_config(base), adapters=[(n, str(p)) for n, p in adapters.items()])
    yield worker
    worker.stop()
