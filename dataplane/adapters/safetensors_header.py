"""Reads the header of a .safetensors file: tensor names, dtypes and shapes, no tensor data.

Pure Python, so an adapter's structure is checked before any weight is read. Format: an
8-byte little-endian header length, then a JSON object name -> {dtype, shape, data_offsets}.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import struct

# Bounds a corrupt length field before it turns into a huge read.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header."""

    dtype: str  # safetensors dtype code, e.g. "F32", "BF16"
    shape: tuple[int, ...]


class HeaderError(ValueError):
    """The file is not a readable safetensors file."""


def read_header(path: pathlib.Path) -> dict[str, TensorInfo]:
    """Tensor entries of the safetensors file at `path`, by name."""
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise HeaderError(f"{path.name} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES:
            raise HeaderError(f"{path.name} has an implausible header length {length}")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeaderError(f"{path.name} has a malformed header: {exc}") from exc
    if not isinstance(header, dict):
        raise HeaderError(f"{path.name} has a malformed header: not a JSON object")
    try:
        return {
            name: TensorInfo(str(entry["dtype"]), tuple(int(d) for d in entry["shape"]))
            for name, entry in header.items()
            if name != "__metadata__"
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise HeaderError(f"{path.name} has a malformed tensor entry: {exc}") from exc
