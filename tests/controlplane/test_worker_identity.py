"""A worker id belongs to one live worker: a second process claiming it is refused."""

from __future__ import annotations

import socket

import grpc
import pytest

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb
from tests.controlplane.conftest import eventually


def _heartbeat(worker_id: str, address: str) -> fleet_pb.SendHeartbeatRequest:
    return fleet_pb.SendHeartbeatRequest(worker=fleet_pb.Worker(
        worker_id=worker_id, address=address,
        base_model=worker_pb.BaseModel(name="tiny-llama", architecture="LlamaForCausalLM")))


async def test_a_live_worker_id_claimed_from_another_address_is_refused(stubs, make_worker):
    holder = await make_worker("gpu-host:50051")  # it answers health checks at its address
    await eventually(lambda: _listed(stubs))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.fleet.SendHeartbeat(_heartbeat("gpu-host:50051", "127.0.0.1:59002"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert holder.address in info.value.details()
    assert await _listed(stubs) == [("gpu-host:50051", holder.address)]


async def test_an_id_whose_holder_stopped_answering_is_taken_over_at_once(stubs):
    """Issue 22 #1: a worker restarted on another port (a new `lorafleet up` keeping its
    etcd) was refused until its predecessor's lease ran out, and the routing table sent
    requests to the dead address meanwhile."""
    with socket.socket() as gone:  # a port nobody listens on
        gone.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{gone.getsockname()[1]}"
    await stubs.fleet.SendHeartbeat(_heartbeat("gpu-host:50051", dead))
    await stubs.fleet.SendHeartbeat(_heartbeat("gpu-host:50051", "127.0.0.1:59002"))
    assert await _listed(stubs) == [("gpu-host:50051", "127.0.0.1:59002")]


async def _listed(stubs) -> list[tuple[str, str]]:
    listed = await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())
    return [(w.worker_id, w.address) for w in listed.workers]
