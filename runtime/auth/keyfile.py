"""`lorafleet key hash`: make a key without a control plane, for a key file.

    lorafleet key hash --role admin >> keys.jsonl        # the key itself goes to stderr
    lorafleet key hash --role worker --key-file worker-key >> keys.jsonl

The record line (JSON: id, argon2id hash, role, tenant) goes to stdout, to append to the
file a server reads with --auth-keys; the key goes to stderr, shown this once. Lives
here (not in lorafleet.clients) because hashing needs argon2; `lorafleet` dispatches to
it lazily.
"""

from __future__ import annotations

import argparse
import os
import sys

from lorafleet.runtime.auth.keys import InvalidKeyRecord, make_key
from lorafleet.runtime.auth.principals import ROLE_NAMES


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    """--role, --tenant, --can-create-versions (shared with `lorafleet key create`)."""
    parser.add_argument("--role", required=True, choices=ROLE_NAMES,
                        help="admin: everything; tenant: its own adapters; worker: "
                             "heartbeats; gateway: routing table and proxying")
    parser.add_argument("--tenant", default="", help="the tenant of a tenant key")
    parser.add_argument("--can-create-versions", action="store_true",
                        help="let a tenant key add versions of its own adapters")


def main(argv: list[str] | None = None) -> int:
    """Prints a new key's record (stdout) and the key (stderr)."""
    parser = argparse.ArgumentParser(prog="lorafleet key hash", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_key_arguments(parser)
    parser.add_argument("--key-file", metavar="PATH",
                        help="write the key to this new file (mode 0600) instead of stderr")
    args = parser.parse_args(argv)
    try:
        key, record = make_key(args.role, args.tenant, args.can_create_versions)
    except InvalidKeyRecord as error:
        parser.error(str(error))
    if args.key_file:
        try:
            descriptor = os.open(args.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            parser.error(f"--key-file: {error.strerror}: {args.key_file}")
        with os.fdopen(descriptor, "w") as out:
            out.write(key)
    print(record.to_json(), flush=True)
    shown = f"written to {args.key_file}" if args.key_file else f"(shown once): {key}"
    print(f"key {record.key_id} {shown}", file=sys.stderr, flush=True)
    return 0
