"""`lorafleet serve` (one worker, no etcd) and `lorafleet worker` (one worker of a fleet)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys

from lorafleet.dataplane.adapters.confinement import policy_from_args
from lorafleet.dataplane.config.flags import add_worker_flags, config_values
from lorafleet.dataplane.config.quotas import quota_config_of
from lorafleet.runtime.auth.policy import WORKER_METHODS
from lorafleet.runtime.auth.startup import add_auth_arguments, auth_interceptors
from lorafleet.runtime.metrics_http import metrics_port_of
from lorafleet.runtime.rpcserver import ServerSecurity
from lorafleet.runtime.startup import (
    EXIT_FATAL,
    EXIT_OK,
    StartupError,
    Stopper,
    check_port_free,
    freeze_startup_heap,
    run,
    starting,
)
from lorafleet.runtime.tls import TlsConfig, TlsFileError

SERVE_DESCRIPTION = """\
Serve one base model and its LoRA adapters from this machine: streaming
InferenceService.Generate and WorkerService (load/evict/list adapters) on one gRPC port,
Prometheus metrics on another. No control plane or etcd is needed."""


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
    from lorafleet.dataplane.config.worker_config import WorkerConfig

    try:
        sources = policy_from_args(args)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    fields = {field.name for field in dataclasses.fields(WorkerConfig)}
    return WorkerConfig(model_dir=args.model, quotas=quota_config_of(args), sources=sources,
                        **config_values(args, fields))


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
    print(f"lorafleet worker {running.worker.config.worker_id} serving on {running.address}", flush=True)
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
    add_worker_flags(parser)
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
    add_worker_flags(parser)
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
