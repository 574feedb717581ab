"""Starting and stopping the OpenAI-compatible HTTP server beside a gRPC server.

aiohttp runs on the same asyncio loop as grpc.aio, so a request is one coroutine from the
HTTP socket to the gRPC call, and a client that disconnects cancels both (handler
cancellation is on). The server talks to the InferenceService of its own process over a
grpc.aio channel, so routing, admission and errors stay where they already are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from lorafleet.dataplane.openai_http import limits
from lorafleet.dataplane.openai_http.api import OpenAIApi
from lorafleet.dataplane.openai_http.errors import ApiError, from_rpc_error
from lorafleet.dataplane.openai_http.limits import MAX_BODY_BYTES
from lorafleet.dataplane.openai_http.models import ModelLister, WorkerModels
from lorafleet.runtime.auth.interceptor import AuthInterceptor
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

log = logging.getLogger(__name__)


class _OneLineForMalformed(logging.Filter):
    """aiohttp logs every malformed request (a header line too long, broken framing) as an
    error with its traceback: a log amplifier in a caller's hands. One INFO line is enough;
    the caller already got its 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            first_line = str(error).strip().splitlines()[0][:200]
            record.msg, record.args = "refused a malformed HTTP request: %s", (first_line,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# The logger of aiohttp's connection handlers (RequestHandler's `logger`).
_protocol_log = logging.getLogger(f"{__name__}.protocol")
_protocol_log.addFilter(_OneLineForMalformed())

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass
class RunningHttp:
    """A serving HTTP server: its port, and how to stop it."""

    port: int
    _runner: web.AppRunner
    _in_flight: set[asyncio.Task]
    _closers: list[Callable[[], Awaitable[None]]]
    is_stopped: bool = False
    is_tls: bool = False  # HTTPS, with the server's --tls-cert

    @property
    def scheme(self) -> str:
        """"https" or "http"."""
        return "https" if self.is_tls else "http"

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stops accepting connections, lets requests in flight finish for the grace
        period, cancels the rest, and closes the gRPC channel. Stopping twice is a no-op."""
        if self.is_stopped:
            return
        self.is_stopped = True
        for site in list(self._runner.sites):
            await site.stop()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=grace_seconds)
        await self._runner.cleanup()
        for close in self._closers:
            await close()


async def start_http_server(*, inference_address: str, models: ModelLister,
                            base_model: str | Callable[[], str], host: str = "127.0.0.1",
                            port: int = 0, tls: TlsConfig = PLAINTEXT_TLS,
                            auth: AuthInterceptor | None = None) -> RunningHttp:
    """Serves OpenAI completions, chat and models on host:port (0 picks a free port),
    answering from the InferenceService at `inference_address` (reached with `tls`);
    `auth` (the gRPC server's) decides who sees which models."""
    channel = _channel(inference_address, tls)
    return await _start(OpenAIApi(channel, models, base_model, auth), host, port,
                        closers=[channel.close], ssl_context=tls.http_ssl_context())


async def start_worker_http(*, worker_address: str, models: WorkerModels, base_model: str,
                            host: str = "127.0.0.1", port: int = 0,
                            tls: TlsConfig = PLAINTEXT_TLS,
                            auth: AuthInterceptor | None = None) -> RunningHttp:
    """The HTTP server of a worker, generating through its gRPC port at `worker_address`;
    `auth` (the gRPC server's) authenticates each HTTP caller."""
    channel = _channel(_reachable(worker_address), tls)
    api = OpenAIApi(channel, models, base_model, auth)
    return await _start(api, host, port, closers=[channel.close],
                        ssl_context=tls.http_ssl_context())


async def _start(api: OpenAIApi, host: str, port: int, *,
                 closers: list[Callable[[], Awaitable[None]]],
                 ssl_context: ssl.SSLContext | None = None) -> RunningHttp:
    in_flight: set[asyncio.Task] = set()
    heads = _HeadDeadline()
    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          middlewares=[heads.middleware, _tracking(in_flight), _errors])
    api.add_routes(app)
    # shutdown_timeout is short: RunningHttp.stop has already waited out the grace period.
    # lingering_time: after an answer that left a body unread (408, 413), how long the
    # rest is read and dropped before the connection closes (aiohttp's default is 10 s).
    # keepalive_timeout: an idle kept-alive connection closes after HEAD_SECONDS.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=0.5, logger=_protocol_log, lingering_time=1.0,
                           keepalive_timeout=limits.HEAD_SECONDS)
    await runner.setup()
    heads.watch(runner.server)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0][1]
    return RunningHttp(bound, runner, in_flight, closers, is_tls=ssl_context is not None)


def _reachable(address: str) -> str:
    """The address to dial for a server bound to `address` (a wildcard means loopback)."""
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("", "0.0.0.0", "::", "[::]") else address


def _channel(address: str, tls: TlsConfig) -> grpc.aio.Channel:
    """A channel to this process's own gRPC server, with its TLS (its own client cert)."""
    return tls.aio_channel(address, options=[
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)])


class _HeadDeadline:
    """Closes a new connection that has not sent a whole request head within
    limits.HEAD_SECONDS (aiohttp has no such deadline before the first request)."""

    def __init__(self) -> None:
        self._started: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    def watch(self, server: web.Server) -> None:
        """Starts the deadline on each connection `server` accepts."""
        accepted = server.connection_made

        def connection_made(handler, transport: asyncio.BaseTransport) -> None:
            accepted(handler, transport)
            asyncio.get_running_loop().call_later(limits.HEAD_SECONDS, self._expire, transport)
        server.connection_made = connection_made

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """Marks the request's connection as past its first head."""
        if request.transport is not None:
            self._started.add(request.transport)
        return await handler(request)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        if transport not in self._started and not transport.is_closing():
            log.info("closed a connection that sent no whole request head in %.0f s",
                     limits.HEAD_SECONDS)
            transport.abort()


def _tracking(in_flight: set[asyncio.Task]):
    """A middleware that keeps the tasks of requests in flight, for a graceful stop."""
    @web.middleware
    async def track(request: web.Request, handler):
        task = asyncio.current_task()
        in_flight.add(task)
        try:
            return await handler(request)
        finally:
            in_flight.discard(task)
    return track


@web.middleware
async def _errors(request: web.Request, handler):
    """Every failure as an OpenAI-style error body."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = exc.response()
        if exc.status in (408, 413):  # the body was not read: the connection cannot go on
            response.force_close()
        return response
    except grpc.aio.AioRpcError as exc:
        return from_rpc_error(exc).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return ApiError(exc.status, exc.text or exc.reason, type_="invalid_request_error",
                        code=code.get(exc.status)).response()
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return ApiError(500, "internal server error", type_="server_error",
                        code="internal").response()
