"""Manage adapters: register them, add versions, split traffic, roll back, delete.

    lorafleet adapter create acme/support --base-model tiny-llama [--min-replicas 2]
    lorafleet adapter version acme/support /models/adapters/support-v2
    lorafleet adapter rollout acme/support 1=90 2=10     # no pairs: stop all traffic
    lorafleet adapter rollback acme/support
    lorafleet adapter list [--tenant acme]
    lorafleet adapter get acme/support
    lorafleet adapter delete acme/support
"""

from __future__ import annotations

import argparse
import os
import sys

from lorafleet.clients.console import add_common_arguments, call, print_json, print_table, timestamp
from lorafleet.control.v1 import adapter_service_pb2 as pb

HELP = "manage adapters, versions and rollouts on the control plane"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `adapter` sub-commands."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="register an adapter name")
    create.add_argument("name", help="'tenant/name'")
    create.add_argument("--base-model", required=True, help="base model its versions fit")
    create.add_argument("--description", default="", help="free text")
    create.add_argument("--min-replicas", type=int, default=0, help="fewest workers per version")
    create.add_argument("--max-replicas", type=int, default=0, help="most workers (0: no limit)")
    version = sub.add_parser("version", help="add a version from a source URI (validated)")
    version.add_argument("name", help="'tenant/name'")
    version.add_argument("source_uri", help="path, file:// or s3:// URI workers can read")
    rollout = sub.add_parser("rollout", help="set the traffic split, e.g. 1=90 2=10")
    rollout.add_argument("name", help="'tenant/name'")
    rollout.add_argument("weights", nargs="*", metavar="VERSION=WEIGHT",
                         help="versions and relative weights; none stops all traffic")
    rollback = sub.add_parser("rollback", help="restore the previous traffic split")
    rollback.add_argument("name", help="'tenant/name'")
    listing = sub.add_parser("list", help="list adapters")
    listing.add_argument("--tenant", default="", help="only this tenant's adapters")
    get = sub.add_parser("get", help="show an adapter, its versions and rollout")
    get.add_argument("name", help="'tenant/name'")
    delete = sub.add_parser("delete", help="delete an adapter that receives no traffic")
    delete.add_argument("name", help="'tenant/name'")
    for command in (create, version, rollout, rollback, listing, get, delete):
        add_common_arguments(command)


def parse_weights(pairs: list[str]) -> list[pb.VersionWeight]:
    """VERSION=WEIGHT strings as VersionWeight messages; ValueError naming a bad pair."""
    weights = []
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        if not sep or not version.isdigit() or not weight.isdigit():
            raise ValueError(f"weight {pair!r} must be VERSION=WEIGHT, e.g. 2=10")
        weights.append(pb.VersionWeight(version=int(version), weight=int(weight)))
    return weights


def run(args: argparse.Namespace) -> int:
    """Runs the chosen sub-command."""
    if args.action == "rollout":
        try:
            args.parsed_weights = parse_weights(args.weights)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return call(args, lambda client: ACTIONS[args.action](client, args))


def _create(client, args) -> None:
    reply = client.create_adapter(args.name, base_model=args.base_model,
                                  description=args.description, min_replicas=args.min_replicas,
                                  max_replicas=args.max_replicas)
    _print_adapters(args, [reply.adapter])


def _version(client, args) -> int:
    """Adds a version; exit status 1 with the reasons when it was refused (REJECTED)."""
    reply = client.create_adapter_version(args.name, _absolute(args.source_uri))
    version = reply.version
    _print_versions(args, [version])
    if version.state == pb.VERSION_STATE_REJECTED:
        print(f"error: {args.name}@{version.version} was refused: "
              f"{'; '.join(version.reasons) or 'no reason given'}", file=sys.stderr)
        return 1
    same = [v for v in client.list_adapter_versions(args.name).versions
            if v.digest == version.digest and v.version != version.version]
    if version.digest and same:
        print(f"note: {args.name}@{version.version} has the same weights as "
              f"{', '.join(f'@{v.version}' for v in same)} (sha256 {version.digest[:12]}…)",
              file=sys.stderr)
    return 0


def _absolute(source_uri: str) -> str:
    """A relative local path as an absolute one: workers do not share this shell's
    directory. URIs (file://, s3://) and absolute paths are left as they are."""
    if "://" in source_uri or os.path.isabs(source_uri) or not os.path.exists(source_uri):
        return source_uri
    return os.path.abspath(source_uri)


def _rollout(client, args) -> None:
    _print_rollout(args, client.update_rollout(args.name, args.parsed_weights).rollout)


def _rollback(client, args) -> None:
    _print_rollout(args, client.rollback_rollout(args.name).rollout)


def _list(client, args) -> None:
    _print_adapters(args, client.list_adapters(tenant=args.tenant).adapters)


def _get(client, args) -> None:
    reply = client.get_adapter(args.name)
    if args.json:
        print_json([reply])
        return
    _print_adapters(args, [reply.adapter])
    print()
    _print_versions(args, reply.versions)
    print()
    if reply.HasField("rollout"):
        _print_rollout(args, reply.rollout)
    else:
        print("no rollout yet: the adapter receives no traffic")


def _delete(client, args) -> None:
    client.delete_adapter(args.name)
    print(f"deleted {args.name}")


ACTIONS = {"create": _create, "version": _version, "rollout": _rollout, "rollback": _rollback,
           "list": _list, "get": _get, "delete": _delete}


def _print_adapters(args, adapters) -> None:
    if args.json:
        print_json(adapters)
        return
    print_table(
        ["ADAPTER", "BASE MODEL", "MIN", "MAX", "CREATED", "DESCRIPTION"],
        [[a.name, a.base_model, a.min_replicas or 1, a.max_replicas or "any",
          timestamp(a.create_time), a.description] for a in adapters],
    )


def _print_versions(args, versions) -> None:
    if args.json:
        print_json(versions)
        return
    print_table(
        ["VERSION", "STATE", "DIGEST", "RANK", "MODULES", "SOURCE", "REASONS"],
        [[v.version, pb.VersionState.Name(v.state).removeprefix("VERSION_STATE_"),
          v.digest[:12], v.rank or "", list(v.target_modules), v.source_uri, "; ".join(v.reasons)]
         for v in versions],
    )


def _print_rollout(args, rollout) -> None:
    if args.json:
        print_json([rollout])
        return
    total = sum(w.weight for w in rollout.weights)
    print(f"rollout generation {rollout.generation} ({timestamp(rollout.update_time) or 'never'})")
    print_table(["VERSION", "WEIGHT", "SHARE"],
                [[w.version, w.weight, f"{100 * w.weight / total:.0f}%"] for w in rollout.weights])
