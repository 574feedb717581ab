"""The control plane against a real worker (tiny Llama, real PEFT adapters).

The worker's own heartbeat agent is not part of it yet, so a small loop here reports the
worker the way a worker would: GetWorkerStatus + ListAdapters -> SendHeartbeat. Validation,
loads and residency are the real worker's.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.dataplane.server.build import WorkerConfig
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb
from lorafleet.worker.v1 import worker_service_pb2_grpc as worker_grpc
from tests.controlplane.conftest import eventually
from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint
from tests.support.worker_thread import WorkerThread

MAX_LORA_RANK = 16


@pytest.fixture(scope="module")
def checkpoint_and_adapters(tmp_path_factory):
    """A tiny Llama checkpoint, one adapter that fits it and one whose rank is too big."""
    root = tmp_path_factory.mktemp("real-worker")
    base = make_checkpoint(root / "tiny-llama", "llama-gqa")
    good = make_adapter(base, root / "good", r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    too_big = make_adapter(base, root / "too-big", r=MAX_LORA_RANK * 2, alpha=8,
                           target_modules=["q_proj"])
    return base, good, too_big


@pytest.fixture
def real_worker(checkpoint_and_adapters):
    """A real worker on the tiny checkpoint, serving on a free loopback port."""
    config = WorkerConfig(checkpoint_and_adapters[0], device="cpu", dtype="float32",
                          kv_cache_bytes=8 << 20, block_size=4, max_loras=2,
                          max_lora_rank=MAX_LORA_RANK, max_cpu_loras=4, worker_id="real-0")
    worker = WorkerThread(config)
    yield worker
    worker.stop()


async def _heartbeat(worker_address: str, plane_address: str) -> None:
    """Reports the worker to the control plane every 0.3 s, as a worker would."""
    async with grpc.aio.insecure_channel(worker_address) as to_worker, \
            grpc.aio.insecure_channel(plane_address) as to_plane:
        worker_stub = worker_grpc.WorkerServiceStub(to_worker)
        fleet = fleet_grpc.FleetServiceStub(to_plane)
        while True:
            status = await worker_stub.GetWorkerStatus(worker_pb.GetWorkerStatusRequest())
            listed = await worker_stub.ListAdapters(worker_pb.ListAdaptersRequest())
            worker = fleet_pb.Worker(
                worker_id=status.worker_id, address=worker_address, base_model=status.base_model,
                capacities=status.capacities, load=status.load, adapters=listed.adapters)
            await fleet.SendHeartbeat(fleet_pb.SendHeartbeatRequest(worker=worker))
            await asyncio.sleep(0.3)


async def test_real_worker_validates_loads_and_is_routed(
    plane, stubs, real_worker, checkpoint_and_adapters
):
    _, good, too_big = checkpoint_and_adapters
    beating = asyncio.create_task(_heartbeat(real_worker.address, f"127.0.0.1:{plane.port}"))
    try:
        workers = await eventually(_listed_workers(stubs))
        base_model = workers[0].base_model.name
        adapter = pb.Adapter(name="acme/support", base_model=base_model)
        await stubs.adapters.CreateAdapter(pb.CreateAdapterRequest(adapter=adapter))
        ok = await _add_version(stubs, str(good))
        refused = await _add_version(stubs, f"file://{too_big}")
        assert ok.state == pb.VERSION_STATE_READY and len(ok.digest) == 64
        assert ok.rank == 4 and sorted(ok.target_modules) == ["q_proj", "v_proj"]
        assert refused.state == pb.VERSION_STATE_REJECTED
        assert any(str(MAX_LORA_RANK * 2) in reason for reason in refused.reasons), refused.reasons
        await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(
            adapter="acme/support", weights=[pb.VersionWeight(version=1, weight=1)]))
        resident = await eventually(lambda: _resident_on(real_worker), timeout=20)
        assert (resident.adapter, resident.version, resident.digest) == (
            "acme/support", 1, ok.digest)
        stream = stubs.fleet.WatchRoutingTable(fleet_pb.WatchRoutingTableRequest())
        table = {}
        while not table.get("acme/support"):
            message = await asyncio.wait_for(stream.read(), 10)
            table.update({r.adapter: r for r in message.routes if r.versions[0].workers})
        assert table["acme/support"].versions[0].workers[0].worker_id == "real-0"
        stream.cancel()
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def _add_version(stubs, uri):
    request = pb.CreateAdapterVersionRequest(adapter="acme/support", source_uri=uri)
    return (await stubs.adapters.CreateAdapterVersion(request)).version


def _listed_workers(stubs):
    async def check():
        return list((await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())).workers)

    return check


async def _resident_on(worker: WorkerThread):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        listed = await worker_grpc.WorkerServiceStub(channel).ListAdapters(
            worker_pb.ListAdaptersRequest())
    ready = [r for r in listed.adapters if r.state == worker_pb.LOAD_STATE_READY]
    return ready[0] if ready else None
