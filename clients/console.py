"""How the admin commands reach the control plane and print what they get back.

Every admin command takes `--controlplane ADDR`, `--json` and `--timeout`; prints a
table (or one JSON object per line with `--json`); and exits 1 with the gRPC status
and message on stderr when the control plane refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--controlplane, --json and --timeout."""
    parser.add_argument("--controlplane", default="127.0.0.1:50051", metavar="ADDR",
                        help="host:port of a control-plane replica (default %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON (one object per line) instead of a table")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")


def call(args: argparse.Namespace, action: Callable[[grpc.Channel], None]) -> int:
    """Runs `action(channel)`; turns a gRPC error into a message and exit status 1."""
    with grpc.insecure_channel(args.controlplane) as channel:
        try:
            action(channel)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def print_json(messages: Iterable[Message]) -> None:
    """One JSON object per message, field names as in the proto."""
    for message in messages:
        print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain left-aligned table; '-' for empty cells."""
    text_rows = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text_rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), *text_rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def timestamp(message) -> str:
    """A protobuf Timestamp as ISO 8601 seconds, or '' when unset."""
    if not message.seconds:
        return ""
    return message.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
