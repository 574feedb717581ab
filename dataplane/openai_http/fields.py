"""Typed reads of one field of an OpenAI request body: a wrong type is a 400 naming it.

Every reader returns None when the field is absent or null, as OpenAI treats both alike.
"""

from __future__ import annotations

from typing import Any

from lorafleet.dataplane.openai_http.errors import bad_request

MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1


def integer(body: dict, name: str, *, low: int = 0, high: int = MAX_UINT32) -> int | None:
    """An integer in [low, high]."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(name, f"must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise bad_request(name, f"must be in [{low}, {high}], got {value}")
    return value


def number(body: dict, name: str) -> float | None:
    """A number (integer or float); ranges are the engine's to check."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(name, f"must be a number, got {_kind(value)}")
    return float(value)


def boolean(body: dict, name: str) -> bool | None:
    """true or false."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_request(name, f"must be true or false, got {_kind(value)}")
    return value


def string(body: dict, name: str) -> str | None:
    """A string."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(name, f"must be a string, got {_kind(value)}")
    return value


def obj(body: dict, name: str) -> dict | None:
    """A JSON object."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(name, f"must be an object, got {_kind(value)}")
    return value


def strings(body: dict, name: str) -> list[str]:
    """A string or a list of strings (OpenAI's `stop`), as a list."""
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise bad_request(name, f"must be a string or a list of strings, got {_kind(value)}")


def token_ids(value: Any, name: str) -> list[int] | None:
    """`value` as token ids when it is a list of non-negative integers, else None."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return None
    if not all(0 <= t <= MAX_UINT32 for t in value):
        raise bad_request(name, f"token ids must be in [0, {MAX_UINT32}]")
    return value


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"
