"""JSON from an adapter's files, checked for size and nesting before it is parsed.

Pure Python. A 512 MB adapter_config.json used to be read whole (+1.0 GB) and a deeply
nested one ended the call in a RecursionError; here the size is checked before reading and
the nesting depth with a scan of brackets (C-speed string operations) before `json.loads`.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import re

from lorafleet.dataplane.adapters.errors import echo

# adapter_config.json is a few KB; its options nest 3 levels at most.
MAX_DEPTH = 32
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_CHUNK_CHARS = 64 * 1024


class JsonRefused(ValueError):
    """The JSON is too big, too deep or malformed; the message says which, without paths."""


class MalformedJson(JsonRefused):
    """Not JSON at all; `detail` is the parser's complaint (line and column)."""

    def __init__(self, what: str, detail: str) -> None:
        self.detail = echo(detail)
        super().__init__(f"{what} is not valid JSON: {self.detail}")


def read_json_file(path: pathlib.Path, *, max_bytes: int, what: str):
    """The parsed JSON file at `path`, refused unread when over `max_bytes`.

    Raises JsonRefused, or OSError when the file cannot be opened or read.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > max_bytes:
            raise JsonRefused(
                f"{what} is {size} bytes; at most {_describe(max_bytes)} are accepted"
            )
        data = file.read(max_bytes + 1)  # the file may have grown since fstat
    if len(data) > max_bytes:
        raise JsonRefused(f"{what} is over {_describe(max_bytes)}, which is the most accepted")
    return parse_json(data, what=what)


def parse_json(data: bytes, *, what: str):
    """`json.loads(data)` once its nesting is known to be at most MAX_DEPTH."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJson(what, str(exc)) from exc
    if nests_deeper_than(text, MAX_DEPTH):
        raise JsonRefused(f"{what} nests JSON deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a 5,000-digit number
        raise MalformedJson(what, str(exc)) from exc


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether arrays and objects in `text` nest deeper than `limit`.

    Brackets inside strings do not count. For invalid JSON the answer is about the part
    `json.loads` reads before it fails, which is as deep as it can recurse.
    """
    if text.count("[") + text.count("{") <= limit:
        return False  # nothing can nest deeper than the number of brackets it opens
    # Escapes pair up from the left exactly as replace() pairs backslashes, so after
    # dropping every escaped backslash and then every escaped quote, each quote left opens
    # or closes a string.
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    brackets = _NOT_BRACKET.sub("", "".join(unescaped.split('"')[0::2]))
    depth = 0
    # In chunks: stops at the first chunk that goes too deep, and lets other threads run.
    for start in range(0, len(brackets), _CHUNK_CHARS):
        steps = map(_STEP.__getitem__, brackets[start : start + _CHUNK_CHARS])
        depths = list(itertools.accumulate(steps, initial=depth))
        if max(depths) > limit:
            return True
        depth = depths[-1]
    return False


def _describe(num_bytes: int) -> str:
    mib = num_bytes / (1024 * 1024)
    return f"{num_bytes} ({mib:g} MiB)" if mib >= 1 else f"{num_bytes} bytes"
