"""`lorafleet controlplane`: run one control-plane replica until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import uuid

from lorafleet.controlplane.access import auth_config_from_args
from lorafleet.controlplane.server import ControlPlane, ControlPlaneConfig
from lorafleet.runtime import startup
from lorafleet.runtime.auth.startup import add_auth_arguments
from lorafleet.runtime.metrics_http import OFF, add_metrics_port_argument, metrics_port_of
from lorafleet.runtime.rpcserver import ServerSecurity
from lorafleet.runtime.startup import StartupError, Stopper, add_log_level_argument, run, starting
from lorafleet.runtime.tls import TlsConfig, TlsFileError, add_server_tls_arguments

DESCRIPTION = """\
Run a control-plane replica: the adapter registry (AdapterService) and the fleet view
(FleetService) over gRPC, backed by etcd. Run several replicas against the same etcd for
availability; the one holding the election lease places adapter versions on workers and
pushes LoadAdapter/EvictAdapter to them.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(prog="lorafleet controlplane", description=DESCRIPTION)
    parser.add_argument("--etcd", required=True, metavar="URL",
                        help="etcd client URL, e.g. http://127.0.0.1:2379")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default %(default)s: this machine only; "
                             "give 0.0.0.0 or an interface address to let workers and "
                             "gateways on other hosts reach it)")
    parser.add_argument("--port", type=int, default=50051,
                        help="gRPC port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--root", default="/lorafleet/",
                        help="etcd key prefix of this fleet (default %(default)s)")
    parser.add_argument("--replica-id", default=None,
                        help="name of this replica in the election (default: random)")
    parser.add_argument("--lease-ttl", type=int, default=10, metavar="S",
                        help="seconds a worker stays registered without a heartbeat (default %(default)s)")
    parser.add_argument("--election-ttl", type=int, default=10, metavar="S",
                        help="seconds before a silent leader is replaced (default %(default)s)")
    parser.add_argument("--resync", type=float, default=10.0, metavar="S",
                        help="seconds between full reconcile passes (default %(default)s)")
    parser.add_argument("--demand-per-replica", type=float, default=4.0, metavar="N",
                        help="in-flight requests per replica before another is placed (default %(default)s)")
    add_metrics_port_argument(parser, OFF, "leadership, reconcile passes, workers and "
                                           "versions by state, etcd latency")
    add_log_level_argument(parser)
    add_server_tls_arguments(parser)
    add_auth_arguments(parser, own_key="its controlplane key, sent to workers (LoadAdapter, "
                                         "ValidateAdapter, ...) when it has no TLS client "
                                         "certificate; never an admin key")
    return parser


def config_from_args(args: argparse.Namespace) -> ControlPlaneConfig:
    """The replica's config from parsed arguments."""
    try:
        tls = TlsConfig.from_args(args)
        security = ServerSecurity(tls.server_credentials())
    except TlsFileError as exc:
        raise StartupError(str(exc)) from exc
    return ControlPlaneConfig(
        etcd_url=args.etcd,
        address=f"{args.host}:{args.port}",
        root=args.root,
        replica_id=args.replica_id or f"cp-{uuid.uuid4().hex[:12]}",
        lease_ttl_seconds=args.lease_ttl,
        election_ttl_seconds=args.election_ttl,
        resync_seconds=args.resync,
        demand_per_replica=args.demand_per_replica,
        metrics_port=metrics_port_of(args),
        security=security,
        tls=tls,
        auth=auth_config_from_args(args),
    )


async def serve(config: ControlPlaneConfig, stopper: Stopper) -> None:
    """Runs a replica until a stop is asked for, then stops it gracefully."""
    plane = ControlPlane(config)
    with starting():
        port = await plane.start()
    host = config.address.rpartition(":")[0]
    startup.freeze_startup_heap()
    print(f"lorafleet controlplane {config.replica_id} listening on {host}:{port}", flush=True)
    if plane.metrics_port is not None:
        print(f"  metrics: http://{host}:{plane.metrics_port}/metrics", flush=True)
    try:
        await stopper.wait()
    finally:
        await plane.stop()


def main(argv=None) -> int:
    """Entry point of `lorafleet controlplane` (start-up mistakes: one line, exit 2)."""
    args = build_parser().parse_args(argv)

    async def main_coro(stopper: Stopper) -> None:
        await serve(config_from_args(args), stopper)

    return run("lorafleet controlplane", main_coro, log_level=args.log_level)
