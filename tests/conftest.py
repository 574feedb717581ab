"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
import trustme

from lorafleet.controlplane.schema import DEFAULT_ROOT
from tests.support.etcd import EtcdRoot, EtcdServer, next_test_root
from tests.support.lora_suite import PeftReference, make_suite
from tests.support.pki import Pki


@pytest.fixture(scope="session")
def shared_etcd(tmp_path_factory):
    """One real etcd for the whole session; each test writes under a key root of its own."""
    server = EtcdServer(tmp_path_factory.mktemp("shared-etcd") / "data")
    server.data_dir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd(request, shared_etcd, tmp_path):
    """This test's etcd: a key root of its own on the session's server, or, for a test marked
    `own_etcd` (one that stops or restarts etcd), a server of its own, stopped after."""
    if request.node.get_closest_marker("own_etcd") is None:
        yield EtcdRoot(shared_etcd, next_test_root(), is_own=False)
        return
    server = EtcdServer(tmp_path / "etcd-data")
    server.data_dir.mkdir()
    server.start()
    try:
        yield EtcdRoot(server, DEFAULT_ROOT, is_own=True)
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


@pytest.fixture
def pki(tmp_path) -> Pki:
    """A fresh CA for the test."""
    folder = tmp_path / "pki"
    folder.mkdir()
    return Pki(trustme.CA(), folder)


@pytest.fixture
def other_pki(tmp_path) -> Pki:
    """A second CA, unrelated to `pki`."""
    folder = tmp_path / "other-pki"
    folder.mkdir()
    return Pki(trustme.CA(), folder)
