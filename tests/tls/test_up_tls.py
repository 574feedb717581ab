"""`lorafleet up --tls`: the certificates it makes work for gRPC (mTLS, identities), and
the whole fleet comes up over TLS (gRPC and the gateway's HTTPS) with printed commands that
work as pasted."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from lorafleet.dataplane.up.certs import make_up_certs
from lorafleet.runtime.tls import TlsConfig
from tests.tls.test_handshakes import _ask, _refused, serve  # noqa: F401 (serve: fixture)
from tests.up.test_up import READY_LINE, SMALL, UP, Up, _paste, marked  # noqa: F401


async def test_up_certificates_give_each_part_its_identity(tmp_path, serve):  # noqa: F811
    tls = make_up_certs(tmp_path, ["controlplane", "gateway", "worker-0"], "127.0.0.1")
    cert, key = tls.cert("controlplane")
    address = await serve(TlsConfig.from_files(cert, key, tls.ca))
    assert await _ask(address, tls.client()) == b"admin"
    worker_cert, worker_key = tls.cert("worker-0")
    assert await _ask(address, TlsConfig.from_files(worker_cert, worker_key, tls.ca)) == \
        b"worker:worker-0"
    assert (tls.folder / "admin.key").stat().st_mode & 0o077 == 0  # keys: this user only
    stranger = make_up_certs(tmp_path / "other", ["gateway"], "127.0.0.1")
    assert (await _refused(address, stranger.client())).name == "UNAVAILABLE"


@pytest.mark.slow
def test_up_tls_serves_over_tls_and_its_printed_commands_work(tmp_path, marked):  # noqa: F811
    env, mark = marked
    up = Up([*UP, *SMALL, "--tls", "--data-dir", str(tmp_path / "data")], env, mark)
    try:
        up.wait_for(READY_LINE, timeout=150)
        ca = str(tmp_path / "data" / "tls" / "ca.pem")
        pirate = up.printed(r"generate .*--adapter demo/pirate ")[0]
        assert f"--tls-ca {ca}" in pirate
        done = _paste(pirate)
        assert done.returncode == 0 and "adapter demo/pirate@1" in done.stderr, done.stderr
        workers = up.printed(r"lorafleet workers --controlplane ")[0]
        assert "--tls-cert" in workers
        done = _paste(workers)
        assert done.returncode == 0 and "worker-0" in done.stdout, done.stderr
        without_cert = re.sub(r" --tls-cert \S+ --tls-key \S+", "", workers)
        done = _paste(without_cert)  # the control plane requires a client certificate
        assert done.returncode == 1 and "UNAVAILABLE" in done.stderr
        plaintext = re.sub(r" --tls-ca \S+", "", without_cert)
        assert _paste(plaintext).returncode == 1
        grpcurl = _paste(up.printed(r"grpcurl -cacert ")[0])
        assert grpcurl.returncode == 0 and '"adapter_version": "demo/pirate@1"' in grpcurl.stdout
        curl = _paste(up.printed(r"curl -s --cacert \S+ https://")[0])  # HTTPS, same CA
        assert curl.returncode == 0 and '"completion_tokens"' in curl.stdout, curl.stderr
        start = next(i for i, line in enumerate(up.lines) if "from openai import" in line)
        snippet = "\n".join(up.lines[start:start + 5])  # pasted as printed
        sdk = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                             timeout=60, check=False)
        assert sdk.returncode == 0 and sdk.stdout.strip(), sdk.stderr
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=30) == 0
    finally:
        up.stop()
