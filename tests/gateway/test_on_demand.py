"""A routed version that no worker holds yet is served on its first request: the gateway has
a live worker of its base model load it (once, however many requests wait), then proxies.

No placement here: another holder of the leader key keeps the replica from reconciling, so
nothing but the gateway loads anything until the test lets go of the key.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.controlplane.conftest import RESYNC, eventually
from tests.gateway.conftest import (
    add_adapter,
    etcd_client,
    generate,
    holders,
    metric,
    release_leader,
    table_shows,
)
from tests.support.fake_worker import fake_digest


@pytest.fixture
async def plane(leaderless_plane):
    """No placement: the test holds the leader key (see conftest)."""
    return leaderless_plane


@pytest.mark.slow
async def test_first_requests_load_once_then_placement_keeps_the_copy(
        etcd, plane, stubs, serving_workers, gateways):
    worker_b = await serving_workers("w-b")
    await add_adapter(stubs, "acme/fresh", ["/fresh/v1"], {1: 1})
    gateway = await gateways(f"127.0.0.1:{plane.port}")
    await table_shows(gateway, lambda t: "acme/fresh" in t.routes and "w-b" in t.workers)
    assert holders(gateway.follower.table, "acme/fresh") == {1: set()}
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        replies = await asyncio.gather(*(generate(stub, "acme/fresh") for _ in range(8)))
        assert [(r.code, r.version, r.summary.worker_id) for r in replies] == [
            (grpc.StatusCode.OK, "acme/fresh@1", "w-b")] * 8
        assert replies[0].summary.adapter_digest == fake_digest("/fresh/v1")
        assert worker_b.num_loads() == 1  # eight requests, one LoadAdapter
        assert metric(gateway, "lorafleet_gateway_picks_total", tier="on_demand") == 8
        # w-b's heartbeat reports the copy; from then on it is an ordinary holder.
        await table_shows(gateway, lambda t: holders(t, "acme/fresh") == {1: {"w-b"}})
        assert (await generate(stub, "acme/fresh")).summary.worker_id == "w-b"
    assert metric(gateway, "lorafleet_gateway_picks_total", tier="host") == 1
    assert worker_b.num_loads() == 1

    # w-a joins (least filled, first by id); then the replica may lead and place.
    worker_a = await serving_workers("w-a")
    await table_shows(gateway, lambda t: "w-a" in t.workers)
    await release_leader(etcd)

    async def placed():
        reply = await stubs.fleet.GetPlacement(fleet_pb.GetPlacementRequest(adapter="acme/fresh"))
        return [list(p.desired_worker_ids) for p in reply.placements]

    assert await eventually(placed) == [["w-b"]]
    await asyncio.sleep(4 * RESYNC)  # a few passes: nothing moves
    assert worker_a.num_loads() == 0
    assert [c[1] for c in worker_b.calls] == ["load"]  # never evicted


async def test_a_failed_load_is_unavailable_with_its_reason_or_retried_elsewhere(
        etcd, plane, stubs, serving_workers, gateways):
    broken = await serving_workers("w-0")
    await add_adapter(stubs, "acme/gone", ["/gone/v1"], {1: 1})
    gateway = await gateways(f"127.0.0.1:{plane.port}")
    await table_shows(gateway, lambda t: "acme/gone" in t.routes)
    broken.load_failures["/gone/v1"] = (grpc.StatusCode.NOT_FOUND, "/gone/v1 does not exist")
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        reply = await generate(stub, "acme/gone")
        assert reply.code == grpc.StatusCode.UNAVAILABLE
        assert "acme/gone@1" in reply.details and "does not exist" in reply.details
        # The source can be read now: the failed load was not remembered.
        del broken.load_failures["/gone/v1"]
        assert (await generate(stub, "acme/gone")).code == grpc.StatusCode.OK
        # Placement chose w-0, which cannot load now (UNAVAILABLE): the gateway asks w-0
        # first, then retries once on w-1.
        healthy = await serving_workers("w-1")
        await add_adapter(stubs, "acme/flaky", ["/flaky/v1"], {1: 1})
        placement = fleet_pb.VersionPlacement(adapter="acme/flaky", version=1,
                                              desired_worker_ids=["w-0"])
        async with etcd_client(etcd) as client:
            await client.put(etcd.key("placement/acme/flaky/0000000001"),
                             placement.SerializeToString())
        await table_shows(gateway, lambda t: "w-1" in t.workers and "acme/flaky" in t.routes
                          and list(t.routes["acme/flaky"].versions[0].placed_worker_ids) == ["w-0"])
        broken.load_failures["/flaky/v1"] = (grpc.StatusCode.UNAVAILABLE, "disk busy")
        reply = await generate(stub, "acme/flaky")
    assert (reply.code, reply.summary.worker_id) == (grpc.StatusCode.OK, "w-1")
    assert broken.load_attempts.count("acme/flaky") >= 1  # asked, and placement may retry
    assert healthy.load_attempts == ["acme/flaky"]
    assert metric(gateway, "lorafleet_gateway_retries_total") == 1
