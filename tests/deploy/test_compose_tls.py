"""deploy/compose with TLS: every lorafleet service serves mTLS with its own certificate
from deploy/compose/certs/ (mounted read-only, the CA's key never), its health check runs
the image's script over mTLS, and make-certs.sh makes certificates that name each service
for the others and pass that health check against a real server."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lorafleet.runtime.tls import TlsConfig
from tests.deploy.support import DEPLOY, compose_interpolate, parse_command
from tests.deploy.test_compose import SERVICES

OURS = sorted(n for n, s in SERVICES.items() if s["image"].startswith("lorafleet"))
TLS_DIR = "/etc/lorafleet/tls"
MAKE_CERTS = DEPLOY / "compose" / "make-certs.sh"


def _service(name: str):
    """(role, parsed options, environment, {container path: host path} of read-only mounts)."""
    spec = SERVICES[name]
    role, args = parse_command([compose_interpolate(w) for w in spec["command"]])
    mounts = {}
    for volume in spec.get("volumes", []):
        host, container, mode = compose_interpolate(volume).split(":")
        assert mode == "ro", volume
        mounts[container] = host
    return role, args, spec["environment"], mounts


@pytest.mark.parametrize("name", OURS)
def test_each_service_serves_mtls_with_its_own_certificate(name):
    role, args, _, mounts = _service(name)
    assert (args.tls_cert, args.tls_key, args.tls_ca) == tuple(
        f"{TLS_DIR}/{f}" for f in ("tls.crt", "tls.key", "ca.crt"))
    assert mounts[args.tls_cert] == f"./certs/{name}.crt"
    assert mounts[args.tls_key] == f"./certs/{name}.key"
    assert mounts[args.tls_ca] == "./certs/ca.crt"
    assert not [h for h in mounts.values() if h.endswith("ca.key")]
    assert args.tls_client_auth == ("none" if role == "gateway" else "require")


@pytest.mark.parametrize("name", OURS)
def test_health_checks_run_the_script_over_mtls(name):
    _, args, env, _ = _service(name)
    check = SERVICES[name]["healthcheck"]
    assert check["test"] == ["CMD", "python", "/opt/lorafleet/healthcheck.py"]
    assert (env["LORAFLEET_HEALTH_TLS_CA"], env["LORAFLEET_HEALTH_TLS_CERT"],
            env["LORAFLEET_HEALTH_TLS_KEY"]) == (args.tls_ca, args.tls_cert, args.tls_key)
    assert env.get("LORAFLEET_HEALTH_PORT", "50051") == str(args.port)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The folder make-certs.sh fills, run as the docs say."""
    assert shutil.which("openssl"), "make-certs.sh needs openssl"
    folder = tmp_path_factory.mktemp("compose") / "certs"
    subprocess.run(["sh", str(MAKE_CERTS), str(folder)], check=True, capture_output=True,
                   timeout=60)
    return folder


def _read(path: pathlib.Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_make_certs_names_every_service_it_mounts(certs):
    assert (certs.stat().st_mode & 0o777) == 0o700 and (certs / "ca.key").stat().st_mode & 0o077 == 0
    for name in OURS:
        role, _, _, mounts = _service(name)
        cert = _read(certs / pathlib.Path(mounts[f"{TLS_DIR}/tls.crt"]).name)
        (common_name,) = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        assert common_name.value == f"{role}:{name}"
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {name, "localhost"} <= set(names.get_values_for_type(x509.DNSName))
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    (admin,) = _read(certs / "admin.crt").subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert admin.value == "admin"


def _files(certs: pathlib.Path, name: str) -> TlsConfig:
    return TlsConfig.from_files(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")


def test_a_worker_with_its_certificate_passes_its_health_check_and_the_gateways_dial(certs):
    _, args, env, mounts = _service("worker-0")
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", _files(certs, "worker-0").server_credentials())
    server.start()
    try:
        variables = {k: str(certs / pathlib.Path(mounts[v]).name) for k, v in env.items()
                     if k.startswith("LORAFLEET_HEALTH_TLS")}
        result = subprocess.run(
            [sys.executable, str(DEPLOY / "docker" / "healthcheck.py")], capture_output=True,
            env={"PATH": os.environ.get("PATH", ""), "LORAFLEET_HEALTH_PORT": str(port),
                 **variables}, check=False, timeout=30, text=True)
        assert result.returncode == 0, result.stderr
        host = args.advertise_address.rsplit(":", 1)[0]
        with grpc.secure_channel(f"127.0.0.1:{port}",
                                 _files(certs, "gateway").channel_credentials(),
                                 [("grpc.ssl_target_name_override", host)]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0).wait()


def test_certificates_stay_out_of_git():
    ignore = (DEPLOY / "compose" / "certs" / ".gitignore").read_text().split()
    assert "*" in ignore and "!.gitignore" in ignore
