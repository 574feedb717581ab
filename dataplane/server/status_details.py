"""An error's google.rpc details as the standard `grpc-status-details-bin` trailer, and
the bounded message a caller may read (shared by the worker's status table, status.py,
and the gateway, which must not import the worker's error classes)."""

from __future__ import annotations

import grpc
from google.rpc import status_pb2

MAX_MESSAGE_CHARS = 1024


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
