"""The leader's reconciler against fake workers: loads, re-placement, failures, drain."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb
from tests.controlplane.conftest import LEASE_TTL, RESYNC, eventually


async def _routed_adapter(stubs, name, uris, weights, **fields):
    adapter = pb.Adapter(name=name, base_model="tiny-llama", **fields)
    await stubs.adapters.CreateAdapter(pb.CreateAdapterRequest(adapter=adapter))
    for uri in uris:
        request = pb.CreateAdapterVersionRequest(adapter=name, source_uri=uri)
        version = (await stubs.adapters.CreateAdapterVersion(request)).version
        assert version.state == pb.VERSION_STATE_READY, version
    split = [pb.VersionWeight(version=i + 1, weight=w) for i, w in enumerate(weights)]
    await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(adapter=name, weights=split))


async def _workers_up(stubs, count):
    async def listed():
        reply = await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())
        return len(reply.workers) == count

    await eventually(listed)


def _holders(workers, key):
    return sorted(w.worker_id for w in workers if key in w.resident())


async def _next_routes(stream, wanted):
    """Reads the routing stream, merging changes, until `wanted(table)` holds."""
    table = {}
    while True:
        message = await stream.read()
        if message is grpc.aio.EOF:
            raise AssertionError("routing stream ended")
        if message.is_snapshot:
            table = {}
        table.update({route.adapter: route for route in message.routes})
        for name in message.removed_adapters:
            table.pop(name, None)
        if wanted(table):
            return message, table


async def test_rollout_90_10_makes_both_versions_resident_and_routed(stubs, make_worker):
    workers = [await make_worker(f"w{i}") for i in range(2)]
    await _workers_up(stubs, 2)
    stream = stubs.fleet.WatchRoutingTable(fleet_pb.WatchRoutingTableRequest())
    first = await stream.read()
    assert first.is_snapshot and list(first.routes) == []
    await _routed_adapter(stubs, "acme/support", ["/v1", "/v2"], [90, 10])
    await eventually(lambda: _holders(workers, ("acme/support", 1))
                     and _holders(workers, ("acme/support", 2)))
    listed = [await _list_adapters(w) for w in workers]
    assert {(r.adapter, r.version) for reply in listed for r in reply} == {
        ("acme/support", 1), ("acme/support", 2)}

    def both_routed(table):
        route = table.get("acme/support")
        return route and all(v.workers for v in route.versions)

    message, table = await asyncio.wait_for(_next_routes(stream, both_routed), 10)
    assert not message.is_snapshot and message.revision > first.revision
    route = table["acme/support"]
    assert [(v.version, v.weight) for v in route.versions] == [(1, 90), (2, 10)]
    for version in route.versions:
        holder = version.workers[0]
        assert holder.tier == worker_pb.TIER_HOST
        assert (holder.worker_id, holder.address) in {(w.worker_id, w.address) for w in workers}
    stream.cancel()
    placement = await stubs.fleet.GetPlacement(fleet_pb.GetPlacementRequest(adapter="acme/support"))
    for entry in placement.placements:
        assert list(entry.resident_worker_ids) == list(entry.desired_worker_ids)


@pytest.mark.slow
async def test_dead_worker_adapters_move_to_survivors(stubs, make_worker):
    workers = [await make_worker(f"w{i}") for i in range(3)]
    await _workers_up(stubs, 3)
    await _routed_adapter(stubs, "acme/a", ["/a1"], [1], min_replicas=2)
    await _routed_adapter(stubs, "acme/b", ["/b1"], [1])
    await eventually(lambda: len(_holders(workers, ("acme/a", 1))) == 2
                     and _holders(workers, ("acme/b", 1)))
    victim = next(w for w in workers if ("acme/a", 1) in w.resident())
    survivors = [w for w in workers if w is not victim]
    killed_at = time.monotonic()
    await victim.kill()
    await eventually(lambda: len(_holders(survivors, ("acme/a", 1))) == 2
                     and _holders(survivors, ("acme/b", 1)), timeout=LEASE_TTL + RESYNC + 5)
    # Within the lease TTL plus one resync (plus heartbeat and RPC slack on a busy CPU).
    assert time.monotonic() - killed_at < LEASE_TTL + RESYNC + 2.5


async def test_failed_load_is_recorded_and_does_not_block_others(stubs, make_worker):
    broken = await make_worker("w0")
    broken.load_failures["/bad-load"] = (grpc.StatusCode.FAILED_PRECONDITION,
                                         "adapter trained for another base model")
    healthy = await make_worker("w1", max_cpu_loras=1)
    await _workers_up(stubs, 2)
    await _routed_adapter(stubs, "acme/ok", ["/ok"], [1])
    await _routed_adapter(stubs, "acme/flaky", ["/bad-load"], [1])

    async def failure_recorded():
        reply = await stubs.fleet.GetPlacement(fleet_pb.GetPlacementRequest(adapter="acme/flaky"))
        return reply.placements and dict(reply.placements[0].failures)

    failures = await eventually(failure_recorded)
    assert "adapter trained for another base model" in failures["w0"]
    assert "FAILED_PRECONDITION" in failures["w0"]
    await eventually(lambda: _holders([broken, healthy], ("acme/ok", 1)))


async def test_drain_loads_the_new_replica_before_evicting_the_old(stubs, make_worker):
    workers = [await make_worker(f"w{i}") for i in range(2)]
    await _workers_up(stubs, 2)
    await _routed_adapter(stubs, "acme/a", ["/a1"], [1])
    key = ("acme/a", 1)
    first = (await eventually(lambda: _holders(workers, key)))[0]
    source = next(w for w in workers if w.worker_id == first)
    target = next(w for w in workers if w is not source)
    drained = await stubs.fleet.DrainWorker(fleet_pb.DrainWorkerRequest(worker_id=first))
    assert drained.worker.is_draining
    await eventually(lambda: _holders(workers, key) == [target.worker_id])
    # Order of events: the target loaded it before the source evicted it.
    loaded_at = next(i for i, c in enumerate(_timeline(workers)) if c == ("load", target.worker_id))
    evicted_at = next(i for i, c in enumerate(_timeline(workers)) if c == ("evict", first))
    assert loaded_at < evicted_at
    await eventually(lambda: source.is_draining)  # told through its next heartbeat reply


async def test_demand_adds_replicas_and_rollback_evicts_the_unrouted_version(stubs, make_worker):
    workers = [await make_worker(f"w{i}") for i in range(3)]
    await _workers_up(stubs, 3)
    await _routed_adapter(stubs, "acme/a", ["/a1", "/a2"], [0, 1])
    await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(
        adapter="acme/a", weights=[pb.VersionWeight(version=1, weight=1)]))
    await eventually(lambda: _holders(workers, ("acme/a", 1)) and not _holders(workers, ("acme/a", 2)))
    workers[0].requests_per_adapter["acme/a@1"] = 11  # 11 in flight / 4 per replica -> 3
    await eventually(lambda: len(_holders(workers, ("acme/a", 1))) == 3)
    await stubs.adapters.RollbackRollout(pb.RollbackRolloutRequest(adapter="acme/a"))
    await eventually(lambda: _holders(workers, ("acme/a", 2))
                     and not _holders(workers, ("acme/a", 1)))


async def _list_adapters(worker):
    from lorafleet.worker.v1 import worker_service_pb2_grpc as worker_grpc

    async with grpc.aio.insecure_channel(worker.address) as channel:
        reply = await worker_grpc.WorkerServiceStub(channel).ListAdapters(
            worker_pb.ListAdaptersRequest())
    return list(reply.adapters)


def _timeline(workers):
    """(kind, worker_id) of every load and evict, in the order they happened."""
    calls = [(at, kind, w.worker_id) for w in workers for at, kind, _, _ in w.calls]
    return [(kind, worker_id) for _, kind, worker_id in sorted(calls)]
