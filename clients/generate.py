"""Stream a completion from a worker or a gateway.

Text is printed as it arrives; a summary line (finish reason, tokens, adapter version,
time to first token) goes to stderr. Exit status is 0 on success, 1 on an RPC error.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc

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


def build_request(args: argparse.Namespace) -> pb.GenerateRequest:
    """The GenerateRequest the options describe."""
    sampling = pb.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                 top_k=args.top_k, stop=args.stop)
    if args.top_p is not None:
        sampling.top_p = args.top_p
    if args.seed is not None:
        sampling.seed = args.seed
    request = pb.GenerateRequest(adapter=args.adapter, sampling=sampling,
                                 routing_key=args.routing_key)
    if args.chat:
        request.chat.messages.add(role="user", content=args.prompt)
    else:
        request.text = args.prompt
    return request


def run(args: argparse.Namespace) -> int:
    """Streams the completion to stdout."""
    from google.protobuf import json_format

    with grpc.insecure_channel(args.addr) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        try:
            for message in stub.Generate(build_request(args), timeout=args.timeout):
                if args.json:
                    print(json.dumps(json_format.MessageToDict(message)), flush=True)
                elif message.HasField("delta"):
                    sys.stdout.write(message.delta.text)
                    sys.stdout.flush()
                else:
                    _print_summary(message.summary)
        except grpc.RpcError as exc:
            print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def _print_summary(summary: pb.GenerateSummary) -> None:
    reason = pb.FinishReason.Name(summary.finish_reason).removeprefix("FINISH_REASON_").lower()
    ttft = summary.timings.time_to_first_token.ToNanoseconds() / 1e6
    print(f"\n[{reason}; {summary.usage.prompt_tokens} prompt + "
          f"{summary.usage.completion_tokens} generated tokens; "
          f"adapter {summary.adapter_version or 'base'}; first token {ttft:.0f} ms; "
          f"worker {summary.worker_id}]", file=sys.stderr)
