"""Failures around the control plane: a killed leader replica, an etcd restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import aetcd
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.server import ControlPlane
from tests.controlplane.conftest import Stubs, eventually, fast_config
from tests.support.fake_worker import FakeWorker

pytestmark = pytest.mark.slow

LORAFLEET = str(pathlib.Path(sys.executable).parent / "lorafleet")


async def _start_replica(etcd, replica_id: str) -> tuple[subprocess.Popen, str]:
    """A `lorafleet controlplane` process with test timings; returns it and its address."""
    process = subprocess.Popen(
        [LORAFLEET, "controlplane", "--etcd", etcd.url, "--root", etcd.root, "--host", "127.0.0.1", "--port", "0",
         "--replica-id", replica_id, "--lease-ttl", "2", "--election-ttl", "2",
         "--resync", "0.5", "--log-level", "WARNING", "--insecure-no-auth"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
    match = re.search(r"listening on (\S+)", line)
    if not match:
        process.kill()
        raise AssertionError(f"replica {replica_id} did not start: {line!r}")
    return process, match.group(1)


async def _leader(etcd) -> str | None:
    host, port = etcd.endpoint.split(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        found = await client.get(etcd.key("leader"))
    return found.value.decode() if found else None


async def _is_leader(etcd, replica_id: str) -> bool:
    return await _leader(etcd) == replica_id


async def _register(stubs: Stubs, name: str, uri: str) -> None:
    adapter = pb.Adapter(name=name, base_model="tiny-llama")
    await stubs.adapters.CreateAdapter(pb.CreateAdapterRequest(adapter=adapter))
    request = pb.CreateAdapterVersionRequest(adapter=name, source_uri=uri)
    version = (await stubs.adapters.CreateAdapterVersion(request)).version
    assert version.state == pb.VERSION_STATE_READY, version
    weights = [pb.VersionWeight(version=version.version, weight=1)]
    await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(adapter=name, weights=weights))


def _held_anywhere(workers, key) -> bool:
    return any(key in w.resident() for w in workers)


async def test_killing_the_leader_hands_over_and_loses_nothing(etcd):
    replicas = {name: await _start_replica(etcd, name) for name in ("cp-a", "cp-b")}
    processes = [process for process, _ in replicas.values()]
    workers = [FakeWorker(f"w{i}", [a for _, a in replicas.values()]) for i in range(2)]
    try:
        for worker in workers:
            await worker.start()
        leader_id = await eventually(lambda: _leader(etcd))
        leader_process = replicas[leader_id][0]
        survivor = Stubs(next(a for name, (_, a) in replicas.items() if name != leader_id))
        await eventually(_workers_listed(survivor, 2))
        await _register(survivor, "acme/before", "/before")
        await eventually(lambda: _held_anywhere(workers, ("acme/before", 1)))
        leader_process.send_signal(signal.SIGKILL)
        leader_process.wait()
        await _register(survivor, "acme/after", "/after")  # the API needs no leader
        # The dead leader's lease runs out (2 s) and the survivor wins the election.
        other = next(name for name in replicas if name != leader_id)
        await eventually(lambda: _is_leader(etcd, other), timeout=10)
        await eventually(lambda: _held_anywhere(workers, ("acme/after", 1)), timeout=10)
        listed = await survivor.adapters.ListAdapters(pb.ListAdaptersRequest())
        assert [a.name for a in listed.adapters] == ["acme/after", "acme/before"]
        assert _held_anywhere(workers, ("acme/before", 1))
        await survivor.channel.close()
    finally:
        for worker in workers:
            await worker.kill()
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            process.stdout.close()


@pytest.mark.own_etcd
async def test_etcd_restart_recovers_without_operator_action(etcd, plane, stubs, make_worker):
    workers = [await make_worker(f"w{i}") for i in range(2)]
    await eventually(_workers_listed(stubs, 2))
    await _register(stubs, "acme/kept", "/kept")
    await eventually(lambda: _held_anywhere(workers, ("acme/kept", 1)))
    stream = stubs.fleet.WatchRoutingTable(fleet_pb.WatchRoutingTableRequest())
    snapshot = await stream.read()
    assert [r.adapter for r in snapshot.routes] == ["acme/kept"]
    await asyncio.to_thread(etcd.stop)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(etcd.start)
    # Registrations survived, and the API works again.
    got = await eventually(lambda: _get_adapter(stubs, "acme/kept"), timeout=15)
    assert got.versions[0].state == pb.VERSION_STATE_READY and got.rollout.generation == 1
    await _register(stubs, "acme/new", "/new")
    # The reconciler resumed: the new adapter gets placed and loaded.
    await eventually(lambda: _held_anywhere(workers, ("acme/new", 1)), timeout=15)
    # The routing stream resumed too, without a second snapshot.
    while True:
        message = await asyncio.wait_for(stream.read(), 15)
        assert not message.is_snapshot
        if any(r.adapter == "acme/new" and r.versions[0].workers for r in message.routes):
            break
    stream.cancel()
    assert plane.is_leader


def _workers_listed(stubs: Stubs, count: int):
    async def check():
        try:
            reply = await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())
        except Exception:  # the replica may still be starting
            return False
        return len(reply.workers) == count

    return check


async def _get_adapter(stubs: Stubs, name: str):
    try:
        return await stubs.adapters.GetAdapter(pb.GetAdapterRequest(name=name))
    except Exception:  # etcd still coming back
        return None


async def test_stop_never_waits_forever_on_leadership_work_that_ignores_cancel(etcd, monkeypatch):
    # A reconciler that does not end when cancelled (as an etcd watch that cannot close
    # would make it) once held ControlPlane.stop, and a test's teardown, for good.
    class Stubborn:
        def __init__(self, *args, **kwargs):
            pass

        async def run(self):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(3600)  # ignores the first cancel; a second one ends it

    monkeypatch.setattr("lorafleet.controlplane.server.Reconciler", Stubborn)
    replica = ControlPlane(fast_config(etcd))
    await replica.start()
    await eventually(lambda: replica.is_leader, timeout=10)
    began = time.monotonic()
    # wait_for ends a hung stop() after 20 s (its own suppress then lets it finish).
    await asyncio.wait_for(replica.stop(), 20)
    assert time.monotonic() - began < 15
