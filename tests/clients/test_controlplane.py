"""The admin calls of AsyncClient against a real control plane over a real etcd."""

from __future__ import annotations

import grpc
import pytest

from lorafleet.clients.aio import AsyncClient
from lorafleet.clients.errors import AlreadyExists, NotFound
from tests.controlplane.conftest import eventually


async def test_adapter_and_fleet_calls(plane, make_worker):
    await make_worker("w1")
    async with AsyncClient(f"127.0.0.1:{plane.port}", api_key="ignored-for-now") as client:
        created = await client.create_adapter("acme/support", base_model="tiny-llama",
                                              description="support bot", min_replicas=1)
        assert created.adapter.name == "acme/support" and created.adapter.description == "support bot"
        with pytest.raises(AlreadyExists):
            await client.create_adapter("acme/support", base_model="tiny-llama")
        with pytest.raises(NotFound) as raised:
            await client.get_adapter("acme/missing")
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        listed = await client.list_adapters(tenant="acme")
        assert [a.name for a in listed.adapters] == ["acme/support"]

        async def worker_ids():
            return [w.worker_id for w in (await client.list_workers()).workers]

        assert await eventually(worker_ids) == ["w1"]
        version = (await client.create_adapter_version("acme/support", "/v1")).version
        assert version.version == 1
        rollout = (await client.update_rollout("acme/support", {1: 100})).rollout
        assert [(w.version, w.weight) for w in rollout.weights] == [(1, 100)]
