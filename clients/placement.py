"""Show where each adapter version should be, where it is, and where it failed to load.

    lorafleet placement [--adapter acme/support]
"""

from __future__ import annotations

import argparse

from lorafleet.clients.console import add_common_arguments, call, print_json, print_table
from lorafleet.control.v1 import fleet_service_pb2 as pb
from lorafleet.control.v1 import fleet_service_pb2_grpc as pb_grpc

HELP = "show desired and actual placement of adapter versions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `placement` options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples
    parser.add_argument("--adapter", default="", help="only this adapter ('tenant/name')")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Prints the placement view."""

    def action(channel) -> None:
        request = pb.GetPlacementRequest(adapter=args.adapter)
        reply = pb_grpc.FleetServiceStub(channel).GetPlacement(request, timeout=args.timeout)
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
