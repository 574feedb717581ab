"""`lorafleet serve` (one worker, no etcd) and `lorafleet worker` (one worker of a fleet)."""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys

from lorafleet.auth.policy import WORKER_METHODS
from lorafleet.auth.startup import add_auth_arguments, auth_interceptors
from lorafleet.dataplane.adapters.confinement import add_source_arguments, policy_from_args
from lorafleet.dataplane.server.quotas import add_tenant_arguments, quota_config_of
from lorafleet.metrics_http import add_metrics_port_argument, metrics_port_of
from lorafleet.names import InvalidName, check_adapter_name
from lorafleet.rpcserver import ServerSecurity
from lorafleet.startup import (
    EXIT_FATAL,
    EXIT_OK,
    StartupError,
    Stopper,
    add_log_level_argument,
    check_port_free,
    freeze_startup_heap,
    run,
    starting,
)
from lorafleet.tls import TlsConfig, TlsFileError, add_server_tls_arguments

SERVE_DESCRIPTION = """\
Serve one base model and its LoRA adapters from this machine: streaming
InferenceService.Generate and WorkerService (load/evict/list adapters) on one gRPC port,
Prometheus metrics on another. No control plane or etcd is needed."""

def _adapter_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. acme/support=/adapters/s), got {text!r}")
    try:
        check_adapter_name(name)
    except InvalidName as exc:  # e.g. no tenant: it would be refused on every request
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return name, path


def check_before_loading(args: argparse.Namespace) -> None:
    """What can be refused before the model loads (which takes seconds to minutes): every
    --adapter directory exists, and every port asked for is free and asked for once."""
    for name, path in args.adapter:
        if "://" not in path and not os.path.isdir(path):
            raise StartupError(f"--adapter {name}={path}: not found (no such directory)")
    ports = {option: port for option, port in (
        ("--port", args.port), ("--admin-port", args.admin_port),
        ("--http-port", args.http_port), ("--metrics-port", metrics_port_of(args))) if port}
    for option, port in ports.items():
        same = [other for other, taken in ports.items() if taken == port and other != option]
        if same:
            raise StartupError(f"{option} {port}: also given as {same[0]}")
        check_port_free(args.host, port, option)


def add_serve_arguments(parser: argparse.ArgumentParser, *, model_required: bool) -> None:
    """The options shared by `serve` and `worker`."""
    parser.add_argument("--model", type=pathlib.Path, required=model_required,
                        help="Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("--model-name", help="name reported for the base model (default: the directory name)")
    parser.add_argument("--adapter", type=_adapter_arg, action="append", default=[], metavar="NAME=PATH",
                        help="load a PEFT adapter at start as tenant/name (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one (default %(default)s)")
    add_metrics_port_argument(parser, 9400, "vLLM-compatible series, per-adapter metrics")
    parser.add_argument("--admin-port", type=int, metavar="N",
                        help="serve WorkerService (load/evict/validate/list adapters, status) "
                             "on this port alone, so the gRPC port exposes only inference; "
                             "0 picks a free one (default: WorkerService on the gRPC port)")
    parser.add_argument("--http-port", type=int,
                        help="also serve OpenAI-compatible HTTP (/v1/completions, "
                             "/v1/chat/completions, /v1/models) on this port; 0 picks a free "
                             "one (default: off; see docs/openai.md)")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="weight dtype (default: the checkpoint's)")
    parser.add_argument("--max-loras", type=int, default=8,
                        help="device adapter slots = distinct adapters per step (default %(default)s)")
    parser.add_argument("--max-lora-rank", type=int, default=64,
                        help="largest adapter rank accepted; slots are sized for it (default %(default)s)")
    parser.add_argument("--max-cpu-loras", type=int, default=32,
                        help="adapters kept in host memory (default %(default)s)")
    parser.add_argument("--kv-cache-bytes", type=int,
                        help="KV cache size in bytes, adapter slots included "
                             "(default: 0.85 of free GPU memory; 1 GiB on a CPU)")
    parser.add_argument("--kv-cache-fraction", type=float,
                        help="instead of --kv-cache-bytes: this fraction of the device memory "
                             "free after the weights, less the adapter slots")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="sequences per step (default %(default)s)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048,
                        help="tokens per step, prefill chunks included (default %(default)s)")
    parser.add_argument("--prefix-cache-scope", choices=["tenant", "global"], default="tenant",
                        help="who shares cached prompt KV (prefix caching): 'tenant', only "
                             "requests of the same tenant, since a cache hit answers faster "
                             "and a caller could time that to learn another tenant's prompt; "
                             "'global', every request (more hits when tenants share system "
                             "prompts). Always only the same base model and adapter weights "
                             "(by digest) and the same cache_salt (default %(default)s)")
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="compute every prompt whole: no KV reuse between requests "
                             "(default: equal prompt prefixes reuse their KV blocks)")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="on a GPU, run decode steps kernel by kernel instead of "
                             "replaying CUDA graphs (default: graphs, captured at start for "
                             "1, 2, 4, ... --max-num-seqs sequences; they keep a little "
                             "memory, taken from the KV budget). No effect on a CPU")
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="queued requests beyond which Generate answers RESOURCE_EXHAUSTED (default %(default)s)")
    parser.add_argument("--worker-id",
                        help="stable id of this worker (default: HOST:PORT, the host name and "
                             "the bound gRPC port, unique per worker on a machine)")
    parser.add_argument("--otlp-endpoint", metavar="HOST:PORT",
                        help="export a tracing span per request to this OTLP/gRPC collector "
                             "(needs the otlp extra)")
    parser.add_argument("--engine-runs", choices=["process", "thread"], default="process",
                        help="where the engine loop runs: 'process', its own process, so the "
                             "server's Python never competes with it for the GIL; 'thread', "
                             "a thread of the server's process, for debugging (slower under "
                             "load; see docs/worker.md) (default %(default)s)")
    parser.add_argument("--cpu-thread-wait", choices=["spin", "sleep"], default="sleep",
                        help="how the engine process's CPU threads wait between ops: 'sleep' "
                             "at once (right for a machine that does anything else: spinning "
                             "threads take CPU from it, and a 20-token answer took 27-43 s "
                             "spinning against 3-5 s sleeping at load 8-11), or 'spin' "
                             "briefly before sleeping (OpenMP's default: 15-35%% more tokens/s "
                             "when the worker has its cores to itself); an OMP_WAIT_POLICY "
                             "you set wins (default %(default)s)")
    parser.add_argument("--engine-start-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="how long the engine process may take to load the model and "
                             "start; past it, it is stopped and the server exits with one "
                             "line and status 2 (raise it for a large model on slow storage) "
                             "(default %(default)s)")
    parser.add_argument("--grace-seconds", type=float, default=30.0,
                        help="on SIGTERM, how long in-flight streams may finish (default %(default)s)")
    add_source_arguments(parser)
    add_server_tls_arguments(parser)
    add_tenant_arguments(parser)
    add_log_level_argument(parser)


def tls_of(args: argparse.Namespace) -> TlsConfig:
    """The TLS options as a TlsConfig; a bad file is a start-up mistake."""
    try:
        tls = TlsConfig.from_args(args)
        tls.server_credentials()  # a CA without a certificate is refused here
    except TlsFileError as exc:
        raise StartupError(str(exc)) from exc
    return tls


def worker_config(args: argparse.Namespace):
    """The WorkerConfig the parsed options describe."""
    from lorafleet.dataplane.server.build import WorkerConfig

    extra = {"worker_id": args.worker_id} if args.worker_id else {}
    try:
        extra["sources"] = policy_from_args(args)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    return WorkerConfig(
        model_dir=args.model, model_name=args.model_name, device=args.device, dtype=args.dtype,
        max_loras=args.max_loras, max_lora_rank=args.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras, kv_cache_bytes=args.kv_cache_bytes,
        kv_cache_fraction=args.kv_cache_fraction, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_waiting=args.max_waiting,
        queue_policy=args.queue_policy, quotas=quota_config_of(args),
        engine_runs=args.engine_runs, cpu_thread_wait=args.cpu_thread_wait,
        engine_start_timeout=args.engine_start_timeout,
        prefix_cache_scope=None if args.no_prefix_cache else args.prefix_cache_scope,
        enforce_eager=args.enforce_eager, **extra)


async def serve(args: argparse.Namespace, stopper: Stopper, on_ready=None) -> int:
    """Runs a worker until a stop is asked for (then shuts it down gracefully) or its
    engine dies (then exits with EXIT_FATAL for a supervisor to restart it)."""
    metrics_port = metrics_port_of(args)
    fleet = {}
    if getattr(args, "controlplane", None):
        fleet = dict(controlplanes=tuple(a.strip() for a in args.controlplane.split(",")),
                     heartbeat_seconds=args.heartbeat_seconds,
                     advertise_address=args.advertise_address, api_key=args.api_key)
    with starting():
        tls = tls_of(args)
        # Checked before the worker stack (torch) is imported: a refusal is immediate.
        check_before_loading(args)
        interceptors = auth_interceptors(args, WORKER_METHODS, tls=tls,
                                         controlplanes=fleet.get("controlplanes", ()))
        from lorafleet.dataplane.server.app import start_worker

        running = await start_worker(worker_config(args), host=args.host, port=args.port,
                                     metrics_port=metrics_port, adapters=tuple(args.adapter),
                                     otlp_endpoint=args.otlp_endpoint, http_port=args.http_port,
                                     admin_port=args.admin_port,
                                     security=ServerSecurity(tls.server_credentials(),
                                                             interceptors),
                                     tls=tls, stop=stopper.threaded, **fleet)
    freeze_startup_heap()
    print(f"lorafleet worker {running.worker.options.worker_id} serving on {running.address}", flush=True)
    print(f"  {running.sizes.describe()}", flush=True)
    if running.metrics_port is not None:
        print(f"  metrics: http://{args.host}:{running.metrics_port}/metrics", flush=True)
    if running.admin_server is not None:
        print(f"  WorkerService (admin): {running.admin_address}", flush=True)
    if running.http is not None:
        print(f"  OpenAI API: {running.http.scheme}://{args.host}:{running.http.port}/v1",
              flush=True)
    if on_ready is not None:
        on_ready(running)
    await _first_of(stopper.wait(), running.fatal.wait())
    if running.fatal.is_set():
        print("the engine loop died (see the log); exiting", file=sys.stderr, flush=True)
        await running.stop(0)
        return EXIT_FATAL
    print(f"shutting down: in-flight streams have {args.grace_seconds:.0f}s", flush=True)
    await running.stop(args.grace_seconds)
    return EXIT_OK


async def _first_of(*awaitables) -> None:
    """Waits until one of `awaitables` finishes; cancels the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def serve_parser() -> argparse.ArgumentParser:
    """The parser of `lorafleet serve`."""
    parser = argparse.ArgumentParser(prog="lorafleet serve", description=SERVE_DESCRIPTION)
    add_serve_arguments(parser, model_required=True)
    add_auth_arguments(parser, own_key=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`lorafleet serve`."""
    args = serve_parser().parse_args(argv)
    return _run("lorafleet serve", args)


WORKER_DESCRIPTION = """\
Serve a base model like `lorafleet serve`, as part of a fleet: register with the control
plane, heartbeat (identity, limits, load, adapters), and let the control plane validate,
load and evict adapter versions through WorkerService."""


def worker_parser() -> argparse.ArgumentParser:
    """The parser of `lorafleet worker`."""
    parser = argparse.ArgumentParser(prog="lorafleet worker", description=WORKER_DESCRIPTION)
    add_serve_arguments(parser, model_required=True)
    parser.add_argument("--controlplane", required=True, metavar="ADDR[,ADDR...]",
                        help="control-plane replicas (host:port), tried in order")
    parser.add_argument("--advertise-address", metavar="HOST:PORT",
                        help="address others use to reach this worker (default: the bound one)")
    parser.add_argument("--heartbeat-seconds", type=float, default=2.0,
                        help="heartbeat period until the control plane asks for another "
                             "(default %(default)s)")
    add_auth_arguments(parser, own_key="its worker key: sent with heartbeats (the worker id is bound to it) and used to have the control plane check callers' keys")
    return parser


def worker_main(argv: list[str] | None = None) -> int:
    """`lorafleet worker`: a worker that registers, heartbeats and obeys the control plane."""
    args = worker_parser().parse_args(argv)
    return _run("lorafleet worker", args)


def _run(prog: str, args: argparse.Namespace, on_ready=None) -> int:
    """Serves until a signal; start-up mistakes are one line and exit status 2."""
    return run(prog, lambda stopper: serve(args, stopper, on_ready), log_level=args.log_level)
