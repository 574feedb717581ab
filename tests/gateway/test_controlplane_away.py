"""The control plane goes away and comes back: the gateway serves from its last table
meanwhile, and the snapshot it gets on reconnecting brings what changed in between."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.controlplane.server import ControlPlane
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.controlplane.conftest import Stubs, eventually, fast_config
from tests.gateway.conftest import add_adapter, generate, holders, metric, set_rollout, table_shows

pytestmark = pytest.mark.slow


@pytest.fixture
async def replicas(etcd):
    """Two replicas, A and B, on one etcd; `restart_a()` brings A back on its old port."""
    started = {"a": ControlPlane(fast_config(etcd)), "b": ControlPlane(fast_config(etcd))}
    for replica in started.values():
        await replica.start()
    addresses = {name: f"127.0.0.1:{r.port}" for name, r in started.items()}

    async def restart_a() -> None:
        started["a"] = ControlPlane(fast_config(etcd, address=addresses["a"]))
        await started["a"].start()

    yield started, addresses, restart_a
    for replica in started.values():
        await replica.stop()


async def test_gateway_serves_while_away_and_catches_up(replicas, serving_workers, gateways):
    started, addresses, restart_a = replicas
    both = [addresses["a"], addresses["b"]]
    await serving_workers("w-0", both)
    await serving_workers("w-1", both)
    admin = Stubs(addresses["b"])
    await add_adapter(admin, "acme/a", ["/a/v1", "/a/v2"], {1: 1})
    await add_adapter(admin, "acme/old", ["/old/v1"], {1: 1})
    only_a = await gateways(addresses["a"])           # follows A alone
    either = await gateways(addresses["a"], addresses["b"])
    for gateway in (only_a, either):
        await table_shows(gateway, lambda t: holders(t, "acme/a") == {1: {"w-0"}} or
                          holders(t, "acme/a") == {1: {"w-1"}})
    await started["a"].stop()
    await eventually(lambda: metric(only_a, "lorafleet_gateway_routing_table_age_seconds") > 0.3)
    assert metric(only_a, "lorafleet_gateway_controlplane_connected") == 0

    async with grpc.aio.insecure_channel(only_a.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        replies = await asyncio.gather(*(generate(stub, "acme/a") for _ in range(20)))
        assert {(r.code, r.version) for r in replies} == {(grpc.StatusCode.OK, "acme/a@1")}
        # Meanwhile, through B: acme/a moves to v2, acme/new appears, acme/old goes.
        await set_rollout(admin, "acme/a", {2: 1})
        await add_adapter(admin, "acme/new", ["/new/v1"], {1: 1})
        await set_rollout(admin, "acme/old", {})
        await admin.adapters.DeleteAdapter(apb.DeleteAdapterRequest(name="acme/old"))

        def caught_up(t):
            return (sorted(t.routes) == ["acme/a", "acme/new"]
                    and holders(t, "acme/a").get(2) and holders(t, "acme/new").get(1))

        await table_shows(either, caught_up)  # it moved to B on its own
        assert "acme/old" in only_a.follower.table.routes  # still A's last table
        await restart_a()
        await table_shows(only_a, caught_up)
        replies = await asyncio.gather(*(generate(stub, name) for name in ("acme/a", "acme/new")))
        assert [(r.code, r.version) for r in replies] == [
            (grpc.StatusCode.OK, "acme/a@2"), (grpc.StatusCode.OK, "acme/new@1")]
        assert (await generate(stub, "acme/old")).code == grpc.StatusCode.NOT_FOUND
    assert metric(only_a, "lorafleet_gateway_routing_table_age_seconds") == 0
    assert metric(only_a, "lorafleet_gateway_controlplane_connected") == 1
    await admin.channel.close()
