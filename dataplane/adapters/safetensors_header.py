"""Reads the header of a .safetensors file: tensor names, dtypes and shapes, no tensor data.

Pure Python, so an adapter's structure is checked before any weight is read. Format: an
8-byte little-endian header length, then a JSON object name -> {dtype, shape, data_offsets}.
The length is checked before the header is read, and its nesting before it is parsed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import struct

from lorafleet.dataplane.adapters.bounded_json import JsonRefused, MalformedJson, parse_json
from lorafleet.dataplane.adapters.errors import echo

# An adapter's header is ~130 bytes per tensor (~0.25 MB for 128 layers x 7 projections);
# a bigger one is refused before it is read.
MAX_HEADER_BYTES = 8 * 1024 * 1024
# safetensors dtype codes are short ("F8_E4M3" is the longest today); messages quote them.
_MAX_DTYPE_CHARS = 16


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header."""

    dtype: str  # safetensors dtype code, e.g. "F32", "BF16"
    shape: tuple[int, ...]


class HeaderError(ValueError):
    """The file is not a readable safetensors file; the message names no path."""


def read_header(path: pathlib.Path) -> dict[str, TensorInfo]:
    """Tensor entries of the safetensors file at `path`, by name.

    Raises HeaderError, or OSError when the file cannot be opened or read.
    """
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise HeaderError(f"{path.name} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise HeaderError(
                f"{path.name} has a header of {length} bytes; at most {MAX_HEADER_BYTES} "
                "are accepted"
            )
        raw = file.read(length)
    try:
        header = parse_json(raw, what=f"{path.name} header")
    except MalformedJson as exc:
        raise HeaderError(f"{path.name} has a malformed header: {exc.detail}") from exc
    except JsonRefused as exc:
        raise HeaderError(str(exc)) from exc
    if not isinstance(header, dict):
        raise HeaderError(f"{path.name} has a malformed header: not a JSON object")
    return {
        name: _tensor_info(path.name, name, entry)
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _tensor_info(file_name: str, name: str, entry) -> TensorInfo:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    if (
        not isinstance(dtype, str)
        or not 0 < len(dtype) <= _MAX_DTYPE_CHARS
        or not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise HeaderError(f"{file_name} has a malformed tensor entry {echo(name)}: {echo(entry)}")
    return TensorInfo(dtype, tuple(shape))
