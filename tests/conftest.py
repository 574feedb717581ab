"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from tests.support.etcd import EtcdServer
from tests.support.lora_suite import PeftReference, make_suite


@pytest.fixture
def etcd(tmp_path):
    """A real etcd on free loopback ports with a temporary data dir; stopped after."""
    server = EtcdServer(tmp_path / "etcd-data")
    server.data_dir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()
@pytest.fixture(scope="session")
def lora_suite(tmp_path_factory):
    """(base checkpoint dir, {adapter name: PEFT dir})."""
    return make_suite(tmp_path_factory.mktemp("lora-suite"))


@pytest.fixture(scope="session")
def peft_reference(lora_suite):
    """Greedy references from peft on transformers."""
    base, adapters = lora_suite
    return PeftReference(base, adapters)
