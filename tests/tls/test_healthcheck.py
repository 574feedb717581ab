"""The container health check (deploy/docker/healthcheck.py) against a server with mTLS:
SERVING with the CA and a certificate from the environment, refused without them."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys

from tests.tls.test_handshakes import serve  # noqa: F401 (the fixture)

HEALTHCHECK = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"


async def _check(address: str, **tls_files: pathlib.Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_HEALTH")}
    env["LORAFLEET_HEALTH_ADDR"] = address
    env.update({f"LORAFLEET_HEALTH_TLS_{name.upper()}": str(path)
                for name, path in tls_files.items()})
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HEALTHCHECK), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode()


async def test_the_health_check_speaks_mtls(pki, serve):  # noqa: F811
    address = await serve(pki.component("worker:w-1"))
    cert, key = pki.issue("worker:w-1-probe")
    assert await _check(address, ca=pki.ca_file, cert=cert, key=key) == (0, f"{address}: SERVING\n")
    code, out = await _check(address, ca=pki.ca_file)  # no client certificate
    assert code == 1 and "UNAVAILABLE" in out
    code, out = await _check(address)  # plaintext to a TLS port
    assert code == 1 and "UNAVAILABLE" in out
