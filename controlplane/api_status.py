"""Maps control-plane errors to gRPC status codes, for every servicer method."""

from __future__ import annotations

import functools
import logging

import grpc

from lorafleet.controlplane.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from lorafleet.controlplane.store import StoreUnavailable

log = logging.getLogger(__name__)

STATUS_BY_ERROR = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.ABORTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def grpc_errors(method):
    """Decorates a unary servicer method: domain errors abort with their status code."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except tuple(STATUS_BY_ERROR) as error:
            await context.abort(STATUS_BY_ERROR[type(error)], str(error))

    return wrapper
