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

import pytest

from lorafleet.auth import AuthInterceptor
from lorafleet.auth.policy import GATEWAY_METHODS, WORKER_METHODS
from lorafleet.auth.remote import RemoteVerifier
from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.controlplane.server import ControlPlane
from lorafleet.dataplane.gateway.app import GatewayConfig, start_gateway
from lorafleet.dataplane.server.app import start_worker
from lorafleet.rpcserver import ServerSecurity
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
                     and ADAPTER in gateway.follower.table.routes)
    yield worker, gateway
    await gateway.stop(0.5)
    await worker.stop(0.5)
    await plane.stop()


async def _register(plane: ControlPlane, keys: Keys, pki, suite) -> None:
    from lorafleet.clients.aio import AsyncClient

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
