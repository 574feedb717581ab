"""Issue 14 item 5 (a): while etcd is down, admin RPCs fail fast with UNAVAILABLE.

Drill finding: they hung until the caller's deadline, because request paths retried etcd
for the store's whole 30 s give-up. Measured here: about 2 s to UNAVAILABLE (the
request give-up), and the same RPCs succeed again once etcd is back.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as adapter_api
from lorafleet.control.v1 import fleet_service_pb2 as fleet_api

pytestmark = pytest.mark.slow

# Generous for a loaded 2-core machine; the drill's hang was the caller's whole deadline.
FAIL_FAST_SECONDS = 5.0
CALLER_DEADLINE = 15.0


def calls(stubs):
    """(name, awaitable factory) of admin RPCs that read or write etcd."""
    adapter = adapter_api.Adapter(name="acme/new", base_model="tiny-llama")
    return [
        ("ListAdapters", lambda: stubs.adapters.ListAdapters(
            adapter_api.ListAdaptersRequest(), timeout=CALLER_DEADLINE)),
        ("CreateAdapter", lambda: stubs.adapters.CreateAdapter(
            adapter_api.CreateAdapterRequest(adapter=adapter), timeout=CALLER_DEADLINE)),
        ("ListWorkers", lambda: stubs.fleet.ListWorkers(
            fleet_api.ListWorkersRequest(), timeout=CALLER_DEADLINE)),
        ("GetPlacement", lambda: stubs.fleet.GetPlacement(
            fleet_api.GetPlacementRequest(), timeout=CALLER_DEADLINE)),
    ]


async def seconds_to_status(call) -> tuple[float, grpc.StatusCode]:
    """How long `call()` took to fail, and its status code."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call()
    return time.monotonic() - started, refused.value.code()


@pytest.mark.own_etcd
async def test_admin_rpcs_answer_unavailable_within_seconds_while_etcd_is_down(
        etcd, start_replica, connect):
    stubs = connect(await start_replica())
    await stubs.adapters.ListAdapters(adapter_api.ListAdaptersRequest(), timeout=10)
    await asyncio.to_thread(etcd.stop)

    for name, call in calls(stubs):
        seconds, code = await seconds_to_status(call)
        print(f"{name}: {code.name} after {seconds:.2f}s with etcd down")
        assert code == grpc.StatusCode.UNAVAILABLE, name
        assert seconds < FAIL_FAST_SECONDS, name

    await asyncio.to_thread(etcd.start)
    created = await stubs.adapters.CreateAdapter(adapter_api.CreateAdapterRequest(
        adapter=adapter_api.Adapter(name="acme/back", base_model="tiny-llama")), timeout=10)
    assert created.adapter.name == "acme/back"
