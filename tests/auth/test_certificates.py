"""With mTLS, a component's identity comes from its certificate: a verified client
certificate named "worker:ID", "gateway:ID", "controlplane:ID" or "admin" authenticates
without an API key; any other name (or none) still needs a key."""

from __future__ import annotations

import grpc
import pytest

from lorafleet.runtime.auth.interceptor import AuthInterceptor, certified_principal
from lorafleet.runtime.auth.principals import Role, current_principal
from lorafleet.runtime.rpcserver import ServerSecurity, ServiceBinding, start_server

METHOD = "/test.Fleet/Heartbeat"


class _NoKeys:
    async def verify(self, key):
        return None


async def _who(request: bytes, context) -> bytes:
    principal = current_principal()
    return principal.describe().encode()


@pytest.fixture
async def fleet_port(pki):  # noqa: F811 - the fixture above
    handler = grpc.method_handlers_generic_handler(
        "test.Fleet", {"Heartbeat": grpc.unary_unary_rpc_method_handler(_who)})
    security = ServerSecurity(pki.component("controlplane:cp-0").server_credentials(),
                              (AuthInterceptor(_NoKeys(), {METHOD: frozenset({Role.WORKER})}),))
    server = await start_server(
        [ServiceBinding(lambda h, s: s.add_generic_rpc_handlers((h,)), handler, "test.Fleet")],
        "127.0.0.1:0", security)
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


async def _call(address, tls) -> bytes:
    async with tls.aio_channel(address) as channel:
        return await channel.unary_unary(METHOD)(b"", timeout=5)


async def test_a_worker_certificate_is_a_worker_principal(fleet_port, pki):  # noqa: F811
    assert await _call(fleet_port, pki.component("worker:worker-3")) == \
        b"worker (key cert:worker:worker-3)"


@pytest.mark.parametrize("name, code", [
    ("gateway:gw-1", grpc.StatusCode.PERMISSION_DENIED),  # a role, not this one
    ("tenant:acme", grpc.StatusCode.UNAUTHENTICATED),  # certificates name components only
    ("localhost", grpc.StatusCode.UNAUTHENTICATED),
])
async def test_other_certificates_get_no_worker_rights(fleet_port, pki, name, code):  # noqa: F811
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _call(fleet_port, pki.component(name))
    assert error.value.code() == code


def test_certificate_names_map_to_roles():
    assert certified_principal("controlplane:cp-1").role is Role.CONTROLPLANE
    assert certified_principal("admin").role is Role.ADMIN
    assert certified_principal("worker:") is None and certified_principal(None) is None
