"""Starting and stopping a worker's gRPC server, adapters and metrics endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from opentelemetry.sdk.trace import TracerProvider

from lorafleet.dataplane.openai_http import RunningHttp, start_worker_http
from lorafleet.dataplane.server.build import MemoryReport, WorkerConfig, build_worker
from lorafleet.dataplane.server.heartbeat import Heartbeat
from lorafleet.dataplane.server.inference import InferenceServicer
from lorafleet.dataplane.server.tracing import make_tracer_provider, tracer_of
from lorafleet.dataplane.server.worker import Worker
from lorafleet.dataplane.server.worker_service import WorkerServicer
from lorafleet.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from lorafleet.rpcserver import RunningServer, ServiceBinding, full_name, start_server
from lorafleet.worker.v1 import worker_service_pb2, worker_service_pb2_grpc

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunningWorker:
    """A serving worker: its gRPC server, domain object and metrics port."""

    worker: Worker
    server: RunningServer
    address: str
    metrics_port: int | None
    memory: MemoryReport
    worker_servicer: WorkerServicer
    tracer_provider: TracerProvider | None = None
    heartbeat: Heartbeat | None = None
    http: RunningHttp | None = None  # OpenAI-compatible HTTP, when asked for
    is_stopped: bool = False

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Refuses new requests, lets in-flight streams finish for the grace period,
        cancels the rest, then stops the engine thread. Stopping twice is a no-op."""
        if self.is_stopped:
            return
        self.is_stopped = True
        self.worker.is_draining = True
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        if self.http is not None:
            await self.http.stop(grace_seconds)
        await self.server.stop(grace_seconds)
        await asyncio.to_thread(self.worker.bridge.stop)
        self.worker.metrics.close()
        self.worker.cache.close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # flushes the spans not yet exported


async def start_worker(config: WorkerConfig, *, host: str = "127.0.0.1", port: int = 0,
                       metrics_port: int | None = None,
                       adapters: tuple[tuple[str, str], ...] = (),
                       otlp_endpoint: str | None = None,
                       controlplanes: tuple[str, ...] = (),
                       heartbeat_seconds: float = 2.0,
                       advertise_address: str | None = None,
                       http_port: int | None = None) -> RunningWorker:
    """Builds the worker, loads the start-up adapters, and starts serving; with
    `controlplanes`, also registers and heartbeats (advertising `advertise_address`,
    default the bound address)."""
    worker, memory = await asyncio.to_thread(build_worker, config)
    tracer_provider = make_tracer_provider(otlp_endpoint, config.worker_id)
    worker.tracer = tracer_of(tracer_provider)
    worker.bridge.start()
    for name, path in adapters:
        entry = await worker.load_adapter(name, 0, str(path), make_default=True)
        log.info("loaded %s (digest %s, rank %d)", entry.label, entry.digest[:12], entry.rank)
    inference = InferenceServicer(worker)
    worker_servicer = WorkerServicer(worker)
    server = await start_server([
        ServiceBinding(inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
                       inference, full_name(inference_service_pb2, "InferenceService")),
        ServiceBinding(worker_service_pb2_grpc.add_WorkerServiceServicer_to_server,
                       worker_servicer, full_name(worker_service_pb2, "WorkerService")),
    ], f"{host}:{port}")
    address = f"{host}:{server.port}"
    worker_servicer.address = advertise_address or address
    heartbeat = None
    if controlplanes:
        heartbeat = Heartbeat(worker_servicer, controlplanes, interval=heartbeat_seconds)
        await heartbeat.send_once()
        heartbeat.start()
    bound_metrics = worker.metrics.start_http(host, metrics_port) if metrics_port is not None else None
    http = None
    if http_port is not None:  # after the gRPC server is bound: HTTP calls into it
        http = await start_worker_http(worker_address=address, base_model=worker.base_model.name,
                                       host=host, port=http_port)
    return RunningWorker(worker, server, address, bound_metrics, memory, worker_servicer,
                         tracer_provider, heartbeat, http)
