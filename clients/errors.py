"""Typed errors for every lorafleet call, each carrying the gRPC status it came from.

    try:
        client.generate("hi", adapter="acme/support")
    except lorafleet.clients.NotFound as error:
        print(error.code, error.message)

One table (`ERRORS`) maps status codes to classes; a code without a class of its own
(CANCELLED, UNKNOWN, ...) raises the base `LorafleetError` with that code.
"""

from __future__ import annotations

import grpc


class LorafleetError(Exception):
    """A call failed with gRPC status `code`; `message` is the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class _FixedCode(LorafleetError):
    """A subclass for one status code: constructed from the message alone."""

    CODE: grpc.StatusCode

    def __init__(self, message: str):
        super().__init__(self.CODE, message)


class NotFound(_FixedCode):
    """The adapter, version, worker or source named does not exist."""

    CODE = grpc.StatusCode.NOT_FOUND


class InvalidArgument(_FixedCode, ValueError):
    """The request is malformed; the message names the field. Also a ValueError, since
    the client raises it for bad arguments before anything is sent."""

    CODE = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(_FixedCode):
    """The caller may not use this resource (another tenant's adapter)."""

    CODE = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(_FixedCode):
    """The server did not accept the caller's credentials (API key or certificate)."""

    CODE = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(_FixedCode):
    """The server is full (for example its waiting queue); retry later."""

    CODE = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(_FixedCode):
    """The server cannot be reached or cannot serve this now (draining, no worker)."""

    CODE = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(_FixedCode):
    """The call's deadline passed before it finished."""

    CODE = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(_FixedCode):
    """The system is not in a state that allows this (base-model mismatch, version not
    ready, adapter still receiving traffic)."""

    CODE = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(_FixedCode):
    """The adapter or version being created exists already."""

    CODE = grpc.StatusCode.ALREADY_EXISTS


class Internal(_FixedCode):
    """A server fault, or a stream that broke the protocol; other requests are unaffected."""

    CODE = grpc.StatusCode.INTERNAL


ERRORS: dict[grpc.StatusCode, type[_FixedCode]] = {
    cls.CODE: cls
    for cls in (NotFound, InvalidArgument, PermissionDenied, Unauthenticated, ResourceExhausted,
                Unavailable, DeadlineExceeded, FailedPrecondition, AlreadyExists, Internal)
}


def error_for(code: grpc.StatusCode, message: str) -> LorafleetError:
    """The typed error for a status code (the base class when the code has none)."""
    cls = ERRORS.get(code)
    return cls(message) if cls is not None else LorafleetError(code, message)


def error_from_rpc(error: grpc.RpcError) -> LorafleetError:
    """The typed error for a failed gRPC call (sync or asyncio)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    return error_for(code or grpc.StatusCode.UNKNOWN, message or "")
