"""Why the worker refuses or ends a request; each declares its gRPC status code
(lorafleet/error_status.py)."""

from __future__ import annotations


class QueueFull(RuntimeError):
    """More requests are waiting than the worker accepts."""

    status_code_name = "RESOURCE_EXHAUSTED"


class ShuttingDown(RuntimeError):
    """The worker is shutting down and takes no new requests."""

    status_code_name = "UNAVAILABLE"


class NotServing(RuntimeError):
    """The worker's engine has stopped; another worker must serve."""

    status_code_name = "UNAVAILABLE"


class AdapterLoadFailed(RuntimeError):
    """The request's adapter could not be brought back from its source."""

    status_code_name = "UNAVAILABLE"


class EvictTimeout(TimeoutError):
    """A version's requests did not finish in time; nothing was evicted."""

    status_code_name = "DEADLINE_EXCEEDED"


class NotResident(LookupError):
    """The adapter or version to evict is not on this worker."""

    status_code_name = "NOT_FOUND"
