"""One control-plane replica: the gRPC API on every replica, the reconciler on the leader.

    plane = ControlPlane(ControlPlaneConfig(etcd_url="http://127.0.0.1:2379"))
    port = await plane.start()
    ...
    await plane.stop()

Any number of replicas may share one etcd; they all serve AdapterService and
FleetService, and the one holding the election lease also reconciles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

from lorafleet.control.v1 import adapter_service_pb2, fleet_service_pb2
from lorafleet.control.v1 import adapter_service_pb2_grpc as adapter_grpc
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.controlplane.access import AuthConfig, ControlPlaneAuth
from lorafleet.controlplane.api_adapters import AdapterServicer
from lorafleet.controlplane.api_fleet import FleetServicer
from lorafleet.controlplane.election import LeaderElection
from lorafleet.controlplane.fleet import FleetRegistry
from lorafleet.controlplane.metrics import ControlPlaneMetrics
from lorafleet.controlplane.on_demand import OnDemandPlacer
from lorafleet.controlplane.placement import PlacementPolicy
from lorafleet.controlplane.reconciler import Reconciler, ReconcilerConfig
from lorafleet.controlplane.registry import AdapterRegistry
from lorafleet.controlplane.rollouts import RolloutManager
from lorafleet.controlplane.schema import DEFAULT_ROOT
from lorafleet.controlplane.store import EtcdStore, RetryPolicy
from lorafleet.controlplane.validation import VersionValidator
from lorafleet.controlplane.worker_client import CallPolicy, WorkerClients
from lorafleet.runtime import rpcserver
from lorafleet.runtime.auth import Role, own_metadata
from lorafleet.runtime.startup import StartupError
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

log = logging.getLogger(__name__)

# How long stop() waits for leadership work (reconciler, lease keep-alive, resign) to end.
_LEADING_STOP_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class ControlPlaneConfig:
    """Everything a replica needs; the short timings are for tests."""

    etcd_url: str
    address: str = "127.0.0.1:0"
    root: str = DEFAULT_ROOT
    replica_id: str = dataclasses.field(default_factory=lambda: f"cp-{uuid.uuid4().hex[:12]}")
    lease_ttl_seconds: int = 10
    election_ttl_seconds: int = 10
    resync_seconds: float = 10.0
    worker_timeout_seconds: float = 5.0
    load_timeout_seconds: float = 60.0
    demand_per_replica: float = 4.0
    etcd_give_up_seconds: float = 30.0  # background work (reconciler, election, watches)
    etcd_request_give_up_seconds: float = 2.0  # admin RPCs: UNAVAILABLE after this
    metrics_port: int | None = None  # Prometheus /metrics on the gRPC host; 0: a free port
    security: rpcserver.ServerSecurity = rpcserver.PLAINTEXT  # how the server meets callers
    auth: AuthConfig = AuthConfig()  # API keys: who may call, and the key it calls workers with
    tls: TlsConfig = PLAINTEXT_TLS  # how it calls workers


class ControlPlane:
    """A running replica: gRPC server plus, while leader, the reconciler."""

    def __init__(self, config: ControlPlaneConfig):
        self.config = config
        self.metrics = ControlPlaneMetrics(lambda: self.is_leader)
        self.metrics_port: int | None = None
        self.store = EtcdStore(config.etcd_url, config.root,
                               RetryPolicy(give_up_seconds=config.etcd_give_up_seconds),
                               self.metrics)
        self.clients = WorkerClients(CallPolicy(timeout_seconds=config.worker_timeout_seconds),
                                     config.tls)
        self.clients.metadata = own_metadata(config.tls, config.auth.api_key)
        self.auth = ControlPlaneAuth(self.store, config.auth)
        self.validator = VersionValidator(self.store, self.clients)
        # RPCs read and write through a view that gives up quickly: while etcd is down a
        # caller gets UNAVAILABLE in seconds, not a hang until its own deadline.
        self.request_store = self.store.with_retry(
            RetryPolicy(give_up_seconds=config.etcd_request_give_up_seconds))
        self.registry = AdapterRegistry(
            self.request_store, VersionValidator(self.request_store, self.clients))
        self.fleet = FleetRegistry(self.request_store, config.lease_ttl_seconds,
                                   self.clients.is_answering)
        self.election = LeaderElection(self.store, config.replica_id, config.election_ttl_seconds)
        self.is_leader = False
        self._server: rpcserver.RunningServer | None = None
        self._leading: asyncio.Task | None = None

    async def start(self) -> int:
        """Starts serving and campaigning; returns the bound port."""
        bindings = [
            rpcserver.ServiceBinding(
                adapter_grpc.add_AdapterServiceServicer_to_server,
                AdapterServicer(self.registry, RolloutManager(self.registry)),
                rpcserver.full_name(adapter_service_pb2, "AdapterService"),
            ),
            rpcserver.ServiceBinding(
                fleet_grpc.add_FleetServiceServicer_to_server,
                FleetServicer(self.request_store, self.fleet,
                              OnDemandPlacer(self.request_store, self.clients), self.auth.bindings),
                rpcserver.full_name(fleet_service_pb2, "FleetService"),
            ),
            self.auth.binding(),
        ]
        await self.auth.start()
        await self._refuse_admin_key()
        self._server = await rpcserver.start_server(
            bindings, self.config.address, self.auth.security(self.config.security))
        if self.config.metrics_port is not None:
            await self._start_metrics(self.config.metrics_port)
        self._leading = asyncio.create_task(self._lead_forever())
        return self._server.port

    async def _refuse_admin_key(self) -> None:
        """StartupError when the key this replica would send to workers is an admin key:
        any worker could replay it (with a TLS client certificate no key is sent)."""
        key = self.config.auth.api_key
        if not (self.config.auth.is_on and key and self.clients.metadata):
            return
        principal = await self.auth.verifier.verify(key)
        if principal is not None and principal.role is Role.ADMIN:
            await self.auth.stop()
            raise StartupError(
                "--api-key is an admin key: a control plane sends its key to every worker, "
                "and any worker could replay it; give it a key of role controlplane "
                "('lorafleet key hash --role controlplane'), or a TLS client certificate "
                "(docs/security.md)")

    async def _start_metrics(self, port: int) -> None:
        host = self.config.address.rpartition(":")[0]
        try:
            self.metrics_port = self.metrics.start_http(host, port)
        except OSError as exc:
            await self._server.stop(0)
            raise StartupError(f"--metrics-port {port}: cannot listen on {host}:{port} "
                               f"({exc.strerror or exc})") from exc

    @property
    def port(self) -> int:
        """The bound gRPC port (after start)."""
        if self._server is None:
            raise RuntimeError("the control plane is not started")
        return self._server.port

    async def stop(self, grace_seconds: float = 1.0) -> None:
        """Stops reconciling (giving up leadership) and serving."""
        if self._leading is not None:
            self._leading.cancel()
            # Work that does not end when cancelled (an etcd watch that cannot close) must
            # not hold the stop: the leader lease then expires by itself.
            await asyncio.wait({self._leading}, timeout=_LEADING_STOP_SECONDS)
        if self._server is not None:
            await self._server.stop(grace_seconds)
        await self.clients.close()
        await self.auth.stop()
        await self.store.close()
        self.metrics.close()

    async def _lead_forever(self) -> None:
        while True:
            try:
                lease_id = await self.election.campaign()
            except Exception:
                log.exception("election campaign failed; retrying")
                await asyncio.sleep(1.0)
                continue
            try:
                await self._lead(lease_id)
            finally:
                self.is_leader = False
                self.metrics.clear_fleet()
                # Shielded so a stop() still hands leadership over at once.
                await asyncio.shield(self.election.resign(lease_id))

    async def _lead(self, lease_id: int) -> None:
        self.is_leader = True
        reconciler = Reconciler(
            self.store, self.clients, self.validator, self.election,
            ReconcilerConfig(
                resync_seconds=self.config.resync_seconds,
                load_timeout_seconds=self.config.load_timeout_seconds,
                policy=PlacementPolicy(self.config.demand_per_replica),
            ),
            self.metrics,
        )
        reconciling = asyncio.create_task(reconciler.run())
        holding = asyncio.create_task(self.election.hold(lease_id))
        try:
            await asyncio.wait({reconciling, holding}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reconciling, holding):
                task.cancel()
            await asyncio.gather(reconciling, holding, return_exceptions=True)
