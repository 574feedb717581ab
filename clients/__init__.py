"""lorafleet's Python client: `Client` (blocking) and `AsyncClient` (asyncio) for Generate
and the admin services, typed stream events, and typed errors. Imports grpc and the
generated stubs only, so a service that calls lorafleet never installs torch.

Guide: docs/client.md.
"""

from lorafleet.clients.aio import AsyncClient
from lorafleet.clients.client import Client
from lorafleet.clients.errors import (
    ERRORS,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LorafleetError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from lorafleet.clients.events import (
    Completion,
    Event,
    FinishReason,
    Summary,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
)
from lorafleet.clients.retry import RetryPolicy

__all__ = [
    "ERRORS", "AlreadyExists", "AsyncClient", "Client", "Completion", "DeadlineExceeded",
    "Event", "FailedPrecondition", "FinishReason", "Internal", "InvalidArgument",
    "LorafleetError", "NotFound", "PermissionDenied", "ResourceExhausted", "RetryPolicy",
    "Summary", "TokenEvent", "TokenLogprob", "TopLogprob", "Unauthenticated", "Unavailable",
]
