"""Fixtures for client tests: a real worker with one adapter, and the control-plane
fixtures of tests/controlplane. The worker's modules are imported inside its fixtures, so
the tests against scripted servers load no model code."""

from __future__ import annotations

import pytest

from tests.controlplane.conftest import make_worker, plane  # noqa: F401  (fixtures)

ADAPTER = "acme/support"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """(base checkpoint dir, PEFT adapter dir) of a tiny random Llama."""
    from tests.support.tiny_adapters import make_adapter
    from tests.support.tiny_models import make_checkpoint

    root = tmp_path_factory.mktemp("client-model")
    base = make_checkpoint(root / "base", "llama-gqa")
    adapter = make_adapter(base, root / "support", r=8, alpha=16,
                           target_modules=["q_proj", "v_proj"])
    return base, adapter


@pytest.fixture(scope="module")
def worker(adapter_dir):
    """A real worker serving ADAPTER (as version 1) on a free loopback port."""
    from tests.server.conftest import worker_config
    from tests.support.worker_thread import WorkerThread

    base, adapter = adapter_dir
    running = WorkerThread(worker_config(base), adapters=[(ADAPTER, str(adapter))])
    yield running
    running.stop()
