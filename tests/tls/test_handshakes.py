"""TLS and mTLS handshakes of a lorafleet server (rpcserver with TlsConfig credentials):
who gets in, who is refused, and the identity a client certificate gives the server."""

from __future__ import annotations

import grpc
import pytest

from lorafleet.runtime.rpcserver import ServerSecurity, ServiceBinding, start_server
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig, TlsFileError, peer_identity
from tests.support.pki import expired

NOBODY = b"<no certificate>"


async def _whoami(request: bytes, context) -> bytes:
    return (peer_identity(context) or "").encode() or NOBODY


def _whoami_binding() -> ServiceBinding:
    handler = grpc.method_handlers_generic_handler(
        "test.WhoAmI", {"Ask": grpc.unary_unary_rpc_method_handler(_whoami)})
    return ServiceBinding(lambda h, server: server.add_generic_rpc_handlers((h,)), handler,
                          "test.WhoAmI")


@pytest.fixture
async def serve():
    """Starts a WhoAmI server with a TlsConfig; stops it after the test."""
    started = []

    async def start(tls: TlsConfig) -> str:
        server = await start_server([_whoami_binding()], "127.0.0.1:0",
                                    ServerSecurity(tls.server_credentials()))
        started.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in started:
        await server.stop(0)


async def _ask(address: str, tls: TlsConfig) -> bytes:
    async with tls.aio_channel(address) as channel:
        return await channel.unary_unary("/test.WhoAmI/Ask")(b"", timeout=5)


async def _refused(address: str, tls: TlsConfig) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _ask(address, tls)
    return error.value.code()


async def test_mtls_gives_the_server_the_callers_certificate_name(pki, serve):
    address = await serve(pki.component("controlplane:cp-1"))
    assert await _ask(address, pki.client("gateway:gw-1")) == b"gateway:gw-1"
    assert await _ask(address, pki.component("worker:w-7")) == b"worker:w-7"


async def test_tls_without_client_auth_serves_callers_without_certificates(pki, serve):
    cert, key = pki.issue("gateway:gw-1")
    address = await serve(TlsConfig.from_files(cert, key))  # no --tls-ca: no client certs
    assert await _ask(address, pki.client()) == NOBODY
    open_port = TlsConfig.from_files(cert, key, pki.ca_file, require_client_cert=False)
    assert await _ask(await serve(open_port), pki.client()) == NOBODY  # --tls-client-auth none


async def test_a_server_certificate_from_another_ca_is_refused(pki, other_pki, serve):
    address = await serve(other_pki.component("controlplane:impostor"))
    assert await _refused(address, pki.component("gateway:gw-1")) == grpc.StatusCode.UNAVAILABLE


async def test_a_caller_without_a_certificate_is_refused_when_the_server_requires_one(pki, serve):
    address = await serve(pki.component("worker:w-1"))
    assert await _refused(address, pki.client()) == grpc.StatusCode.UNAVAILABLE
    assert await _refused(address, PLAINTEXT_TLS) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_certificate_from_another_ca_is_refused(pki, other_pki, serve):
    address = await serve(pki.component("worker:w-1"))
    cert, key = other_pki.issue("admin")
    forged = TlsConfig.from_files(cert, key, pki.ca_file)  # trusts the server, foreign cert
    assert await _refused(address, forged) == grpc.StatusCode.UNAVAILABLE


async def test_expired_certificates_are_refused_both_ways(pki, serve):
    stale_server = await serve(expired(pki, "worker:old"))
    assert await _refused(stale_server, pki.client("admin")) == grpc.StatusCode.UNAVAILABLE
    address = await serve(pki.component("worker:w-1"))
    assert await _refused(address, expired(pki, "gateway:old")) == grpc.StatusCode.UNAVAILABLE


def test_bad_files_are_named_by_their_option(pki, tmp_path):
    cert, key = pki.issue("worker:w-1")
    with pytest.raises(TlsFileError, match="--tls-ca .*missing.pem: cannot read"):
        TlsConfig.from_files(cert, key, tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsFileError, match="--tls-cert .*junk.pem: not a PEM file"):
        TlsConfig.from_files(tmp_path / "junk.pem", key)
    with pytest.raises(TlsFileError, match="--tls-cert and --tls-key go together"):
        TlsConfig.from_files(key=key)
    with pytest.raises(TlsFileError, match="--tls-ca needs --tls-cert and --tls-key"):
        TlsConfig.from_files(ca=pki.ca_file).server_credentials()
