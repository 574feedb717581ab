"""deploy/kubernetes with TLS on (every overlay but insecure-plaintext): cert-manager issues
one certificate per component kind from the fleet's own CA, every lorafleet container
serves and calls with it, the probes run the image's health check over mTLS, and the names
components dial are in the certificates. The certificates the manifests ask for are made
here as cert-manager would make them and the health check runs against a real server."""

from __future__ import annotations

import concurrent.futures
import fnmatch
import os
import re
import subprocess
import sys

import grpc
import pytest
import trustme
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lorafleet.runtime.tls import TlsConfig
from tests.deploy.support import (
    DEPLOY,
    OVERLAYS,
    find,
    lorafleet_commands,
    parse_command,
    pod_spec,
    render,
    workloads,
)

TLS_OVERLAYS = tuple(o for o in OVERLAYS if o != "insecure-plaintext")
CERT_MANAGER = "cert-manager.io/v1"
HEALTH_CHECK = ["python", "/opt/lorafleet/healthcheck.py"]
IMAGE_HEALTH_PORT = "50051"  # ENV LORAFLEET_HEALTH_PORT in both Dockerfiles
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _fleet(overlay):
    """(component, container, parsed options, env values, Certificate) per lorafleet
    container; the Certificate is the one whose Secret is mounted where --tls-cert is."""
    resources = render(overlay)
    commands = {name: argv for name, argv, _ in lorafleet_commands(overlay)}
    for resource, container in workloads(resources):
        name = f"{overlay}:{resource['metadata']['name']}/{container['name']}"
        if name not in commands:
            continue
        component, args = parse_command([re.sub(r"\$\((\w+)\)", r"\1", w)
                                         for w in commands[name]])
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        yield component, container, args, env, _certificate_of(
            resources, resource, container, args.tls_cert)


def _certificate_of(resources, workload, container, path):
    """The cert-manager Certificate whose Secret is mounted over `path` (None: none)."""
    if path is None:
        return None
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]["secretName"]
    (certificate,) = [c for c in find(resources, "Certificate")
                      if c["spec"]["secretName"] == secret]
    assert mount["readOnly"] is True
    return certificate


def test_every_overlay_but_the_plaintext_one_has_tls():
    assert set(OVERLAYS) - set(TLS_OVERLAYS) == {"insecure-plaintext"}
    assert len(TLS_OVERLAYS) == 3


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_every_component_serves_mtls_with_its_own_certificate(overlay):
    seen = set()
    for component, _, args, _, certificate in _fleet(overlay):
        seen.add(component)
        assert certificate is not None, f"{overlay}: {component} runs without --tls-cert"
        secret_files = {f"{args.tls_cert.rsplit('/', 1)[0]}/{f}"
                        for f in ("tls.crt", "tls.key", "ca.crt")}
        assert {args.tls_cert, args.tls_key, args.tls_ca} == secret_files
        assert certificate["spec"]["commonName"].startswith(f"{component}:")
        assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
        # Callers of the gateway bring only an API key and the CA; components require mTLS.
        assert args.tls_client_auth == ("none" if component == "gateway" else "require")
    assert {"controlplane", "worker"} <= seen


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_component_certificates_chain_to_the_fleets_own_ca(overlay):
    resources = render(overlay)
    issuers = {i["metadata"]["name"]: i["spec"] for i in find(resources, "Issuer")}
    certificates = find(resources, "Certificate")
    (ca,) = [c for c in certificates if c["spec"].get("isCA")]
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]
    (ca_issuer,) = [n for n, spec in issuers.items()
                    if spec.get("ca", {}).get("secretName") == ca["spec"]["secretName"]]
    for certificate in certificates:
        ref = certificate["spec"]["issuerRef"]
        assert ref["kind"] == "Issuer" and ref["group"] == "cert-manager.io"
        if certificate is not ca:
            assert ref["name"] == ca_issuer, certificate["metadata"]["name"]
        if "server auth" in certificate["spec"].get("usages", []):
            assert "127.0.0.1" in certificate["spec"]["ipAddresses"]  # the probes dial it
    # Issuers are namespaced: everything in the fleet's namespace, which the names spell.
    (namespace,) = {r["metadata"]["namespace"] for r, _ in workloads(resources)}
    assert {i["metadata"]["namespace"] for i in find(resources, "Issuer")} == {namespace}
    for certificate in certificates:
        assert certificate["metadata"]["namespace"] == namespace
        for name in certificate["spec"].get("dnsNames", []):
            assert name.removeprefix("*.").split(".")[1:2] in ([], [namespace]), name
    (admin,) = [c for c in certificates if c["spec"]["commonName"] == "admin"]
    assert admin["spec"]["usages"] == ["digital signature", "key encipherment", "client auth"]


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_probes_exec_the_health_check_with_the_tls_files(overlay):
    for component, container, args, env, _ in _fleet(overlay):
        probes = [container[p] for p in PROBES if p in container]
        assert len(probes) == (3 if component == "worker" else 2), component
        for probe in probes:
            assert probe["exec"]["command"] == HEALTH_CHECK and "grpc" not in probe
            assert probe["timeoutSeconds"] >= 3  # a Python start; the check's own is 3 s
        assert env.get("LORAFLEET_HEALTH_PORT", IMAGE_HEALTH_PORT) == str(args.port)
        assert (env["LORAFLEET_HEALTH_TLS_CA"], env["LORAFLEET_HEALTH_TLS_CERT"],
                env["LORAFLEET_HEALTH_TLS_KEY"]) == (args.tls_ca, args.tls_cert, args.tls_key)


def _named_in(host: str, certificate: dict) -> bool:
    names = certificate["spec"].get("dnsNames", []) + certificate["spec"].get("ipAddresses", [])
    return any(fnmatch.fnmatchcase(host, n) and host.count(".") == n.count(".") for n in names)


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_the_names_components_dial_are_in_the_certificates(overlay):
    resources = render(overlay)
    fleet = {c: (args, cert) for c, _, args, _, cert in _fleet(overlay)}
    controlplane_host = fleet["worker"][0].controlplane.rsplit(":", 1)[0]
    assert controlplane_host == "CONTROLPLANE_ADDRESS"
    (config,) = find(resources, "ConfigMap", "lorafleet-config")
    host = config["data"]["controlplane-address"].rsplit(":", 1)[0]
    assert _named_in(host, fleet["controlplane"][1])
    (worker,) = find(resources, "StatefulSet", "lorafleet-worker")
    advertised = fleet["worker"][0].advertise_address.rsplit(":", 1)[0]
    service = worker["spec"]["serviceName"]
    assert advertised == f"POD_NAME.{service}"
    assert _named_in(f"{worker['metadata']['name']}-0.{service}", fleet["worker"][1])
    (headless,) = find(resources, "Service", service)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_insecure_plaintext_takes_tls_out_and_keeps_the_rest():
    resources = render("insecure-plaintext")
    assert not [r for r in resources if r["apiVersion"] == CERT_MANAGER]
    components = set()
    for component, container, args, env, _ in _fleet("insecure-plaintext"):
        components.add(component)
        assert (args.tls_cert, args.tls_key, args.tls_ca) == (None, None, None)
        assert not [n for n in env if n.startswith("LORAFLEET_HEALTH_TLS")]
        assert "/etc/lorafleet/tls" not in {m["mountPath"] for m in container["volumeMounts"]}
        assert "/etc/lorafleet/auth" in {m["mountPath"] for m in container["volumeMounts"]}
        assert all(container[p]["exec"]["command"] == HEALTH_CHECK
                   for p in PROBES if p in container)
    assert components == {"controlplane", "gateway", "worker"}
    for resource, _ in workloads(resources):
        assert "tls" not in {v["name"] for v in pod_spec(resource).get("volumes", [])}


def _issue(ca: trustme.CA, certificate: dict, folder):
    """The Secret cert-manager would write for `certificate` (tls.crt, tls.key, ca.crt)."""
    spec = certificate["spec"]
    leaf = ca.issue_cert(*spec["dnsNames"], *spec["ipAddresses"], common_name=spec["commonName"])
    folder.mkdir()
    leaf.private_key_pem.write_to_path(str(folder / "tls.key"))
    (folder / "tls.crt").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    return folder


def _health_check(env: dict[str, str], mounted, folder, port: int) -> int:
    """The probe's command with the container's variables, files read from `folder`."""
    variables = {k: v.replace(mounted, str(folder)) for k, v in env.items()
                 if k.startswith("LORAFLEET_HEALTH_TLS") and v}
    variables["LORAFLEET_HEALTH_PORT"] = str(port)
    return subprocess.run([sys.executable, str(DEPLOY / "docker" / "healthcheck.py")],
                          env={"PATH": os.environ.get("PATH", ""), **variables},
                          capture_output=True, check=False, timeout=30).returncode


def test_the_issued_certificates_pass_the_probe_and_the_worker_name_check(tmp_path):
    """A worker serving mTLS with the worker Certificate as issued: its probe says SERVING,
    and the gateway, with its own certificate, reaches it by its advertised name."""
    fleet = {c: (args, env, cert) for c, _, args, env, cert in _fleet("production")}
    ca = trustme.CA()
    folders = {c: _issue(ca, fleet[c][2], tmp_path / c) for c in ("worker", "gateway")}
    args, env, _ = fleet["worker"]
    mounted = args.tls_cert.rsplit("/", 1)[0]
    served = TlsConfig.from_files(*(folders["worker"] / f for f in ("tls.crt", "tls.key",
                                                                      "ca.crt")))
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", served.server_credentials())
    server.start()
    try:
        assert _health_check(env, mounted, folders["worker"], port) == 0
        assert _health_check({}, mounted, folders["worker"], port) == 1  # plaintext: refused
        gateway = TlsConfig.from_files(*(folders["gateway"] / f for f in ("tls.crt", "tls.key",
                                                                            "ca.crt")))
        name = args.advertise_address.split(":")[0].replace("POD_NAME", "lorafleet-worker-1")
        with grpc.secure_channel(f"127.0.0.1:{port}", gateway.channel_credentials(),
                                 [("grpc.ssl_target_name_override", name)]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0).wait()
