"""A worker id belongs to one live worker: a second process claiming it is refused."""

from __future__ import annotations

import grpc
import pytest

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb


def _heartbeat(worker_id: str, address: str) -> fleet_pb.SendHeartbeatRequest:
    return fleet_pb.SendHeartbeatRequest(worker=fleet_pb.Worker(
        worker_id=worker_id, address=address,
        base_model=worker_pb.BaseModel(name="tiny-llama", architecture="LlamaForCausalLM")))


async def test_a_live_worker_id_claimed_from_another_address_is_refused(stubs):
    await stubs.fleet.SendHeartbeat(_heartbeat("gpu-host:50051", "127.0.0.1:59001"))
    await stubs.fleet.SendHeartbeat(_heartbeat("gpu-host:50051", "127.0.0.1:59001"))  # renewal
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.fleet.SendHeartbeat(_heartbeat("gpu-host:50051", "127.0.0.1:59002"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "127.0.0.1:59001" in info.value.details()
    listed = await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())
    assert [(w.worker_id, w.address) for w in listed.workers] == [
        ("gpu-host:50051", "127.0.0.1:59001")]
