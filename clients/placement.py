"""Show where each adapter version should be, where it is, and where it failed to load.

    lorafleet placement [--adapter acme/support]
"""

from __future__ import annotations

import argparse

from lorafleet.clients.console import add_common_arguments, call, print_json, print_table

HELP = "show desired and actual placement of adapter versions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `placement` options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples
    parser.add_argument("--adapter", default="", help="only this adapter ('tenant/name')")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Prints the placement view."""

    def action(client) -> None:
        reply = client.get_placement(adapter=args.adapter)
        if args.json:
            print_json(reply.placements)
            return
        print_table(
            ["ADAPTER", "VERSION", "DIGEST", "DESIRED", "RESIDENT", "FAILURES"],
            [[p.adapter, p.version, p.digest[:12], list(p.desired_worker_ids),
              list(p.resident_worker_ids),
              "; ".join(f"{w}: {why}" for w, why in sorted(p.failures.items()))]
             for p in reply.placements],
        )

    return call(args, action)
