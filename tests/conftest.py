"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from tests.support.etcd import EtcdServer


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
