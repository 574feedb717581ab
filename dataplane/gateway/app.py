"""Starting and stopping a gateway: the routing-table follower, the gRPC server, metrics and
(optionally) the OpenAI-compatible HTTP endpoint.

    gateway = await start_gateway(GatewayConfig(controlplanes=("127.0.0.1:50051",)))
    ...   # gateway.address serves lorafleet.inference.v1.InferenceService
    await gateway.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from typing import Any

from lorafleet.dataplane.config.quotas import QuotaConfig, TenantQuotas
from lorafleet.dataplane.gateway.follower import Backoff, TableFollower
from lorafleet.dataplane.gateway.metrics import GatewayMetrics
from lorafleet.dataplane.gateway.models import RoutingModels
from lorafleet.dataplane.gateway.proxy import GatewayServicer
from lorafleet.dataplane.gateway.router import Router
from lorafleet.dataplane.gateway.table import RoutingTable
from lorafleet.dataplane.gateway.upstream import OnDemandLoads, WorkerChannels
from lorafleet.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from lorafleet.runtime.auth import bearer, own_metadata
from lorafleet.runtime.auth.interceptor import auth_of
from lorafleet.runtime.rpcserver import (
    PLAINTEXT,
    RunningServer,
    ServerSecurity,
    ServiceBinding,
    full_name,
    start_server,
)
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway needs; ports 0 pick free ones, None turns an endpoint off."""

    controlplanes: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 50050
    metrics_port: int | None = None
    http_port: int | None = None
    base_model: str = ""
    load_timeout_seconds: float = 120.0
    backoff_first_seconds: float = 0.1
    backoff_cap_seconds: float = 5.0
    seed: int | None = None  # fixes the random draws (tests)
    otlp_endpoint: str | None = None  # host:port of an OTLP/gRPC collector for spans
    security: ServerSecurity = PLAINTEXT  # how the gRPC server meets its callers
    tls: TlsConfig = PLAINTEXT_TLS  # how it calls the control plane, workers and itself
    api_key: str | None = None  # its gateway key: for the routing table and worker calls
    quotas: QuotaConfig = QuotaConfig()  # fleet-wide tenant limits (its share of them)


@dataclasses.dataclass
class RunningGateway:
    """A serving gateway and its parts (tests read them)."""

    config: GatewayConfig
    server: RunningServer
    follower: TableFollower
    channels: WorkerChannels
    loads: OnDemandLoads
    metrics: GatewayMetrics
    metrics_port: int | None
    http: Any = None
    _following: asyncio.Task | None = None

    @property
    def address(self) -> str:
        """host:port of the gRPC server."""
        return f"{self.config.host}:{self.server.port}"

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Reports NOT_SERVING, lets in-flight streams finish for the grace period, then
        closes everything."""
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(grace_seconds)
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        await self.loads.close()
        await self.channels.close()
        self.metrics.close()


async def start_gateway(config: GatewayConfig) -> RunningGateway:
    """Starts following the routing table and serving; returns without waiting for the
    first table (requests get UNAVAILABLE until it arrives)."""
    channels = WorkerChannels(config.tls)

    def on_change(table: RoutingTable) -> None:
        channels.retain(table.addresses())
        loads.prune(table.routes, table.workers.keys())

    rng = random.Random(config.seed)
    follower = TableFollower(
        config.controlplanes, base_model=config.base_model, on_change=on_change,
        backoff=Backoff(config.backoff_first_seconds, config.backoff_cap_seconds, rng),
        tls=config.tls)
    follower.metadata = bearer(config.api_key)
    channels.metadata = own_metadata(config.tls, config.api_key)
    auth = auth_of(config.security.interceptors)
    channels.is_auth_on = auth is not None
    if auth is not None:  # Generate calls refused before the servicer count too
        auth.refusal_observers.append(lambda method, code: metrics.count_refused(method, code))
    loads = OnDemandLoads(follower.place, config.load_timeout_seconds)
    metrics = GatewayMetrics(follower.age_seconds, lambda: follower.is_connected,
                             otlp_endpoint=config.otlp_endpoint)
    router = Router(lambda: follower.table, base_model=config.base_model, rng=rng)
    servicer = GatewayServicer(router, channels, loads, metrics, TenantQuotas(config.quotas))
    server = await start_server([
        ServiceBinding(inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
                       servicer, full_name(inference_service_pb2, "InferenceService")),
    ], f"{config.host}:{config.port}", config.security)
    gateway = RunningGateway(config, server, follower, channels, loads, metrics, None)
    gateway._following = asyncio.create_task(follower.run())
    if config.metrics_port is not None:
        gateway.metrics_port = metrics.start_http(config.host, config.metrics_port)
    if config.http_port is not None:
        gateway.http = await _start_http(gateway, router)
    return gateway


async def _start_http(gateway: RunningGateway, router: Router):
    # Imported here: aiohttp is only needed when the HTTP endpoint is on.
    from lorafleet.dataplane.openai_http import start_http_server

    models = RoutingModels(lambda: gateway.follower.table, router)
    # The HTTP layer calls this process's own InferenceService, so routing stays in one place.
    host = gateway.config.host
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return await start_http_server(
        inference_address=f"{local}:{gateway.server.port}", models=models, base_model=models.base_model,
        host=gateway.config.host, port=gateway.config.http_port, tls=gateway.config.tls,
        auth=auth_of(gateway.config.security.interceptors))
