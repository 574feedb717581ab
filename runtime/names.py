"""The one home of lorafleet's name grammar: adapter names and references, version labels,
worker ids, and how much of a caller's input an error message may echo.

Used by the worker, the gateway and the control plane alike (pure Python, no grpc), so a
name one accepts is a name all accept.

    adapter name   tenant/name           each part: [a-z0-9][a-z0-9._-]{0,62}
    reference      tenant/name[@N]       N: 1..999999999 (no N: the rollout picks)
    version label  tenant/name@N
    worker id      [A-Za-z0-9][A-Za-z0-9._:-]{0,127}   (default: host:port)
"""

from __future__ import annotations

import re

_PART = r"[a-z0-9][a-z0-9._-]{0,62}"
_NAME = re.compile(rf"{_PART}/{_PART}")
_REF = re.compile(rf"(?P<name>{_PART}/{_PART})(?:@(?P<version>[1-9][0-9]{{0,8}}))?")
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# Error messages quote at most this much of what a caller sent.
MAX_ECHO_CHARS = 80


class InvalidName(ValueError):
    """A name, reference or id that does not follow the grammar."""

    status_code_name = "INVALID_ARGUMENT"


def shorten(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` quoted for an error message, cut to `limit` characters."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"


def check_adapter_name(name: str) -> str:
    """Returns `name` if it is "tenant/name" with valid parts, else raises InvalidName."""
    if not _NAME.fullmatch(name or ""):
        raise InvalidName(
            f"adapter name {shorten(name)} must be 'tenant/name': lowercase letters, "
            "digits, '.', '_' or '-', each part 1-63 characters")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Splits "tenant/name[@N]" into (name, version or None); raises InvalidName."""
    match = _REF.fullmatch(ref or "")
    if not match:
        raise InvalidName(f"adapter {shorten(ref)} must be 'tenant/name' or 'tenant/name@N'")
    version = match.group("version")
    return match.group("name"), int(version) if version else None


def version_label(name: str, version: int) -> str:
    """"tenant/name@N"."""
    return f"{name}@{version}"


def check_worker_id(worker_id: str) -> str:
    """Returns `worker_id` if it is usable as an id (and an etcd key part), else raises."""
    if not _WORKER_ID.fullmatch(worker_id or ""):
        raise InvalidName(
            f"worker_id {shorten(worker_id)} must be 1-128 of letters, digits, "
            "'.', '_', ':', '-'")
    return worker_id


# Where adapter weights may come from: a local path (no scheme), file:// or s3://.
SOURCE_SCHEMES = ("", "file", "s3")
