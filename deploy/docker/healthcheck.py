"""Container health check: exit 0 when the process's gRPC health service says SERVING.

Every lorafleet server (worker, control plane, gateway) serves grpc.health.v1, so one
check fits every image. The address is $LORAFLEET_HEALTH_ADDR (default
127.0.0.1:$LORAFLEET_HEALTH_PORT, port 50051); the image sets the port, compose and
`docker run -e` may change it. grpc and grpcio-health-checking are in every lorafleet
install, so the check needs nothing more. TLS does not exist in lorafleet yet: when it
does, this check will need the CA bundle too (see docs/deploy.md).
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
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=3.0)
    except grpc.RpcError as exc:
        print(f"{address}: {exc.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
