"""A whole fleet over mTLS: control plane, a real worker and a gateway, each with its own
certificate from one CA; the Python client and the `lorafleet` command reach them with the
CA and a client certificate, and the components reach each other the same way (heartbeat,
routing table, validation, placement, proxying)."""

from __future__ import annotations

import asyncio
import ssl
import sys

import aiohttp
import pytest

from lorafleet.clients.aio import AsyncClient
from lorafleet.controlplane.server import ControlPlane
from lorafleet.dataplane.gateway.app import GatewayConfig, start_gateway
from lorafleet.dataplane.server.app import start_worker
from lorafleet.runtime.rpcserver import ServerSecurity
from lorafleet.runtime.tls import TlsConfig
from tests.controlplane.conftest import eventually, fast_config
from tests.server.conftest import worker_config

BASE_MODEL = "tiny-llama"


def _client(address: str, tls: TlsConfig) -> AsyncClient:
    return AsyncClient(address, timeout=30, root_certificates=tls.root_certificates,
                       private_key=tls.private_key, certificate_chain=tls.certificate_chain)


@pytest.fixture
async def fleet(etcd, pki, lora_suite):
    """(control-plane address, worker, gateway), every one serving mTLS."""
    cp_tls = pki.component("controlplane:cp-1")
    plane = ControlPlane(fast_config(etcd, security=ServerSecurity(
        cp_tls.server_credentials()), tls=cp_tls))
    cp_port = await plane.start()
    controlplane = f"127.0.0.1:{cp_port}"
    worker_tls = pki.component("worker:tls-0")
    worker = await start_worker(
        worker_config(lora_suite[0], worker_id="tls-0", model_name=BASE_MODEL),
        controlplanes=(controlplane,), heartbeat_seconds=0.3, http_port=0,
        security=ServerSecurity(worker_tls.server_credentials()), tls=worker_tls)
    gateway_tls = pki.component("gateway:gw-1")
    gateway = await start_gateway(GatewayConfig(
        controlplanes=(controlplane,), port=0, backoff_first_seconds=0.05,
        backoff_cap_seconds=0.3, security=ServerSecurity(gateway_tls.server_credentials()),
        tls=gateway_tls))
    yield controlplane, worker, gateway
    await gateway.stop(0.5)
    await worker.stop(0.5)
    await plane.stop()


async def test_client_and_components_talk_over_mtls(fleet, pki, lora_suite):
    controlplane, worker, gateway = fleet
    admin = pki.client("admin")
    async with _client(controlplane, admin) as client:
        await eventually(lambda: _num_workers(client, 1))  # the heartbeat came over mTLS
        await client.create_adapter("acme/qv8", base_model=BASE_MODEL)
        reply = await client.create_adapter_version("acme/qv8", str(lora_suite[1]["acme/qv8"]))
        assert reply.version.reasons == []  # validated by the worker, called over mTLS
        await client.update_rollout("acme/qv8", {1: 1})
    await eventually(lambda: gateway.follower.table is not None
                     and "acme/qv8" in gateway.follower.table.routes)
    async with _client(gateway.address, pki.client("tenant:acme")) as client:
        completion = await client.generate(token_ids=[1, 2, 3], adapter="acme/qv8",
                                           max_tokens=4, temperature=0)
    assert completion.summary.adapter_version == "acme/qv8@1"
    assert completion.summary.worker_id == "tls-0"
    async with _client(worker.address, admin) as client:
        status = await client.get_worker_status()
    assert status.worker_id == "tls-0"
    # The OpenAI HTTP port serves HTTPS with the worker's certificate.
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    url = f"https://127.0.0.1:{worker.http.port}/v1/models"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        assert response.status == 200 and worker.http.scheme == "https"
        assert BASE_MODEL in [m["id"] for m in (await response.json())["data"]]


async def test_the_command_line_client_takes_the_ca_and_a_certificate(fleet, pki):
    controlplane, _, _ = fleet
    cert, key = pki.issue("admin")
    common = ["workers", "--controlplane", controlplane, "--tls-ca", str(pki.ca_file)]
    code, out, _ = await _lorafleet(*common, "--tls-cert", str(cert), "--tls-key", str(key))
    assert code == 0 and "tls-0" in out
    code, _, err = await _lorafleet(*common)  # the control plane requires a certificate
    assert code == 1 and "UNAVAILABLE" in err
    code, _, err = await _lorafleet(*common, "--tls-cert", str(cert))
    assert code == 2 and "--tls-cert and --tls-key go together" in err


async def _num_workers(client: AsyncClient, count: int) -> bool:
    return len((await client.list_workers()).workers) == count


async def _lorafleet(*argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lorafleet.clients.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()
