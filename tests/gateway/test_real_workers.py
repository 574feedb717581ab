"""The gateway in front of real workers (tiny Llama, real engine, real adapters).

First with no placement (the test holds the leader key): each adapter's first request has
a real worker load it on demand. Then the control plane places everything, and greedy
outputs through the gateway equal the worker's own, token for token, for the base model,
two adapters, and both versions of a rollout reached by routing key.
"""

from __future__ import annotations

import grpc
import pytest

from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.controlplane.test_real_workers import real_workers  # noqa: F401 (the fixture)
from tests.gateway.conftest import (
    add_adapter,
    generate,
    holders,
    metric,
    release_leader,
    table_shows,
)
from tests.support.lora_suite import prompts

pytestmark = pytest.mark.slow

SPLIT = "acme/split"


@pytest.fixture
async def plane(leaderless_plane):
    """No placement until the test releases the leader key (see conftest)."""
    return leaderless_plane


async def _direct(address: str, adapter: str, prompt) -> tuple[list[int], str]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await generate(pb_grpc.InferenceServiceStub(channel), adapter, prompt=prompt,
                               max_tokens=10)
    assert reply.code == grpc.StatusCode.OK, reply
    return reply.tokens, reply.version


async def test_outputs_through_the_gateway_equal_the_workers(
        etcd, plane, stubs, real_workers, lora_suite, gateways):  # noqa: F811
    suite = lora_suite[1]
    workers = {w.worker.config.worker_id: w for w in
               [await real_workers("real-0"), await real_workers("real-1")]}
    await add_adapter(stubs, "acme/qv8", [suite["acme/qv8"]], {1: 1})
    await add_adapter(stubs, "beta/ko16", [suite["beta/ko16"]], {1: 1})
    await add_adapter(stubs, SPLIT, [suite["beta/q8"], suite["gamma/all64"]], {1: 50, 2: 50})
    gateway = await gateways(f"127.0.0.1:{plane.port}")
    await table_shows(gateway, lambda t: len(t.routes) == 3 and len(t.workers) == 2)
    prompt = prompts(3)[2]
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        for adapter in ("acme/qv8", "beta/ko16"):  # nobody holds them: loaded on demand
            reply = await generate(stub, adapter, prompt=prompt, max_tokens=10)
            assert (reply.tokens, reply.version) == await _direct(
                workers[reply.summary.worker_id].address, f"{adapter}@1", prompt)
        assert metric(gateway, "lorafleet_gateway_picks_total", tier="on_demand") == 2
        # Once heartbeats report the copies, placement keeps them where they are.
        await table_shows(gateway, lambda t: all(holders(t, a)[1] for a in ("acme/qv8",
                                                                            "beta/ko16")))
        await release_leader(etcd)  # now the control plane places every routed version
        expected = {"acme/qv8": [1], "beta/ko16": [1], SPLIT: [1, 2]}
        await table_shows(gateway, lambda t: all(
            sorted(n for n, held in holders(t, name).items() if held) == numbers
            for name, numbers in expected.items()), timeout=30)
        table = gateway.follower.table
        for adapter in ("", "acme/qv8", "beta/ko16"):
            holder = sorted(holders(table, adapter).get(1, {"real-0"}))[0]
            for prompt in prompts(3)[1:]:
                reply = await generate(stub, adapter, prompt=prompt, max_tokens=10)
                pinned = f"{adapter}@1" if adapter else ""
                assert (reply.tokens, reply.version) == await _direct(
                    workers[holder].address, pinned, prompt), adapter
        # Routing keys: one version per key, served with that version's weights.
        seen = {}
        for index in range(8):
            prompt = prompts(8)[index]
            first, second = [await generate(stub, SPLIT, prompt=prompt, max_tokens=10,
                                            routing_key=f"user-{index}") for _ in range(2)]
            assert first.version == second.version and first.tokens == second.tokens
            number = int(first.version.rpartition("@")[2])
            holder = sorted(holders(table, SPLIT)[number])[0]
            assert first.tokens == (await _direct(workers[holder].address, first.version,
                                                  prompt))[0]
            seen[index] = first.version
    assert set(seen.values()) == {f"{SPLIT}@1", f"{SPLIT}@2"}  # 8 keys reach both versions
