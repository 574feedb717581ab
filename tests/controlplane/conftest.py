"""Fixtures for control-plane tests: replicas with short timings, fake workers, polling."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2_grpc as adapter_grpc
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.controlplane.server import ControlPlane, ControlPlaneConfig
from tests.support.fake_worker import FakeWorker

# Short timings keep the suite fast: workers expire 2 s after their last heartbeat.
LEASE_TTL = 2
RESYNC = 0.5


async def eventually(check, timeout: float = 10.0, interval: float = 0.1):
    """Awaits `check()` (sync or async) until it returns a truthy value; returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def fast_config(etcd, **overrides) -> ControlPlaneConfig:
    """A replica config with test timings, on the test's etcd and key root."""
    fields = dict(etcd_url=etcd.url, root=etcd.root, lease_ttl_seconds=LEASE_TTL, election_ttl_seconds=2,
                  resync_seconds=RESYNC, worker_timeout_seconds=2.0, etcd_give_up_seconds=20.0)
    return ControlPlaneConfig(**{**fields, **overrides})


class Stubs:
    """AdapterService and FleetService stubs on one channel."""

    def __init__(self, address: str):
        self.channel = grpc.aio.insecure_channel(address)
        self.adapters = adapter_grpc.AdapterServiceStub(self.channel)
        self.fleet = fleet_grpc.FleetServiceStub(self.channel)


@pytest.fixture
async def plane(etcd):
    """One control-plane replica on a free port."""
    replica = ControlPlane(fast_config(etcd))
    await replica.start()
    yield replica
    await replica.stop()


@pytest.fixture
async def stubs(plane):
    """Stubs pointed at `plane`."""
    connected = Stubs(f"127.0.0.1:{plane.port}")
    yield connected
    await connected.channel.close()


@pytest.fixture
async def make_worker(plane):
    """Starts fake workers heartbeating to `plane`; kills them all after the test."""
    started = []

    async def start(worker_id: str, **kwargs) -> FakeWorker:
        worker = FakeWorker(worker_id, [f"127.0.0.1:{plane.port}"], **kwargs)
        await worker.start()
        started.append(worker)
        await worker.registered()  # else a version created next may find no worker yet
        return worker

    yield start
    for worker in started:
        await worker.kill()
