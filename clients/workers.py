"""List the live workers, or drain one.

    lorafleet workers [--base-model tiny-llama]
    lorafleet workers --drain worker-3
"""

from __future__ import annotations

import argparse

from lorafleet.clients.console import add_common_arguments, call, print_json, print_table, timestamp
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

HELP = "list the live workers, or drain one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `workers` options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples
    parser.add_argument("--base-model", default="", help="only workers of this base model")
    parser.add_argument("--drain", metavar="WORKER_ID",
                        help="move this worker's adapters elsewhere and stop placing on it")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Lists or drains."""

    def action(client) -> None:
        if args.drain:
            workers = [client.drain_worker(args.drain).worker]
        else:
            workers = client.list_workers(base_model=args.base_model).workers
        _print(args, workers)

    return call(args, action)


def _print(args, workers) -> None:
    if args.json:
        print_json(workers)
        return
    print_table(
        ["WORKER", "ADDRESS", "BASE MODEL", "STATE", "DEVICE", "HOST", "RUNNING", "WAITING",
         "HEARTBEAT"],
        [[w.worker_id, w.address, w.base_model.name, "draining" if w.is_draining else "serving",
          f"{_count(w, worker_pb.TIER_DEVICE)}/{w.capacities.max_loras}",
          f"{_count(w, worker_pb.TIER_HOST, worker_pb.TIER_DEVICE)}/{w.capacities.max_cpu_loras}",
          w.load.num_running, w.load.num_waiting, timestamp(w.last_heartbeat_time)]
         for w in workers],
    )


def _count(worker, *tiers) -> int:
    """Versions whose highest tier is one of `tiers` (a version in a device slot is also
    in host memory, so HOST counts both)."""
    return sum(1 for residency in worker.adapters if residency.tier in tiers)
