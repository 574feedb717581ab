"""Starting and stopping a worker's gRPC server, adapters and metrics endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import socket
import threading

from opentelemetry.sdk.trace import TracerProvider

from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.config.worker_sizes import WorkerSizes
from lorafleet.dataplane.lora.load_threads import LoadThreads
from lorafleet.dataplane.openai_http import RunningHttp, WorkerModels, start_worker_http
from lorafleet.dataplane.server.build import build_serving_worker
from lorafleet.dataplane.server.heartbeat import Heartbeat
from lorafleet.dataplane.server.inference import InferenceServicer
from lorafleet.dataplane.server.tracing import make_tracer_provider, tracer_of
from lorafleet.dataplane.server.worker import Worker
from lorafleet.dataplane.server.worker_service import WorkerServicer
from lorafleet.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from lorafleet.runtime.auth.interceptor import auth_of
from lorafleet.runtime.error_status import caller_message
from lorafleet.runtime.rpcserver import (
    PLAINTEXT,
    BoundServer,
    PortInUse,
    RunningServer,
    ServerSecurity,
    ServiceBinding,
    bind_server,
    full_name,
)
from lorafleet.runtime.startup import StartupError
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig
from lorafleet.worker.v1 import worker_service_pb2, worker_service_pb2_grpc

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunningWorker:
    """A serving worker: its gRPC server, domain object and metrics port.

    `fatal` is set if the engine loop dies: health already says NOT_SERVING, and the
    process should exit non-zero so its supervisor restarts it.
    """

    worker: Worker
    server: RunningServer
    address: str
    metrics_port: int | None
    worker_servicer: WorkerServicer
    fatal: asyncio.Event
    fatal_watch: asyncio.Task
    tracer_provider: TracerProvider | None = None
    heartbeat: Heartbeat | None = None
    http: RunningHttp | None = None  # OpenAI-compatible HTTP, when asked for
    admin_server: RunningServer | None = None  # WorkerService alone, with --admin-port
    is_stopped: bool = False

    @property
    def admin_address(self) -> str:
        """host:port of WorkerService: the admin server's, else the gRPC server's."""
        if self.admin_server is None:
            return self.address
        return f"{self.address.rpartition(':')[0]}:{self.admin_server.port}"

    @property
    def sizes(self) -> WorkerSizes:
        """Limits and memory of the worker, as built."""
        return self.worker.sizes

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Refuses new requests, lets in-flight streams finish for the grace period,
        cancels the rest, then stops the engine loop (its process or thread). Stopping
        twice is a no-op."""
        if self.is_stopped:
            return
        self.is_stopped = True
        self.worker.is_shutting_down = True
        self.fatal_watch.cancel()
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        if self.http is not None:
            await self.http.stop(grace_seconds)
        await self.server.stop(grace_seconds)
        if self.admin_server is not None:
            await self.admin_server.stop(grace_seconds)
        await asyncio.to_thread(self.worker.bridge.stop)
        self.worker.metrics.close()
        self.worker.frontend.close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # flushes the spans not yet exported


async def start_worker(config: WorkerConfig, *, host: str = "127.0.0.1", port: int = 0,
                       metrics_port: int | None = None,
                       adapters: tuple[tuple[str, str], ...] = (),
                       otlp_endpoint: str | None = None,
                       controlplanes: tuple[str, ...] = (),
                       heartbeat_seconds: float = 2.0,
                       advertise_address: str | None = None,
                       http_port: int | None = None,
                       security: ServerSecurity = PLAINTEXT,
                       tls: TlsConfig = PLAINTEXT_TLS,
                       api_key: str | None = None,
                       admin_port: int | None = None,
                       stop: threading.Event | None = None) -> RunningWorker:
    """Binds the port, builds the worker, loads the start-up adapters, and starts
    serving; with `controlplanes`, also registers and heartbeats (advertising
    `advertise_address`, default the bound address). The gRPC server meets callers with
    `security` (TLS credentials and interceptors) and calls the control plane with `tls`.
    With `admin_port`, WorkerService listens there alone and the gRPC port serves only
    InferenceService. A busy port fails (PortInUse) before the model is loaded; any
    start-up failure releases what was taken. Setting `stop` while an engine process
    builds ends start-up at once with StartupStopped."""
    bounds = await _bind(host, port, admin_port, security)
    bound = bounds[0]
    config = dataclasses.replace(
        config, worker_id=config.worker_id or f"{socket.gethostname()}:{bound.port}")
    fatal = asyncio.Event()
    loop = asyncio.get_running_loop()
    tracer_provider = make_tracer_provider(otlp_endpoint, config.worker_id)
    try:
        # On a thread that ends with the build: an engine built on a thread (the engine
        # on a thread) runs torch ops there, and a thread kept alive would keep their
        # OpenMP team and slow every step (load_threads.py says how).
        build = functools.partial(build_serving_worker, config,
                                  tracer=tracer_of(tracer_provider),
                                  on_fatal=lambda exc: loop.call_soon_threadsafe(fatal.set),
                                  stop=stop)
        worker, _ = await asyncio.wrap_future(LoadThreads(1, "worker-build").submit(build))
    except BaseException:
        await _release(bounds)
        raise
    worker.bridge.start()
    try:
        await _load_startup_adapters(worker, adapters)
        metrics = _start_metrics(worker, host, metrics_port)
    except BaseException:
        await asyncio.gather(_release(bounds), asyncio.to_thread(worker.bridge.stop))
        worker.metrics.close()
        raise
    address = f"{host}:{bound.port}"
    advertised = advertise_address or address
    admin_port_bound = bounds[1].port if len(bounds) > 1 else None
    worker_servicer = WorkerServicer(worker, advertised, "" if admin_port_bound is None else
                                     f"{advertised.rpartition(':')[0]}:{admin_port_bound}")
    server, admin_server = await _serve(bounds, worker, worker_servicer)
    fatal_watch = loop.create_task(_report_fatal(fatal, server, admin_server))
    heartbeat = None
    if controlplanes:
        heartbeat = Heartbeat(worker_servicer, controlplanes, interval=heartbeat_seconds,
                              tls=tls, api_key=api_key)
        await heartbeat.send_once()
        heartbeat.start()
    http = None
    if http_port is not None:  # after the gRPC server is bound: HTTP calls into it
        models = WorkerModels(worker.base_model.name, lambda: map(
            worker_servicer.residency, worker.versions.entries()))
        http = await start_worker_http(
            worker_address=address, models=models, base_model=worker.base_model.name,
            host=host, port=http_port, tls=tls, auth=auth_of(security.interceptors))
    return RunningWorker(worker, server, address, metrics, worker_servicer, fatal,
                         fatal_watch, tracer_provider, heartbeat, http, admin_server)


async def _bind(host: str, port: int, admin_port: int | None,
                security: ServerSecurity) -> list[BoundServer]:
    """Binds the gRPC port and, when given, the admin port (releasing the first if the
    second is busy)."""
    bound = await bind_server(f"{host}:{port}", security)
    if admin_port is None:
        return [bound]
    try:
        return [bound, await bind_server(f"{host}:{admin_port}", security)]
    except PortInUse as exc:
        await bound.server.stop(None)
        raise PortInUse(f"--admin-port: {exc}") from exc


async def _release(bounds: list[BoundServer]) -> None:
    await asyncio.gather(*(b.server.stop(None) for b in bounds))


async def _serve(bounds: list[BoundServer], worker: Worker, worker_servicer: WorkerServicer
                 ) -> tuple[RunningServer, RunningServer | None]:
    """Starts InferenceService, and WorkerService beside it or on the admin port."""
    inference = ServiceBinding(
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
        InferenceServicer(worker), full_name(inference_service_pb2, "InferenceService"))
    admin = ServiceBinding(worker_service_pb2_grpc.add_WorkerServiceServicer_to_server,
                           worker_servicer, full_name(worker_service_pb2, "WorkerService"))
    if len(bounds) == 1:
        return await bounds[0].start([inference, admin]), None
    return await bounds[0].start([inference]), await bounds[1].start([admin])


async def _load_startup_adapters(worker: Worker, adapters) -> None:
    """Loads the `--adapter NAME=PATH` adapters; a refusal names the adapter."""
    for name, path in adapters:
        try:
            entry = await worker.load_adapter(name, 0, str(path), make_default=True)
        except Exception as exc:  # noqa: BLE001 - every refusal stops the start
            raise StartupError(f"--adapter {name}: {caller_message(exc)}") from exc
        log.info("loaded %s (digest %s, rank %d)", entry.label, entry.digest[:12], entry.rank)


def _start_metrics(worker: Worker, host: str, port: int | None) -> int | None:
    """Serves /metrics on `port` (None: not at all); returns the bound port."""
    if port is None:
        return None
    try:
        return worker.metrics.start_http(host, port)
    except OSError as exc:
        raise StartupError(f"--metrics-port {port}: cannot listen on {host}:{port} "
                           f"({exc.strerror or exc})") from exc


async def _report_fatal(fatal: asyncio.Event, server: RunningServer,
                        admin_server: RunningServer | None) -> None:
    """Once the engine loop dies, health says NOT_SERVING for every service."""
    await fatal.wait()
    await server.set_not_serving()
    if admin_server is not None:
        await admin_server.set_not_serving()
