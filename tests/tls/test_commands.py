"""The TLS, binding and source options of the server commands, as parsed from a command
line: what they build, and the one-line refusals of bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorafleet.controlplane.cli import build_parser as controlplane_parser
from lorafleet.controlplane.cli import config_from_args as controlplane_config
from lorafleet.dataplane.gateway.cli import build_parser as gateway_parser
from lorafleet.dataplane.gateway.cli import config_from_args as gateway_config
from lorafleet.runtime.startup import StartupError

NO_AUTH = "--insecure-no-auth"


def test_the_control_plane_binds_loopback_unless_told_otherwise(pki):
    config = controlplane_config(controlplane_parser().parse_args(
        ["--etcd", "http://127.0.0.1:2379", NO_AUTH]))
    assert config.address == "127.0.0.1:50051"
    assert config.security.credentials is None and not config.tls.is_enabled
    cert, key = pki.issue("controlplane:cp-1")
    exposed = controlplane_config(controlplane_parser().parse_args(
        ["--etcd", "http://127.0.0.1:2379", "--host", "0.0.0.0", NO_AUTH, "--tls-cert",
         str(cert), "--tls-key", str(key), "--tls-ca", str(pki.ca_file)]))
    assert exposed.address == "0.0.0.0:50051"
    assert exposed.security.credentials is not None
    assert exposed.tls.root_certificates == pki.ca_file.read_bytes()


def test_a_server_refuses_a_ca_without_its_own_certificate(pki):
    args = gateway_parser().parse_args(["--controlplane", "127.0.0.1:1", NO_AUTH,
                                        "--tls-ca", str(pki.ca_file)])
    with pytest.raises(StartupError, match="--tls-ca needs --tls-cert"):
        gateway_config(args)


@pytest.mark.slow
@pytest.mark.parametrize("options, message", [
    (["--adapter-root", "/no/such/root"], "--adapter-root /no/such/root: not a directory"),
    (["--tls-cert", "/no/cert.pem", "--tls-key", "/no/key.pem"], "--tls-cert /no/cert.pem"),
])
def test_serve_refuses_bad_options_in_one_line(tmp_path, options, message):
    done = subprocess.run(
        [sys.executable, "-m", "lorafleet.clients.cli", "serve", "--model", str(tmp_path),
         "--port", "0", "--metrics-port", "-1", NO_AUTH, *options],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lorafleet serve: error: ") and message in last
