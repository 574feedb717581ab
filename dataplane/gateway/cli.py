"""`lorafleet gateway`: route Generate requests to the fleet until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse

from lorafleet.dataplane.config.quotas import add_tenant_limit_arguments, quota_config_of
from lorafleet.dataplane.gateway.app import GatewayConfig, start_gateway
from lorafleet.runtime import startup
from lorafleet.runtime.auth.policy import GATEWAY_METHODS
from lorafleet.runtime.auth.startup import add_auth_arguments, auth_interceptors
from lorafleet.runtime.metrics_http import add_metrics_port_argument, metrics_port_of
from lorafleet.runtime.rpcserver import ServerSecurity
from lorafleet.runtime.startup import StartupError, Stopper, add_log_level_argument, run, starting
from lorafleet.runtime.tls import TlsConfig, TlsFileError, add_server_tls_arguments

DESCRIPTION = """\
Run a gateway: it serves lorafleet.inference.v1.InferenceService (the same service as a
worker, so one client stub points at either) and routes every Generate to a worker by the
control plane's routing table: the version by the adapter's rollout weights (the same
routing_key always gets the same version), the worker by tier and load; a version no
worker holds yet is loaded on demand. It keeps serving from its last table while the
control plane is away. Stateless: run as many as you like. Tenant limits given here hold
across the whole fleet (a worker's own limits count only what that worker serves)."""


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(prog="lorafleet gateway", description=DESCRIPTION)
    parser.add_argument("--controlplane", required=True, metavar="ADDR[,ADDR...]",
                        help="control-plane replicas (host:port) to follow the routing "
                             "table from; on failure the next one is tried")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=50050,
                        help="gRPC port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--http-port", type=int, default=None, metavar="N",
                        help="also serve the OpenAI-compatible HTTP API (completions, chat, "
                             "models) on this port; 0 picks a free one (default: off)")
    add_metrics_port_argument(parser, 9401, "requests, retries, picks, routing-table age")
    parser.add_argument("--base-model", default="", metavar="NAME",
                        help="route only adapters and workers of this base model; requests "
                             "without an adapter go to it (default: every base model; "
                             "needed for such requests when the fleet serves several)")
    parser.add_argument("--otlp-endpoint", default=None, metavar="HOST:PORT",
                        help="export a tracing span per request to this OTLP/gRPC collector, "
                             "continuing the caller's W3C traceparent and passing it to the "
                             "worker (needs the otlp extra; default: off)")
    parser.add_argument("--load-timeout", type=float, default=120.0, metavar="S",
                        help="longest an on-demand adapter load may take (default %(default)s)")
    parser.add_argument("--grace-seconds", type=float, default=30.0,
                        help="on SIGTERM, how long in-flight streams may finish (default %(default)s)")
    add_tenant_limit_arguments(parser, "across the fleet (every worker this gateway routes "
                                       "to; its share when --gateway-replicas > 1)")
    parser.add_argument("--gateway-replicas", type=int, default=1, metavar="N",
                        help="how many gateways share the fleet's traffic: each enforces 1/N "
                             "of every tenant limit (default %(default)s)")
    add_log_level_argument(parser)
    add_server_tls_arguments(parser)
    add_auth_arguments(parser, own_key="its gateway key: it follows the routing table, calls workers on behalf of callers, and has the control plane check callers' keys")
    return parser


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The gateway's config from parsed arguments."""
    controlplanes = tuple(a.strip() for a in args.controlplane.split(",") if a.strip())
    if not controlplanes:
        raise StartupError("--controlplane needs at least one host:port")
    try:
        tls = TlsConfig.from_args(args)
        security = ServerSecurity(tls.server_credentials(),
                                  auth_interceptors(args, GATEWAY_METHODS, tls=tls,
                                                    controlplanes=controlplanes))
    except TlsFileError as exc:
        raise StartupError(str(exc)) from exc
    if args.gateway_replicas < 1:
        raise StartupError(f"--gateway-replicas must be >= 1, got {args.gateway_replicas}")
    return GatewayConfig(
        controlplanes=controlplanes, host=args.host, port=args.port,
        metrics_port=metrics_port_of(args),
        http_port=args.http_port, base_model=args.base_model,
        load_timeout_seconds=args.load_timeout, otlp_endpoint=args.otlp_endpoint,
        security=security, tls=tls, api_key=args.api_key,
        quotas=quota_config_of(args).shared_by(args.gateway_replicas))


async def serve(config: GatewayConfig, grace_seconds: float, stopper: Stopper) -> None:
    """Runs a gateway until a stop is asked for, then stops it gracefully."""
    with starting():
        gateway = await start_gateway(config)
    startup.freeze_startup_heap()
    print(f"lorafleet gateway listening on {gateway.address}", flush=True)
    print(f"  following the routing table of {', '.join(config.controlplanes)}", flush=True)
    if gateway.metrics_port is not None:
        print(f"  metrics: http://{config.host}:{gateway.metrics_port}/metrics", flush=True)
    if gateway.http is not None:
        print(f"  OpenAI HTTP: {gateway.http.scheme}://{config.host}:{gateway.http.port}/v1",
              flush=True)
    try:
        await stopper.wait()
    finally:
        await gateway.stop(grace_seconds)


def main(argv=None) -> int:
    """Entry point of `lorafleet gateway` (start-up mistakes: one line, exit 2)."""
    args = build_parser().parse_args(argv)

    async def main_coro(stopper: Stopper) -> None:
        await serve(config_from_args(args), args.grace_seconds, stopper)

    return run("lorafleet gateway", main_coro, log_level=args.log_level)
