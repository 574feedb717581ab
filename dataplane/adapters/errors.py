"""Why an adapter cannot be loaded, as exception types the gRPC layer maps to status codes.

Each class names the status code it stands for in `status_code_name` (a grpc.StatusCode
member name), so servicers translate with one lookup and this module stays free of grpc.
"""

from __future__ import annotations

import dataclasses

# Caller input echoed in a message (a URI, a pattern, a tensor name) is cut to this many
# characters: enough to recognise it, too few to flood a status message or a log line.
MAX_ECHO_CHARS = 120
# Reasons past this many are summarised, so a file with thousands of faults still yields a
# message that fits in a gRPC status.
MAX_REASONS = 20


def echo(value: object, *, is_quoted: bool = True) -> str:
    """Caller input as a message shows it, cut to MAX_ECHO_CHARS characters and "…".

    `repr(value)`, or a string as it is when not `is_quoted`. Every message of this package
    that repeats an uploader's or caller's text goes through here.
    """
    text = value if isinstance(value, str) and not is_quoted else repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"


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
        where = f"adapter {echo(source, is_quoted=False)}" if source else "adapter"
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
    reasons = [p.message for p in cap_problems(problems)]
    if all(p.is_base_model_mismatch for p in problems):
        raise BaseModelMismatch(reasons, source=source)
    raise AdapterInvalid(reasons, source=source)


def cap_problems(problems: list[Problem]) -> list[Problem]:
    """The first MAX_REASONS problems, then one that counts the rest."""
    if len(problems) <= MAX_REASONS:
        return problems
    rest = problems[MAX_REASONS - 1 :]
    summary = Problem(
        f"and {len(rest)} more problems",
        is_base_model_mismatch=all(p.is_base_model_mismatch for p in rest),
    )
    return [*problems[: MAX_REASONS - 1], summary]
