"""Container health check: exit 0 when the process's gRPC health service says SERVING.

Every lorafleet server (worker, control plane, gateway) serves grpc.health.v1, so one
check fits every image. The address is $LORAFLEET_HEALTH_ADDR (default
127.0.0.1:$LORAFLEET_HEALTH_PORT, port 50051); the image sets the port, compose and
`docker run -e` may change it. grpc and grpcio-health-checking are in every lorafleet
install, so the check needs nothing more. A server started with --tls-cert/--tls-key is
checked over TLS when $LORAFLEET_HEALTH_TLS_CA names the CA file (and, for a server that
requires client certificates, $LORAFLEET_HEALTH_TLS_CERT and $LORAFLEET_HEALTH_TLS_KEY a
certificate and key: the server's own will do). See docs/security.md.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    """Exit status 0 for SERVING, 1 for anything else (NOT_SERVING, no answer, timeout)."""
    port = os.environ.get("LORAFLEET_HEALTH_PORT", "50051")
    address = os.environ.get("LORAFLEET_HEALTH_ADDR", f"127.0.0.1:{port}")
    try:
        with _channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=3.0)
    except grpc.RpcError as exc:
        print(f"{address}: {exc.code().name}", file=sys.stderr)
        return 1
    except OSError as exc:  # a TLS file named by the environment cannot be read
        print(f"{address}: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _channel(address: str) -> grpc.Channel:
    """Plaintext, or TLS with the CA (and client certificate) the environment names."""
    ca = os.environ.get("LORAFLEET_HEALTH_TLS_CA")
    if not ca:
        return grpc.insecure_channel(address)
    cert, key = (os.environ.get(f"LORAFLEET_HEALTH_TLS_{name}") for name in ("CERT", "KEY"))
    credentials = grpc.ssl_channel_credentials(
        _read(ca), _read(key) if key else None, _read(cert) if cert else None)
    return grpc.secure_channel(address, credentials)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


if __name__ == "__main__":
    sys.exit(main())
