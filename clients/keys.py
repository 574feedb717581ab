"""Manage API keys (admin key required; docs/security.md).

    lorafleet key create --role tenant --tenant acme [--can-create-versions]
    lorafleet key create --role worker
    lorafleet key list
    lorafleet key revoke 1a2b3c4d5e6f
    lorafleet key hash --role admin >> keys.jsonl   # no control plane: a key-file record

A key is shown once, when it is made; the control plane keeps only its argon2id hash.
"""

from __future__ import annotations

import argparse

from lorafleet.clients.access_calls import ROLES
from lorafleet.clients.console import add_common_arguments, call, print_json, print_table, timestamp
from lorafleet.control.v1 import access_service_pb2 as access_pb

HELP = "create, list and revoke API keys"
ROLE_NAMES = tuple(ROLES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `key` sub-commands."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="make a key (printed once)")
    hashed = sub.add_parser("hash", help="make a key without a control plane: prints a "
                                         "key-file record (stdout) and the key (stderr)")
    for command in (create, hashed):
        command.add_argument("--role", required=True, choices=ROLE_NAMES,
                             help="admin: everything; tenant: its own adapters; worker: "
                                  "heartbeats; gateway: routing table and proxying")
        command.add_argument("--tenant", default="", help="the tenant of a tenant key")
        command.add_argument("--can-create-versions", action="store_true",
                             help="let a tenant key add versions of its own adapters")
    hashed.add_argument("--key-file", metavar="PATH",
                        help="write the key to this new file (mode 0600) instead of stderr")
    listing = sub.add_parser("list", help="list keys (ids, roles, tenants; never secrets)")
    revoke = sub.add_parser("revoke", help="revoke a key; refused everywhere within 1 s")
    revoke.add_argument("key_id", help="the key's id (lorafleet key list)")
    for command in (create, listing, revoke):
        add_common_arguments(command)


def run(args: argparse.Namespace) -> int:
    """Runs the chosen action (`hash` never gets here: lorafleet dispatches it)."""

    def action(client) -> None:
        if args.action == "create":
            reply = client.create_key(args.role, tenant=args.tenant,
                                      can_create_versions=args.can_create_versions)
            _print(args, [reply.api_key])
            print(f"key (shown once; give it to the caller): {reply.key}")
        elif args.action == "list":
            _print(args, client.list_keys().api_keys)
        else:
            client.revoke_key(args.key_id)
            print(f"revoked {args.key_id}")

    return call(args, action)


def _print(args, api_keys) -> None:
    if args.json:
        print_json(api_keys)
        return
    print_table(["ID", "ROLE", "TENANT", "CAN CREATE VERSIONS", "CREATED", "SOURCE"],
                [[k.key_id, access_pb.Role.Name(k.role).removeprefix("ROLE_").lower(),
                  k.tenant, "yes" if k.can_create_versions else "", timestamp(k.create_time),
                  k.source] for k in api_keys])
