"""Domain errors of the control plane; each declares its gRPC status code
(lorafleet/error_status.py)."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base of the errors a caller can act on."""


class NotFound(ControlPlaneError):
    """The named adapter, version or worker does not exist."""

    status_code_name = "NOT_FOUND"


class AlreadyExists(ControlPlaneError):
    """The name is taken."""

    status_code_name = "ALREADY_EXISTS"


class InvalidArgument(ControlPlaneError):
    """A request field is malformed; the message names it."""

    status_code_name = "INVALID_ARGUMENT"


class FailedPrecondition(ControlPlaneError):
    """The request is well formed but the current state refuses it."""

    status_code_name = "FAILED_PRECONDITION"


class Conflict(ControlPlaneError):
    """A concurrent writer changed the keys first, repeatedly."""

    status_code_name = "ABORTED"


class NotLeader(ControlPlaneError):
    """A fenced write failed: this replica no longer holds the election lease."""


class PermissionDenied(ControlPlaneError):
    """The caller's key does not allow this."""

    status_code_name = "PERMISSION_DENIED"


class Unavailable(ControlPlaneError):
    """A worker the request needs could not do its part now; a retry may work."""

    status_code_name = "UNAVAILABLE"
