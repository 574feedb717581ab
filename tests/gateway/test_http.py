"""The gateway's OpenAI-compatible HTTP endpoint (dataplane/openai_http, started with
--http-port): /v1/models from the routing table, completions routed like gRPC requests."""

from __future__ import annotations

import aiohttp

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.dataplane.gateway.models import RoutingModels
from lorafleet.dataplane.gateway.router import Router
from lorafleet.dataplane.gateway.table import RoutingTable
from tests.gateway.conftest import BASE_MODEL, add_adapter, holders, table_shows


async def test_models_are_the_base_models_and_routed_adapters():
    table = RoutingTable().apply(fleet_pb.WatchRoutingTableResponse(
        is_snapshot=True,
        routes=[fleet_pb.AdapterRoute(adapter=name, base_model=model)
                for name, model in (("beta/b", "m1"), ("acme/a", "m1"), ("acme/c", "m2"))],
        workers=[fleet_pb.WorkerRoute(worker_id="w", address="w:1", base_model="m1")]))
    models = RoutingModels(lambda: table, Router(lambda: table))
    cards = await models.list_models()
    assert [(c.id, c.parent) for c in cards] == [
        ("m1", None), ("m2", None), ("acme/a", "m1"), ("acme/c", "m2"), ("beta/b", "m1")]
    assert models.base_model() == ""  # two base models and no --base-model: none means base
    pinned = RoutingModels(lambda: table, Router(lambda: table, base_model="m1"))
    assert pinned.base_model() == "m1"
    assert await RoutingModels(lambda: None, Router(lambda: None)).list_models() == []


async def test_http_requests_are_routed_through_the_gateway(plane, stubs, serving_workers,
                                                            gateways):
    worker = await serving_workers("w-0")
    await add_adapter(stubs, "acme/a", ["/a/v1", "/a/v2"], {2: 1})
    gateway = await gateways(f"127.0.0.1:{plane.port}", http_port=0)
    await table_shows(gateway, lambda t: holders(t, "acme/a") == {2: {"w-0"}})
    base_url = f"http://127.0.0.1:{gateway.http.port}/v1"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/models") as response:
            listed = [(m["id"], m.get("parent")) for m in (await response.json())["data"]]
        body = {"model": "acme/a", "prompt": "hello", "max_tokens": 3}
        async with session.post(f"{base_url}/completions", json=body) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
    assert listed == [(BASE_MODEL, None), ("acme/a", BASE_MODEL)]
    assert answer["choices"][0]["text"] == "acme/a@2" * 3  # the fake names its version
    assert worker.received[-1][0] == "acme/a@2"
