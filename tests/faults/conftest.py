"""Fixtures for fault drills: control-plane replicas on the real `etcd` fixture."""

from __future__ import annotations

import pytest

from lorafleet.controlplane.server import ControlPlane
from tests.controlplane.conftest import Stubs, fast_config


@pytest.fixture
async def start_replica(etcd):
    """Starts control-plane replicas with test timings; stops them all after the test."""
    started = []

    async def start(**overrides) -> ControlPlane:
        replica = ControlPlane(fast_config(etcd, **overrides))
        await replica.start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


@pytest.fixture
async def connect():
    """Opens AdapterService/FleetService stubs to a replica; closes them after the test."""
    opened = []

    def open_stubs(replica: ControlPlane) -> Stubs:
        stubs = Stubs(f"127.0.0.1:{replica.port}")
        opened.append(stubs)
        return stubs

    yield open_stubs
    for stubs in opened:
        await stubs.channel.close()
