"""deploy/systemd: units for one host bind a configurable address from the environment
file, compute ports that stay valid for any GPU index, serve mTLS with the certificate
files the environment file names, and restart on failure."""

from __future__ import annotations

import re
import subprocess

import pytest
from cryptography import x509

from tests.deploy.support import DEPLOY, parse_command, read_env_file, run_exec_start, unit_values

SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
ENV = read_env_file(SYSTEMD / "lorafleet.env.example")


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_read_the_environment_file_and_restart_on_failure(unit):
    settings, key = unit_values(unit, "EnvironmentFile")  # the key: docs/security.md
    assert settings == "/etc/lorafleet/lorafleet.env"
    assert re.fullmatch(r"/etc/lorafleet/(controlplane|worker|gateway)\.key", key)
    assert unit_values(unit, "Restart") == ["on-failure"]
    assert unit_values(unit, "User") == ["lorafleet"]
    (exec_start,) = unit_values(unit, "ExecStart")
    used = set(re.findall(r"\$\{(\w+)\}|\$\$(\w+)", exec_start))
    assert {name for pair in used for name in pair if name} <= set(ENV)
    assert "--host" in exec_start and "LORAFLEET_HOST" in exec_start


def test_worker_ports_stay_valid_and_distinct_for_any_gpu(tmp_path):
    unit = SYSTEMD / "lorafleet-worker@.service"
    seen = set()
    for gpu in range(64):
        _, args = parse_command(run_exec_start(unit, ENV, str(gpu), "gpu-host", tmp_path))
        ports = {args.port, args.http_port, args.metrics_port}
        assert len(ports) == 3 and all(1024 < p <= 65535 for p in ports)
        assert not ports & seen, f"GPU {gpu} reuses a port"
        seen |= ports
        assert args.advertise_address == f"{ENV['LORAFLEET_ADVERTISE_HOST']}:{args.port}"
        assert args.worker_id == f"gpu-host-gpu{gpu}"
    assert not seen & {50050, 50051, 8080, 9401}  # the gateway's and control plane's


@pytest.mark.parametrize("gpu", [0, 9, 10, 63])
def test_worker_sees_only_its_gpu(gpu, tmp_path):
    unit = SYSTEMD / "lorafleet-worker@.service"
    assert "CUDA_VISIBLE_DEVICES=%i" in unit_values(unit, "Environment")
    _, args = parse_command(run_exec_start(unit, ENV, str(gpu), "gpu-host", tmp_path))
    assert args.port == 50100 + gpu and args.device == "cuda"
    assert args.max_lora_rank == 32 and args.dtype == "bfloat16"  # LORAFLEET_WORKER_ARGS


def test_worker_stops_after_its_grace(tmp_path):
    unit = SYSTEMD / "lorafleet-worker@.service"
    _, args = parse_command(run_exec_start(unit, ENV, "0", "gpu-host", tmp_path))
    assert int(unit_values(unit, "TimeoutStopSec")[0]) > args.grace_seconds


ROLES = {"lorafleet-controlplane.service": "controlplane",
         "lorafleet-gateway.service": "gateway", "lorafleet-worker@.service": "worker"}


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_serve_mtls_with_the_files_the_environment_names(unit, tmp_path):
    role = ROLES[unit.name]
    _, args = parse_command(run_exec_start(unit, ENV, "3", "gpu-host", tmp_path))
    prefix = f"LORAFLEET_{role.upper()}_TLS_"
    assert (args.tls_cert, args.tls_key, args.tls_ca) == (
        ENV[prefix + "CERT"], ENV[prefix + "KEY"], ENV["LORAFLEET_TLS_CA"])
    assert (args.tls_cert, args.tls_key) == (f"/etc/lorafleet/tls/{role}.crt",
                                             f"/etc/lorafleet/tls/{role}.key")
    assert args.tls_client_auth == ("none" if role == "gateway" else "require")


def test_the_documented_certificates_name_the_advertised_host(tmp_path):
    """make-certs.sh run as lorafleet.env.example says makes every file the units name,
    and the worker certificate names the address workers advertise."""
    folder = tmp_path / "tls"
    env = {"PATH": "/usr/bin:/bin", "LORAFLEET_WORKERS": "worker",
           "LORAFLEET_CERT_HOSTS": f"IP:{ENV['LORAFLEET_ADVERTISE_HOST']}"}
    subprocess.run(["sh", str(DEPLOY / "compose" / "make-certs.sh"), str(folder)], env=env,
                   check=True, capture_output=True, timeout=60)
    for name, path in ENV.items():
        if "_TLS_" in name:
            assert (folder / path.rsplit("/", 1)[1]).is_file(), name
    cert = x509.load_pem_x509_certificate((folder / "worker.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ENV["LORAFLEET_ADVERTISE_HOST"] in {str(ip) for ip in
                                               names.get_values_for_type(x509.IPAddress)}
