"""Auth across the fleet: a gateway and a real worker that check keys through the control
plane. A tenant reaches its own adapter through the gateway; another tenant's adapter is
NOT_FOUND through the gateway and directly at the worker, exactly like an absent one."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import grpc
import pytest

from lorafleet.control.v1 import access_service_pb2 as access_pb
from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.dataplane.gateway.app import GatewayConfig, start_gateway
from lorafleet.dataplane.server.app import start_worker
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lorafleet.runtime.auth import AuthInterceptor
from lorafleet.runtime.auth.policy import GATEWAY_METHODS, WORKER_METHODS
from lorafleet.runtime.auth.remote import RemoteVerifier
from lorafleet.runtime.rpcserver import ServerSecurity
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc
from tests.auth.conftest import code_and_details
from tests.controlplane.conftest import eventually
from tests.server.conftest import worker_config

OWN, OTHER = "acme/qv8", "globex/ko16"


def _checked_by(controlplane: str, own_key: str, methods) -> ServerSecurity:
    return ServerSecurity(interceptors=(
        AuthInterceptor(RemoteVerifier([controlplane], own_key), methods),))


@pytest.fixture
async def fleet(secured, connect, keys, lora_suite):
    """(worker address, gateway address) behind the secured control plane, with acme's and
    globex's adapters routed."""
    controlplane = f"127.0.0.1:{secured.port}"
    base, suite = lora_suite
    worker = await start_worker(
        worker_config(base, worker_id="w-auth", model_name="tiny-llama"),
        controlplanes=(controlplane,), heartbeat_seconds=0.3, api_key=keys.worker,
        security=_checked_by(controlplane, keys.worker, WORKER_METHODS))
    gateway = await start_gateway(GatewayConfig(
        controlplanes=(controlplane,), port=0, backoff_first_seconds=0.05,
        backoff_cap_seconds=0.3, api_key=keys.gateway, http_port=0,
        security=_checked_by(controlplane, keys.gateway, GATEWAY_METHODS)))
    admin = connect(keys.admin)
    for name, source in ((OWN, suite["acme/qv8"]), (OTHER, suite["beta/ko16"])):
        await admin.call("adapters", "CreateAdapter", apb.CreateAdapterRequest(
            adapter=apb.Adapter(name=name, base_model="tiny-llama")))
        made = await admin.call("adapters", "CreateAdapterVersion",
                                apb.CreateAdapterVersionRequest(adapter=name, source_uri=str(source)))
        assert made.version.state == apb.VERSION_STATE_READY  # the worker accepted the admin's key
        await admin.call("adapters", "UpdateRollout", apb.UpdateRolloutRequest(
            adapter=name, weights=[apb.VersionWeight(version=1, weight=1)]))
    await eventually(lambda: gateway.follower.table is not None
                     and len(gateway.follower.table.routes) == 2)
    yield worker.address, gateway.address, f"http://127.0.0.1:{gateway.http.port}/v1"
    await gateway.stop(0.5)
    await worker.stop(0.5)


async def _generate(address: str, key: str | None, adapter: str, **extra_metadata):
    request = pb.GenerateRequest(adapter=adapter, token_ids=pb.TokenIds(ids=[1, 2, 3]),
                                 sampling=pb.SamplingParams(max_tokens=2, temperature=0))
    metadata = ((("authorization", f"Bearer {key}"),) if key else ()) + tuple(
        (k.replace("_", "-"), v) for k, v in extra_metadata.items())
    async with grpc.aio.insecure_channel(address) as channel:
        stream = pb_grpc.InferenceServiceStub(channel).Generate(request, metadata=metadata,
                                                                timeout=60)
        return [m async for m in stream]


def _same_shape(hidden: tuple, absent: tuple, hidden_name: str, absent_name: str) -> bool:
    return (hidden[0] == absent[0] == grpc.StatusCode.NOT_FOUND
            and hidden[1].replace(hidden_name, absent_name).encode() == absent[1].encode())


async def test_tenants_through_the_gateway_reach_only_their_own_adapters(fleet, keys):
    worker, gateway, _ = fleet
    replies = await _generate(gateway, keys.acme, OWN)
    assert replies[-1].summary.adapter_version == f"{OWN}@1"
    hidden = await code_and_details(_generate(gateway, keys.acme, OTHER))
    absent = await code_and_details(_generate(gateway, keys.acme, "globex/nope"))
    assert _same_shape(hidden, absent, OTHER, "globex/nope")
    assert (await code_and_details(_generate(gateway, None, OWN)))[0] == (
        grpc.StatusCode.UNAUTHENTICATED)


async def test_the_worker_applies_the_same_rules_to_a_tenant_that_reaches_it_directly(
        fleet, keys):
    worker, gateway, _ = fleet
    # The admin's request through the gateway loads globex's adapter on the worker.
    replies = await _generate(gateway, keys.admin, OTHER)
    assert replies[-1].summary.adapter_version == f"{OTHER}@1"
    hidden = await code_and_details(_generate(worker, keys.acme, f"{OTHER}@1"))
    absent = await code_and_details(_generate(worker, keys.acme, "globex/nope@1"))
    assert _same_shape(hidden, absent, OTHER, "globex/nope")
    # A tenant cannot vouch for another tenant: its x-lorafleet-tenant is ignored.
    vouched = await code_and_details(_generate(worker, keys.acme, f"{OTHER}@1",
                                               x_lorafleet_tenant="globex"))
    assert vouched[0] == grpc.StatusCode.NOT_FOUND
    assert (await _generate(worker, keys.globex, f"{OTHER}@1"))[-1].HasField("summary")


async def test_a_worker_refuses_admin_calls_from_tenants_and_strangers(fleet, keys):
    worker, _, _ = fleet
    async with grpc.aio.insecure_channel(worker) as channel:
        stub = wpb_grpc.WorkerServiceStub(channel)
        request = wpb.LoadAdapterRequest(adapter="acme/evil", source_uri="/etc")
        tenant = await code_and_details(stub.LoadAdapter(
            request, metadata=(("authorization", f"Bearer {keys.acme}"),)))
        stranger = await code_and_details(stub.ListAdapters(wpb.ListAdaptersRequest()))
    assert tenant[0] == grpc.StatusCode.PERMISSION_DENIED
    assert stranger[0] == grpc.StatusCode.UNAUTHENTICATED


async def test_a_revoked_key_is_refused_by_the_gateway_within_one_second(fleet, connect, keys):
    _, gateway, _ = fleet
    made = await connect(keys.admin).call("access", "CreateKey", access_pb.CreateKeyRequest(
        role=access_pb.ROLE_TENANT, tenant="acme"))
    assert (await _generate(gateway, made.key, OWN))[-1].HasField("summary")
    await connect(keys.admin).call("access", "RevokeKey",
                                   access_pb.RevokeKeyRequest(key_id=made.api_key.key_id))
    revoked_at = time.monotonic()
    while True:
        try:
            await _generate(gateway, made.key, OWN)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            break
    assert time.monotonic() - revoked_at < 1.0


def _models(url: str, key: str | None) -> tuple[int, list[str]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/models", headers=headers),
                                    timeout=10) as reply:
            return reply.status, [card["id"] for card in json.load(reply)["data"]]
    except urllib.error.HTTPError as error:
        return error.code, []


async def test_the_openai_model_list_shows_a_tenant_only_its_own_adapters(fleet, keys):
    _, _, http = fleet
    assert await asyncio.to_thread(_models, http, keys.acme) == (200, ["tiny-llama", OWN])
    assert await asyncio.to_thread(_models, http, keys.admin) == (200, ["tiny-llama", OWN, OTHER])
    assert (await asyncio.to_thread(_models, http, None))[0] == 401
