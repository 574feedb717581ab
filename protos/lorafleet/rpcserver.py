"""Shared wiring for every lorafleet gRPC server: health, reflection, graceful stop.

Each component builds its servicers and hands them here, so health checking, server
reflection (grpcurl needs no .proto files) and shutdown behave the same everywhere.
Imports grpc only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# Bounded message sizes: big enough for long prompts and adapter listings.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ServiceBinding:
    """One servicer and how to register it: `add(servicer, server)` and its full name."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str


@dataclasses.dataclass
class RunningServer:
    """A started server: the grpc.aio server, the port it bound and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish for the grace period, stops."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)


async def start_server(
    bindings: Sequence[ServiceBinding], address: str = "127.0.0.1:0"
) -> RunningServer:
    """Starts a grpc.aio server on `address` ("host:port"; port 0 picks a free one)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ]
    )
    for binding in bindings:
        binding.add(binding.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(b.full_name for b in bindings)
    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", *names):
        await health_servicer.set(name, serving)
    return RunningServer(server, port, health_servicer, names)


def full_name(pb2_module: Any, service: str) -> str:
    """The fully qualified name of `service` as declared in a generated pb2 module."""
    return pb2_module.DESCRIPTOR.services_by_name[service].full_name
