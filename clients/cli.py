"""The `lorafleet` command.

Client and admin subcommands live in this package and import only grpc and the stubs.
Server subcommands are dispatched lazily to their component (the one place this package
names another component), so `lorafleet generate` never imports torch or etcd.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Server subcommands: name -> ("module:function" taking argv, one-line help).
SERVER_COMMANDS: dict[str, tuple[str, str]] = {
    "controlplane": ("lorafleet.controlplane.cli", "run a control-plane replica over etcd"),
    "serve": ("lorafleet.dataplane.server.cli:main",
              "serve a model and its adapters on this machine (no etcd)"),
    "worker": ("lorafleet.dataplane.server.cli:worker_main",
               "serve a model as a fleet worker that obeys the control plane"),
    "up": ("lorafleet.dataplane.up.cli:main",
           "run a whole fleet on this machine (etcd, control plane, workers, gateway) "
           "with demo adapters, and print how to call it"),
    "gateway": ("lorafleet.dataplane.gateway.cli:main",
                "route Generate requests to the fleet by the control plane's routing table"),
    "plan": ("lorafleet.dataplane.config.plan:main",
             "size a worker's memory (weights, adapter slots, KV cache) from config.json"),
}

# Client subcommands: name -> module with `add_arguments(parser)` and `run(args) -> int`.
CLIENT_COMMANDS: dict[str, str] = {
    "generate": "lorafleet.clients.generate",
    "adapter": "lorafleet.clients.admin",
    "workers": "lorafleet.clients.workers",
    "placement": "lorafleet.clients.placement",
    "key": "lorafleet.clients.keys",
    "audit": "lorafleet.clients.audit",
}

# `lorafleet key hash` hashes with argon2, which the client install does not import.
KEY_HASH = "lorafleet.runtime.auth.keyfile"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorafleet",
        description="Serve many LoRA adapters on one base model, across a fleet of workers.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SERVER_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, module_name in CLIENT_COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def _version() -> str:
    from importlib.metadata import version

    return f"lorafleet {version('lorafleet')}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lorafleet` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["key", "hash"]:
        return importlib.import_module(KEY_HASH).main(argv[2:])
    if argv and argv[0] in SERVER_COMMANDS:
        target, _ = SERVER_COMMANDS[argv[0]]
        module_name, _, function = target.partition(":")
        return getattr(importlib.import_module(module_name), function or "main")(argv[1:]) or 0
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
