"""The one table from worker errors to gRPC status codes, for every worker servicer.

Servicer methods raise domain errors; `rpc_errors` (unary) and `stream_errors` (server
streaming) abort with the code this table gives the nearest class in the error's MRO;
`stream_errors` also reports each code to the servicer's `count_error` (metrics).
Anything not in the table is a bug: the caller gets INTERNAL with no detail and the
worker logs the traceback. Messages are cut to a bounded length, so a caller's oversized
input never comes back at them (nor trips their metadata limits). An error with a
`status_details()` method (a list of packed google.rpc messages, e.g. QuotaFailure) sends
them as the standard grpc-status-details-bin trailer.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import grpc

from lorafleet.dataplane.adapters.errors import (
    AdapterError,
    AdapterInvalid,
    AdapterNotFound,
    AdapterSourceUnavailable,
    BaseModelMismatch,
)
from lorafleet.dataplane.engine.engine import InvalidRequestError
from lorafleet.dataplane.lora.host_cache import DigestMismatch
from lorafleet.dataplane.lora.versions import (
    AdapterFailed,
    AdapterUnavailable,
    UnknownAdapter,
    VersionTaken,
)
from lorafleet.dataplane.server.bridge import EngineDead
from lorafleet.dataplane.server.errors import (
    AdapterLoadFailed,
    EvictTimeout,
    NotResident,
    NotServing,
    QueueFull,
    ShuttingDown,
)
from lorafleet.dataplane.server.quotas import QuotaExceeded
from lorafleet.dataplane.server.requests import BadRequest
from lorafleet.dataplane.server.status_details import caller_message, details_trailer
from lorafleet.dataplane.tokenizer import ChatTemplateError
from lorafleet.names import InvalidName

log = logging.getLogger(__name__)


STATUS_BY_ERROR: dict[type[BaseException], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidName: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownAdapter: grpc.StatusCode.NOT_FOUND,
    NotResident: grpc.StatusCode.NOT_FOUND,
    AdapterFailed: grpc.StatusCode.FAILED_PRECONDITION,
    AdapterUnavailable: grpc.StatusCode.UNAVAILABLE,
    AdapterLoadFailed: grpc.StatusCode.UNAVAILABLE,
    ChatTemplateError: grpc.StatusCode.FAILED_PRECONDITION,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    NotServing: grpc.StatusCode.UNAVAILABLE,
    EngineDead: grpc.StatusCode.INTERNAL,
    VersionTaken: grpc.StatusCode.ALREADY_EXISTS,
    DigestMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    EvictTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    AdapterNotFound: grpc.StatusCode.NOT_FOUND,
    AdapterSourceUnavailable: grpc.StatusCode.UNAVAILABLE,
    BaseModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    AdapterInvalid: grpc.StatusCode.INVALID_ARGUMENT,
    AdapterError: grpc.StatusCode.INTERNAL,
}


def status_of(error: BaseException) -> grpc.StatusCode | None:
    """The code for `error`'s nearest listed class, or None when it is not a domain error."""
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return None


async def abort_with(context: grpc.aio.ServicerContext, error: Exception,
                     count: Callable[[grpc.StatusCode], None] = lambda code: None) -> None:
    """Aborts the RPC with `error`'s status (INTERNAL, logged, for anything unlisted),
    after `count(code)`."""
    code = status_of(error)
    count(code or grpc.StatusCode.INTERNAL)
    if code is None:
        log.exception("unexpected error in %s", type(error).__name__, exc_info=error)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the worker's log)")
    await context.abort(code, caller_message(error), details_trailer(code, error))


def rpc_errors(method):
    """Decorates a unary servicer method with the table."""

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
    """Decorates a server-streaming servicer method with the table; the servicer's
    `count_error(code)` sees every status it aborts with."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            async for message in method(self, request, context):
                yield message
        except Exception as error:  # noqa: BLE001 - every error gets a status
            if _is_abort(error):
                raise
            await abort_with(context, error, self.count_error)

    return wrapper


def _is_abort(error: Exception) -> bool:
    """context.abort() raises to unwind the method; that is not an error to map."""
    return isinstance(error, grpc.aio.AbortError)
