"""Why the worker refuses or ends a request; status.py maps each to a gRPC code."""

from __future__ import annotations


class QueueFull(RuntimeError):
    """More requests are waiting than the worker accepts (RESOURCE_EXHAUSTED)."""


class ShuttingDown(RuntimeError):
    """The worker is shutting down and takes no new requests (UNAVAILABLE)."""


class NotServing(RuntimeError):
    """The worker's engine has stopped; another worker must serve (UNAVAILABLE)."""


class AdapterLoadFailed(RuntimeError):
    """The request's adapter could not be brought back from its source (UNAVAILABLE)."""


class EvictTimeout(TimeoutError):
    """A version's requests did not finish in time; nothing was evicted (DEADLINE_EXCEEDED)."""


class NotResident(LookupError):
    """The adapter or version to evict is not on this worker (NOT_FOUND)."""
