"""Domain errors of the control plane; the servicers map each to one gRPC status code."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base of the errors a caller can act on."""


class NotFound(ControlPlaneError):
    """The named adapter, version or worker does not exist (NOT_FOUND)."""


class AlreadyExists(ControlPlaneError):
    """The name is taken (ALREADY_EXISTS)."""


class InvalidArgument(ControlPlaneError):
    """A request field is malformed; the message names it (INVALID_ARGUMENT)."""


class FailedPrecondition(ControlPlaneError):
    """The request is well formed but the current state refuses it (FAILED_PRECONDITION)."""


class Conflict(ControlPlaneError):
    """A concurrent writer changed the keys first, repeatedly (ABORTED)."""


class NotLeader(ControlPlaneError):
    """A fenced write failed: this replica no longer holds the election lease."""


class PermissionDenied(ControlPlaneError):
    """The caller's key does not allow this (PERMISSION_DENIED)."""


class Unavailable(ControlPlaneError):
    """A worker the request needs could not do its part now; a retry may work (UNAVAILABLE)."""
