"""Why an adapter cannot be loaded, as exception types the gRPC layer maps to status codes.

Each class names the status code it stands for in `status_code_name` (a grpc.StatusCode
member name), so servicers translate with one lookup and this module stays free of grpc.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason an adapter is refused.

    `is_base_model_mismatch` marks problems of a well-formed adapter that was trained for
    another base model (other architecture, sizes or layer count), as opposed to a broken
    or unsupported adapter.
    """

    message: str
    is_base_model_mismatch: bool = False


class AdapterError(Exception):
    """Base class of every adapter loading failure."""

    status_code_name = "INTERNAL"


class AdapterNotFound(AdapterError):
    """The source URI names nothing: no such directory, bucket or prefix."""

    status_code_name = "NOT_FOUND"


class AdapterSourceUnavailable(AdapterError):
    """The source exists in principle but cannot be read now (missing extra, S3 failure)."""

    status_code_name = "UNAVAILABLE"


class AdapterInvalid(AdapterError):
    """The adapter fails validation; `reasons` lists every problem found, not just the first."""

    status_code_name = "INVALID_ARGUMENT"

    def __init__(self, reasons: list[str] | tuple[str, ...], *, source: str = "") -> None:
        self.reasons = tuple(reasons)
        self.source = source
        where = f"adapter {source}" if source else "adapter"
        super().__init__(f"{where} refused: " + "; ".join(self.reasons))


class BaseModelMismatch(AdapterInvalid):
    """A well-formed adapter trained for another base model (architecture or dimensions)."""

    status_code_name = "FAILED_PRECONDITION"


def raise_for_problems(problems: list[Problem], *, source: str = "") -> None:
    """Raises the error that fits `problems`, or returns if there are none.

    Only when every problem is a base-model mismatch is the error a `BaseModelMismatch`:
    a broken adapter is refused as invalid even if it also targets another model.
    """
    if not problems:
        return
    reasons = [p.message for p in problems]
    if all(p.is_base_model_mismatch for p in problems):
        raise BaseModelMismatch(reasons, source=source)
    raise AdapterInvalid(reasons, source=source)
