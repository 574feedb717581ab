"""Attacks on a fleet started the way deploy/ starts it: mTLS between the parts, keys
checked through the control plane, OpenAI HTTP on the gateway and on a worker.

Each test is an attack from issue 21 that worked before its fix.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request

import grpc
import pytest

from lorafleet.clients.aio import AsyncClient
from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.controlplane.server import ControlPlane
from lorafleet.dataplane.gateway.app import GatewayConfig, start_gateway
from lorafleet.dataplane.server.app import start_worker
from lorafleet.inference.v1 import inference_service_pb2 as inference_pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as inference_grpc
from lorafleet.runtime.auth import TENANT_HEADER, AuthInterceptor
from lorafleet.runtime.auth.policy import GATEWAY_METHODS, WORKER_METHODS
from lorafleet.runtime.auth.remote import RemoteVerifier
from lorafleet.runtime.rpcserver import ServerSecurity
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb
from tests.auth.conftest import Keys, auth_config
from tests.controlplane.conftest import eventually
from tests.server.conftest import worker_config

ADAPTER = "acme/qv8"


def _security(tls, controlplane: str, own_key: str, methods) -> ServerSecurity:
    verifier = RemoteVerifier([controlplane], own_key, open_channel=tls.aio_channel)
    return ServerSecurity(tls.server_credentials(), (AuthInterceptor(verifier, methods),))


@pytest.fixture
async def fleet(etcd, keys: Keys, pki, lora_suite):
    """A control plane, a worker and a gateway as deploy/ runs them: each with its own
    certificate (client certificates required), keys on, HTTP on the worker and the gateway.
    Yields (worker, gateway)."""
    cp_tls = pki.component("controlplane:cp-1")
    plane = ControlPlane(auth_config(etcd, keys, tls=cp_tls,
                                     security=ServerSecurity(cp_tls.server_credentials())))
    controlplane = f"127.0.0.1:{await plane.start()}"
    base, suite = lora_suite
    worker_tls = pki.component("worker:w-0")
    worker = await start_worker(
        worker_config(base, worker_id="w-0", model_name="tiny-llama"),
        controlplanes=(controlplane,), heartbeat_seconds=0.3, api_key=keys.worker,
        http_port=0, tls=worker_tls,
        security=_security(worker_tls, controlplane, keys.worker, WORKER_METHODS))
    gateway_tls = pki.component("gateway:gw-0")
    gateway = await start_gateway(GatewayConfig(
        controlplanes=(controlplane,), port=0, backoff_first_seconds=0.05,
        backoff_cap_seconds=0.3, api_key=keys.gateway, http_port=0, tls=gateway_tls,
        security=_security(gateway_tls, controlplane, keys.gateway, GATEWAY_METHODS)))
    await _register(plane, keys, pki, suite)
    await eventually(lambda: gateway.follower.table is not None
                     and ADAPTER in gateway.follower.table.routes
                     and gateway.follower.table.routes[ADAPTER].versions[0].workers)
    yield worker, gateway
    await gateway.stop(0.5)
    await worker.stop(0.5)
    await plane.stop()


async def _register(plane: ControlPlane, keys: Keys, pki, suite) -> None:
    tls = pki.client("admin")
    async with AsyncClient(f"127.0.0.1:{plane.port}", api_key=keys.admin, timeout=30,
                           root_certificates=tls.root_certificates,
                           private_key=tls.private_key,
                           certificate_chain=tls.certificate_chain) as admin:
        await admin.create_adapter(ADAPTER, base_model="tiny-llama")
        version = await admin.create_adapter_version(ADAPTER, str(suite["acme/qv8"]))
        assert version.version.state == apb.VERSION_STATE_READY
        await admin.update_rollout(ADAPTER, {1: 100})


def _post(url: str, ca_file, body: dict, key: str | None = None) -> tuple[int, dict]:
    """POST over HTTPS trusting only the fleet's CA, with no client certificate."""
    context = ssl.create_default_context(cafile=str(ca_file))
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


COMPLETION = {"model": ADAPTER, "prompt": "Hello", "max_tokens": 2, "temperature": 0}


@pytest.mark.slow
async def test_anonymous_https_is_401_not_the_server_itself(fleet, pki, keys):
    """Issue 21 #1: with no key and no client certificate, the HTTP layer's own hop to its
    gRPC port (made with the server's certificate) made the caller the gateway (200, a
    completion of a tenant's adapter) or the worker (403)."""
    worker, gateway = fleet
    for server in (gateway, worker):
        url = f"https://127.0.0.1:{server.http.port}/v1/completions"
        status, body = await asyncio.to_thread(_post, url, pki.ca_file, COMPLETION)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    # The tenant's own key still works, through the gateway's HTTP.
    url = f"https://127.0.0.1:{gateway.http.port}/v1/completions"
    status, body = await asyncio.to_thread(_post, url, pki.ca_file, COMPLETION, keys.acme)
    assert status == 200 and body["choices"][0]["text"]


class _Rogue(grpc.GenericRpcHandler):
    """A process with a CA-signed worker certificate posing as a worker: it answers Generate
    with its own text, refuses everything else, and keeps the metadata each call brought."""

    def __init__(self):
        self.seen: list[tuple[str, tuple]] = []

    def service(self, handler_call_details):
        self.seen.append((handler_call_details.method,
                          tuple(handler_call_details.invocation_metadata)))
        if handler_call_details.method.endswith("/Generate"):
            return grpc.unary_stream_rpc_method_handler(
                self._generate, inference_pb.GenerateRequest.FromString,
                inference_pb.GenerateResponse.SerializeToString)

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "rogue")

        return grpc.unary_unary_rpc_method_handler(refuse, lambda raw: raw, lambda raw: raw)

    async def _generate(self, request, context):
        yield inference_pb.GenerateResponse(delta=inference_pb.TokenDelta(token_ids=[1],
                                                                          text="pwned"))
        yield inference_pb.GenerateResponse(summary=inference_pb.GenerateSummary(
            finish_reason=inference_pb.FINISH_REASON_LENGTH, worker_id="rogue",
            adapter_version=request.adapter))


async def _heartbeat_as_rogue(tls, controlplane: str, address: str, version) -> None:
    """Registers worker "rogue" at `address`, claiming the routed `version` of ADAPTER
    READY with its digest."""
    claim = worker_pb.AdapterResidency(
        adapter=ADAPTER, version=version.version, digest=version.digest,
        tier=worker_pb.TIER_DEVICE, state=worker_pb.LOAD_STATE_READY)
    worker = fleet_pb.Worker(
        worker_id="rogue", address=address, adapters=[claim],
        base_model=worker_pb.BaseModel(name="tiny-llama", architecture="LlamaForCausalLM"),
        capacities=worker_pb.Capacities(max_loras=4, max_lora_rank=16, max_cpu_loras=8))
    async with tls.aio_channel(controlplane) as channel:
        await fleet_grpc.FleetServiceStub(channel).SendHeartbeat(
            fleet_pb.SendHeartbeatRequest(worker=worker), timeout=10)


@pytest.mark.slow
async def test_a_rogue_worker_is_not_routed_to_and_receives_no_credential(fleet, pki, keys):
    """Issue 21 #2: with a worker certificate, a process heartbeated a new worker id that
    claimed a tenant's version READY; it was routed tenants' requests carrying the gateway
    key, and called by the control plane with the admin key: both replayable. (A worker
    credential still makes a worker, which placement may give new versions to; what it
    claims beyond that is not believed, and nothing it receives can be replayed.)"""
    worker, gateway = fleet
    rogue_tls = pki.component("worker:rogue")
    handler = _Rogue()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", rogue_tls.server_credentials())
    await server.start()
    try:
        version = gateway.follower.table.routes[ADAPTER].versions[0]
        controlplane = gateway.follower.controlplanes[0]
        for _ in range(3):
            await _heartbeat_as_rogue(rogue_tls, controlplane, f"127.0.0.1:{port}", version)
            await asyncio.sleep(0.5)  # reconcile passes and routing updates see the claim
        assert "rogue" in gateway.follower.table.workers  # registered, as any worker is
        served_by = []
        async with _tenant_client(gateway.address, pki, keys.acme) as client:
            for _ in range(11):
                completion = await client.generate("Hello", adapter=ADAPTER, max_tokens=2)
                served_by.append(completion.summary.worker_id)
        assert served_by == ["w-0"] * 11, gateway.follower.table.routes[ADAPTER]
        sent = [value for _, metadata in handler.seen for name, value in metadata
                if name == "authorization"]
        assert sent == []  # whatever reached it carried no bearer credential
        # What a rogue can do with its own certificate at a real worker: not generate, and
        # naming a tenant does not make it one.
        request = inference_pb.GenerateRequest(
            adapter=ADAPTER, text="Hello", sampling=inference_pb.SamplingParams(max_tokens=2))
        async with rogue_tls.aio_channel(worker.address) as channel:
            stream = inference_grpc.InferenceServiceStub(channel).Generate(
                request, metadata=((TENANT_HEADER, "acme"),), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                [message async for message in stream]
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(None)


def _tenant_client(address: str, pki, key: str) -> AsyncClient:
    """A tenant's client: its key, and a certificate that names no component (the gateway
    requires one from every caller)."""
    tls = pki.client("acme-app")
    return AsyncClient(address, api_key=key, timeout=60, root_certificates=tls.root_certificates,
                       private_key=tls.private_key, certificate_chain=tls.certificate_chain)


def _get_models(url: str, ca_file, key: str | None) -> tuple[int, list[str]]:
    context = ssl.create_default_context(cafile=str(ca_file))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30,
                                    context=context) as reply:
            return reply.status, [card["id"] for card in json.load(reply)["data"]]
    except urllib.error.HTTPError as error:
        return error.code, []


@pytest.mark.slow
async def test_a_tenant_lists_its_own_models_on_a_worker(fleet, pki, keys):
    """Issue 22 #7: a tenant key's models.list() on a single worker was 403 (the list read
    WorkerService, the admin surface); it shows the tenant its own adapters, as the gateway
    does, and nothing of other tenants'."""
    worker, _ = fleet
    url = f"https://127.0.0.1:{worker.http.port}/v1/models"
    assert await asyncio.to_thread(_get_models, url, pki.ca_file, keys.acme) == (
        200, ["tiny-llama", ADAPTER, f"{ADAPTER}@1"])
    assert await asyncio.to_thread(_get_models, url, pki.ca_file, keys.globex) == (
        200, ["tiny-llama"])
    assert (await asyncio.to_thread(_get_models, url, pki.ca_file, None))[0] == 401


async def test_refused_generate_calls_are_counted_by_the_gateway(fleet, pki):
    """Issue 22 #8: the gateway's requests counter missed the calls its auth refused."""
    _, gateway = fleet
    counted = gateway.metrics.registry.get_sample_value(
        "lorafleet_gateway_requests_total", {"code": "UNAUTHENTICATED"})
    tls = pki.client("acme-app")
    request = inference_pb.GenerateRequest(adapter=ADAPTER, text="Hello")
    async with tls.aio_channel(gateway.address) as channel:
        stream = inference_grpc.InferenceServiceStub(channel).Generate(request, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            [message async for message in stream]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert gateway.metrics.registry.get_sample_value(
        "lorafleet_gateway_requests_total", {"code": "UNAUTHENTICATED"}) == counted + 1
