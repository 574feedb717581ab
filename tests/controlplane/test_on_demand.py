"""FleetService.PlaceAdapterVersion: a gateway's on-demand placement, recorded before the
load, taken back when the worker cannot load it."""

from __future__ import annotations

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from tests.controlplane.conftest import eventually


async def _routed(stubs, name: str, source: str, base_model: str = "tiny-llama") -> None:
    await stubs.adapters.CreateAdapter(apb.CreateAdapterRequest(
        adapter=apb.Adapter(name=name, base_model=base_model)))
    await stubs.adapters.CreateAdapterVersion(apb.CreateAdapterVersionRequest(
        adapter=name, source_uri=source))
    await stubs.adapters.UpdateRollout(apb.UpdateRolloutRequest(
        adapter=name, weights=[apb.VersionWeight(version=1, weight=1)]))


async def _place(stubs, adapter: str, worker_id: str, version: int = 1):
    return await stubs.fleet.PlaceAdapterVersion(fleet_pb.PlaceAdapterVersionRequest(
        adapter=adapter, version=version, worker_id=worker_id), timeout=30)


async def _placed(stubs, adapter: str) -> list[str]:
    reply = await stubs.fleet.GetPlacement(fleet_pb.GetPlacementRequest(adapter=adapter))
    return [w for p in reply.placements for w in p.desired_worker_ids]


async def test_placing_records_the_worker_then_loads_it_there(stubs, make_worker):
    first = await make_worker("w-a")
    await _routed(stubs, "acme/a", "/a/v1")
    await eventually(lambda: first.residency)  # the reconciler placed it on the only worker
    second = await make_worker("w-b")
    await eventually(lambda: _has_worker(stubs, "w-b"))
    reply = await _place(stubs, "acme/a", "w-b")
    assert sorted(reply.placement.desired_worker_ids) == ["w-a", "w-b"]
    assert ("acme/a", 1) in second.residency  # loaded before the answer
    assert "w-b" in reply.placement.placed_on_demand


async def test_what_cannot_be_placed_is_refused_with_its_reason(stubs, make_worker):
    await make_worker("w-a")
    await make_worker("w-other", base_model="other-model")
    await _routed(stubs, "acme/a", "/a/v1")
    await eventually(lambda: _has_worker(stubs, "w-other"))
    cases = [("acme/a", "w-nobody", 1, grpc.StatusCode.NOT_FOUND),
             ("acme/a", "w-a", 2, grpc.StatusCode.NOT_FOUND),  # no such routed version
             ("acme/a", "w-other", 1, grpc.StatusCode.FAILED_PRECONDITION)]
    for adapter, worker_id, version, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _place(stubs, adapter, worker_id, version)
        assert refused.value.code() == code, (worker_id, version)


async def test_a_worker_that_cannot_load_it_is_taken_out_again(stubs, make_worker):
    await make_worker("w-a")
    await _routed(stubs, "acme/a", "/a/v1")
    await eventually(lambda: _placed_on(stubs, "acme/a", "w-a"))
    broken = await make_worker("w-b")
    broken.load_failures["/a/v1"] = (grpc.StatusCode.INTERNAL, "disk on fire")
    await eventually(lambda: _has_worker(stubs, "w-b"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _place(stubs, "acme/a", "w-b")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "disk on fire" in refused.value.details()
    assert await _placed(stubs, "acme/a") == ["w-a"]
    reply = await stubs.fleet.GetPlacement(fleet_pb.GetPlacementRequest(adapter="acme/a"))
    assert "disk on fire" in reply.placements[0].failures["w-b"]


async def _has_worker(stubs, worker_id: str) -> bool:
    reply = await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())
    return any(w.worker_id == worker_id for w in reply.workers)


async def _placed_on(stubs, adapter: str, worker_id: str) -> bool:
    return worker_id in await _placed(stubs, adapter)
