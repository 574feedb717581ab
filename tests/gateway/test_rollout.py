"""Rollout weights through a live gateway: a real control plane, fast fake workers.

2,000 bare-name requests follow a 90/10 split; a routing key always gets the same version,
through two gateway replicas alike; after a rollout change new requests follow the new
weights while streams already running finish on the version they started on.
"""

from __future__ import annotations

import asyncio
import collections

import grpc
import pytest

from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.gateway.conftest import (
    add_adapter,
    generate,
    holders,
    metric,
    set_rollout,
    table_shows,
)
from tests.support.fake_worker import fake_digest

pytestmark = pytest.mark.slow

ADAPTER = "acme/support"


async def _many(stub, count: int, concurrency: int = 32, **fields) -> list:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int):
        async with gate:  # prompts start apart: alike ones go to one worker (affinity)
            return await generate(stub, ADAPTER, max_tokens=1, prompt=(index + 1, 2, 3),
                                  **fields)

    return await asyncio.gather(*(one(i) for i in range(count)))


async def _versions_held_by_both(stubs, serving_workers, gateways, plane):
    workers = [await serving_workers("w-0"), await serving_workers("w-1")]
    await add_adapter(stubs, ADAPTER, ["/a/v1", "/a/v2"], {1: 90, 2: 10}, min_replicas=2)
    gateway = await gateways(f"127.0.0.1:{plane.port}", seed=1)
    await table_shows(gateway, lambda t: holders(t, ADAPTER) == {1: {"w-0", "w-1"},
                                                                 2: {"w-0", "w-1"}})
    return workers, gateway


async def test_ninety_ten_split_over_two_thousand_requests(stubs, serving_workers, gateways,
                                                           plane):
    workers, gateway = await _versions_held_by_both(stubs, serving_workers, gateways, plane)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        replies = await _many(pb_grpc.InferenceServiceStub(channel), 2000)
    assert {r.code for r in replies} == {grpc.StatusCode.OK}
    counts = collections.Counter(r.version for r in replies)
    assert set(counts) == {f"{ADAPTER}@1", f"{ADAPTER}@2"}
    assert 0.87 <= counts[f"{ADAPTER}@1"] / 2000 <= 0.93, counts
    # The summary is the worker's: version, digest and worker as it filled them.
    for reply in replies[:50]:
        number = reply.version.rpartition("@")[2]
        assert reply.summary.adapter_digest == fake_digest(f"/a/v{number}")
        assert reply.summary.worker_id in {"w-0", "w-1"}
    # The worker is always asked for an exact version; both workers got traffic.
    sent = collections.Counter(adapter for w in workers for adapter, _ in w.received)
    assert set(sent) == {f"{ADAPTER}@1", f"{ADAPTER}@2"}
    assert all(len(w.received) > 500 for w in workers)
    assert metric(gateway, "lorafleet_gateway_requests_total", code="OK") == 2000
    picks = sum(metric(gateway, "lorafleet_gateway_picks_total", tier=t) for t in ("device",
                                                                                    "host"))
    assert picks == 2000


async def test_routing_key_keeps_a_version_on_every_gateway_replica(stubs, serving_workers,
                                                                    gateways, plane):
    _, first = await _versions_held_by_both(stubs, serving_workers, gateways, plane)
    second = await gateways(f"127.0.0.1:{plane.port}", seed=2)
    await table_shows(second, lambda t: len(holders(t, ADAPTER)) == 2)
    keys = [f"user-{i}" for i in range(150)]
    seen = collections.defaultdict(set)
    async with grpc.aio.insecure_channel(first.address) as a, \
            grpc.aio.insecure_channel(second.address) as b:
        for stub in (pb_grpc.InferenceServiceStub(a), pb_grpc.InferenceServiceStub(b)) * 2:
            replies = await asyncio.gather(*(generate(stub, ADAPTER, routing_key=k) for k in keys))
            for key, reply in zip(keys, replies, strict=True):
                seen[key].add(reply.version)
    assert all(len(versions) == 1 for versions in seen.values()), seen
    share = sum(1 for v in seen.values() if v == {f"{ADAPTER}@1"}) / len(keys)
    assert 0.8 <= share <= 0.97  # keys, too, spread by the weights


async def test_rollout_change_moves_new_requests_and_running_streams_finish(
        stubs, serving_workers, gateways, plane):
    workers, gateway = await _versions_held_by_both(stubs, serving_workers, gateways, plane)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        running = [asyncio.create_task(generate(stub, ADAPTER, max_tokens=30,
                                                request_id=f"slow-{i}")) for i in range(40)]
        await asyncio.sleep(0.3)  # every stream has started and chosen its version
        await set_rollout(stubs, ADAPTER, {1: 20, 2: 80})
        await table_shows(gateway, lambda t: [v.weight for v in t.routes[ADAPTER].versions]
                          == [20, 80])
        after = await _many(stub, 1000)
        finished = await asyncio.gather(*running)
    share = collections.Counter(r.version for r in after)[f"{ADAPTER}@1"] / 1000
    assert 0.16 <= share <= 0.24
    assert all(r.code == grpc.StatusCode.OK and len(r.tokens) == 30 for r in finished)
    # Each stream stayed on its version, and most started on the old 90% one.
    assert all(set(r.texts) == {r.version} for r in finished)
    assert collections.Counter(r.version for r in finished)[f"{ADAPTER}@1"] >= 28
