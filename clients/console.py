"""How the client commands reach a server and print what they get back.

Every admin command takes `--controlplane ADDR`, `--json`, `--timeout`, `--api-key` and
the TLS options (`--tls`, `--tls-ca`, `--tls-cert`, `--tls-key`);
prints a table (or one JSON object per line with `--json`); and exits 1 with the gRPC
status and message on stderr when the control plane refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from google.protobuf import json_format
from google.protobuf.message import Message

from lorafleet.clients.client import Client
from lorafleet.clients.errors import LorafleetError
from lorafleet.runtime.tls import TlsConfig, TlsFileError, add_client_tls_arguments

API_KEY_ENV = "LORAFLEET_API_KEY"


def add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    """--api-key, defaulting to $LORAFLEET_API_KEY."""
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), metavar="KEY",
                        help="sent as 'authorization: Bearer KEY' on every call "
                             f"(default: ${API_KEY_ENV})")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--controlplane, --json, --timeout, --api-key and the TLS options."""
    parser.add_argument("--controlplane", metavar="ADDR",
                        default=os.environ.get("LORAFLEET_CONTROLPLANE", "127.0.0.1:50051"),
                        help="host:port of a control-plane replica (default: "
                             "$LORAFLEET_CONTROLPLANE, else 127.0.0.1:50051)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON (one object per line) instead of a table")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    add_api_key_argument(parser)
    add_client_tls_arguments(parser)


def tls_options(args: argparse.Namespace) -> dict:
    """Client keyword arguments for the TLS options; raises TlsFileError naming a bad file."""
    tls = TlsConfig.from_args(args)
    return dict(tls=tls.is_enabled, root_certificates=tls.root_certificates,
                private_key=tls.private_key, certificate_chain=tls.certificate_chain)


def open_client(args: argparse.Namespace, address: str) -> Client | None:
    """A Client for `address` with the key and TLS options of `args`; None (after saying
    why on stderr) when a TLS file cannot be used."""
    try:
        options = tls_options(args)
    except TlsFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    return Client(address, api_key=args.api_key, timeout=args.timeout, **options)


def call(args: argparse.Namespace, action: Callable[[Client], int | None]) -> int:
    """Runs `action(client)` against the control plane; turns an error status into a
    message and exit status 1. An action that did not do what was asked, though every call
    succeeded, returns its own non-zero status."""
    client = open_client(args, args.controlplane)
    if client is None:
        return 2
    with client:
        try:
            return action(client) or 0
        except LorafleetError as error:
            print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
            return 1


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
