"""Stream a completion from a worker or a gateway.

Text is printed as it arrives; a summary line (finish reason, tokens, adapter version,
time to first token) goes to stderr. Exit status is 0 on success, 1 on an RPC error.
"""

from __future__ import annotations

import argparse
import json
import sys

from lorafleet.clients.client import Client
from lorafleet.clients.console import add_api_key_argument, open_client
from lorafleet.clients.errors import LorafleetError
from lorafleet.clients.events import Summary
from lorafleet.clients.requests import generate_request
from lorafleet.runtime.tls import add_client_tls_arguments

HELP = "stream a completion (from a worker or a gateway)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `generate` options."""
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--addr", default="127.0.0.1:50051",
                        help="host:port of a worker or gateway (default %(default)s)")
    parser.add_argument("--adapter", default="",
                        help="'tenant/name' or 'tenant/name@N'; omit for the base model")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as one user chat message (uses the chat template)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 is greedy (default); higher samples more freely")
    parser.add_argument("--top-p", type=float, help="nucleus sampling threshold in (0, 1]")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens")
    parser.add_argument("--seed", type=int, help="seed for reproducible sampling")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop when the output contains TEXT (repeatable)")
    parser.add_argument("--routing-key", default="", help="keeps a caller on one rollout version")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    parser.add_argument("--json", action="store_true",
                        help="print every stream message as a JSON line instead of text")
    add_api_key_argument(parser)
    add_client_tls_arguments(parser)


def _prompt_options(args: argparse.Namespace) -> dict:
    """The prompt and sampling arguments of Client.generate_stream the options describe."""
    prompt = {"messages": [{"role": "user", "content": args.prompt}]} if args.chat else {
        "prompt": args.prompt}
    return dict(prompt, adapter=args.adapter, max_tokens=args.max_tokens,
                temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                seed=args.seed, stop=args.stop, routing_key=args.routing_key)


def run(args: argparse.Namespace) -> int:
    """Streams the completion to stdout."""
    client = open_client(args, args.addr)
    if client is None:
        return 2
    with client:
        try:
            if args.json:
                _print_json(client, args)
            else:
                _print_text(client, args)
        except LorafleetError as error:
            print(f"\nerror: {error.code.name}: {error.message}", file=sys.stderr)
            return 1
    return 0


def _print_text(client: Client, args: argparse.Namespace) -> None:
    for event in client.generate_stream(**_prompt_options(args)):
        if isinstance(event, Summary):
            _print_summary(event)
        else:
            sys.stdout.write(event.text)
            sys.stdout.flush()


def _print_json(client: Client, args: argparse.Namespace) -> None:
    # The raw stream messages, so the JSON is the proto's own (field names, enums).
    from google.protobuf import json_format

    request = generate_request(**_prompt_options(args))
    for message in client.generate_responses(request):
        print(json.dumps(json_format.MessageToDict(message)), flush=True)


def _print_summary(summary: Summary) -> None:
    print(f"\n[{summary.finish_reason.value}; {summary.num_prompt_tokens} prompt + "
          f"{summary.num_completion_tokens} generated tokens; "
          f"adapter {summary.adapter_version or 'base'}; "
          f"first token {summary.time_to_first_token * 1e3:.0f} ms; "
          f"worker {summary.worker_id}]", file=sys.stderr)
