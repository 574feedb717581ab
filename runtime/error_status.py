"""From an exception to the gRPC status a caller gets: one rule for every servicer
(worker, gateway, control plane).

An error a caller can act on declares its code: a class attribute `status_code_name`,
the name of a grpc.StatusCode member, so a module can declare it without importing grpc
(the engine core, the adapter checks). A subclass inherits its base's code or declares
its own. An error that relays another hop's status (the gateway's) sets the attribute per
instance. `status_of` gives (code, message): the declared code and the error's message,
bounded so a caller's oversized input never comes back at them (nor trips their metadata
limits). An exception that declares no code is a bug: INTERNAL with no detail, and the
decorators log its traceback. An error with a `status_details()` method (packed
google.rpc messages, e.g. QuotaFailure) also sends them as the standard
grpc-status-details-bin trailer (`details_trailer`).

`unary_errors` and `stream_errors` apply the rule to grpc.aio servicer methods.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import grpc
from google.rpc import status_pb2

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1024
UNDECLARED_MESSAGE = "internal error (see the server's log)"


def code_of(error: BaseException) -> grpc.StatusCode | None:
    """The code `error` declares (its own, or its nearest base's), or None."""
    name = getattr(error, "status_code_name", None)
    code = getattr(grpc.StatusCode, name, None) if isinstance(name, str) else None
    return code if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK else None


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The (code, message) a caller gets for `error`."""
    code = code_of(error)
    if code is None:
        return grpc.StatusCode.INTERNAL, UNDECLARED_MESSAGE
    return code, caller_message(error)


def caller_message(error: BaseException) -> str:
    """What the caller may read: the error's message, bounded."""
    text = str(error)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "... (cut)"
    return text


def details_trailer(code: grpc.StatusCode, error: BaseException) -> tuple:
    """The google.rpc.Status trailer carrying the error's details, if it has any."""
    details = getattr(error, "status_details", None)
    if details is None:
        return ()
    status = status_pb2.Status(code=code.value[0], message=caller_message(error),
                               details=details())
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def abort_with(context: grpc.aio.ServicerContext, error: Exception,
                     count: Callable[[grpc.StatusCode], None] | None = None) -> None:
    """Aborts the RPC with `error`'s status, after `count(code)`; logs an undeclared one."""
    code, message = status_of(error)
    if count is not None:
        count(code)
    if code_of(error) is None:
        log.error("unexpected error %s", type(error).__name__, exc_info=error)
    await context.abort(code, message, details_trailer(code, error))


def unary_errors(method):
    """Decorates a unary servicer method: every error ends the RPC with its status."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as error:  # noqa: BLE001 - every error gets a status
            if _is_abort(error):
                raise
            await abort_with(context, error)

    return wrapper


def stream_errors(method):
    """Decorates a server-streaming servicer method: every error ends the stream with its
    status; a servicer with a `count_error(code)` method (metrics) sees each code."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            async for message in method(self, request, context):
                yield message
        except Exception as error:  # noqa: BLE001 - every error gets a status
            if _is_abort(error):
                raise
            await abort_with(context, error, getattr(self, "count_error", None))

    return wrapper


def _is_abort(error: Exception) -> bool:
    """context.abort() raises to unwind the method; that is not an error to map."""
    return isinstance(error, grpc.aio.AbortError)
