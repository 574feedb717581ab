"""Shared wiring for every lorafleet gRPC server: binding, health, reflection, malformed
requests, graceful stop.

Each component builds its servicers and hands them here, so health checking, server
reflection (grpcurl needs no .proto files), refusal of undecodable requests and shutdown
behave the same everywhere. A server binds its port exclusively (no SO_REUSEPORT: a
second process on the same port is an error, not a silent traffic split) and can bind
before its servicers exist, so a busy port fails a start-up before any slow work.
Imports grpc only.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

# Bounded message sizes: big enough for long prompts and adapter listings.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_MALFORMED_LOG_SECONDS = 60.0


class PortInUse(OSError):
    """The address is taken by another process."""


@dataclasses.dataclass(frozen=True)
class ServerSecurity:
    """How a server meets its callers: TLS credentials (None: plaintext) and the
    interceptors that authenticate and authorize them (run in order, before any servicer).
    Every lorafleet server takes one, so all check callers the same way."""

    credentials: grpc.ServerCredentials | None = None
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()


PLAINTEXT = ServerSecurity()


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

    async def set_not_serving(self) -> None:
        """Health answers NOT_SERVING for every service (the server keeps running)."""
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish for the grace period, stops."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)


@dataclasses.dataclass
class BoundServer:
    """A server that holds its port but serves nothing yet."""

    server: grpc.aio.Server
    port: int

    async def start(self, bindings: Sequence[ServiceBinding]) -> RunningServer:
        """Registers the servicers, health and reflection, and starts serving."""
        for binding in bindings:
            binding.add(binding.servicer, self.server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        names = tuple(b.full_name for b in bindings)
        reflection.enable_server_reflection(
            (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        await self.server.start()
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return RunningServer(self.server, self.port, health_servicer, names)


async def bind_server(address: str = "127.0.0.1:0",
                      security: ServerSecurity = PLAINTEXT) -> BoundServer:
    """Creates a server and binds `address` ("host:port"; port 0 picks a free one) with
    `security`; raises PortInUse, naming the address, when another process holds it."""
    server = grpc.aio.server(
        interceptors=[MalformedRequests(), *security.interceptors],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ],
    )
    try:
        if security.credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, security.credentials)
    except RuntimeError as exc:  # grpc raises this when the bind fails
        raise PortInUse(f"cannot listen on {address}: the port is in use") from exc
    if port == 0:
        raise PortInUse(f"cannot listen on {address}: the port is in use")
    return BoundServer(server, port)


async def start_server(
    bindings: Sequence[ServiceBinding], address: str = "127.0.0.1:0",
    security: ServerSecurity = PLAINTEXT,
) -> RunningServer:
    """Binds `address` and starts serving `bindings` (see bind_server)."""
    bound = await bind_server(address, security)
    return await bound.start(bindings)


def full_name(pb2_module: Any, service: str) -> str:
    """The fully qualified name of `service` as declared in a generated pb2 module."""
    return pb2_module.DESCRIPTOR.services_by_name[service].full_name


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT to request bytes that are not the method's message, and
    logs such requests once per interval instead of a traceback each."""

    def __init__(self) -> None:
        self._num_unlogged = 0
        self._logged_at = float("-inf")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        type_name = getattr(getattr(parse, "__self__", None), "__name__", "request")

        def tolerant(data: bytes):
            try:
                return parse(data)
            except Exception as exc:  # noqa: BLE001 - any decode failure is the caller's
                self._note(handler_call_details.method)
                return _Malformed(f"request: not a valid {type_name} message ({exc})")

        if handler.response_streaming:
            return handler._replace(request_deserializer=tolerant,
                                    unary_stream=_guard_stream(handler.unary_stream))
        return handler._replace(request_deserializer=tolerant,
                                unary_unary=_guard_unary(handler.unary_unary))

    def _note(self, method: str) -> None:
        self._num_unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= _MALFORMED_LOG_SECONDS:
            log.warning("refused %d undecodable request(s) in the last %.0f s (last: %s)",
                        self._num_unlogged, _MALFORMED_LOG_SECONDS, method)
            self._num_unlogged, self._logged_at = 0, now


@dataclasses.dataclass(frozen=True)
class _Malformed:
    """Stands in for a request that did not decode."""

    message: str


def _guard_unary(behavior):
    async def guarded(request, context):
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await settle(behavior(request, context))

    return guarded


def _guard_stream(behavior):
    async def guarded(request, context):
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for response in relay(behavior(request, context)):
            yield response

    return guarded


async def settle(result):
    """A unary handler's response: awaited when the handler is async, as it is otherwise."""
    return await result if inspect.isawaitable(result) else result


async def relay(responses):
    """A streaming handler's responses, from an async iterator or a plain one."""
    if hasattr(responses, "__aiter__"):
        async for response in responses:
            yield response
    else:
        for response in responses:
            yield response
