"""A fake worker for control-plane tests: a real gRPC WorkerService, no model.

It keeps residency in memory, answers ValidateAdapter from configurable verdicts, fails
chosen loads, and heartbeats to the control plane through FleetService.SendHeartbeat
like a real worker. Digests are sha256 of the source URI, so tests can predict them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

import grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.runtime import rpcserver
from lorafleet.runtime.auth import bearer
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb
from lorafleet.worker.v1 import worker_service_pb2_grpc as worker_grpc


def fake_digest(source_uri: str) -> str:
    """The digest the fake worker reports for `source_uri`."""
    return hashlib.sha256(source_uri.encode()).hexdigest()


class FakeWorkerService(worker_grpc.WorkerServiceServicer):
    """WorkerService over an in-memory residency table."""

    def __init__(self, worker: FakeWorker):
        self.worker = worker

    async def ValidateAdapter(self, request, context):
        """Verdict from `invalid_sources` / `missing_sources`; valid otherwise."""
        if not request.source_uri:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "source_uri is required")
        if request.source_uri in self.worker.missing_sources:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.source_uri} does not exist")
        self.worker.num_validations += 1
        reasons = self.worker.invalid_sources.get(request.source_uri)
        return worker_pb.ValidateAdapterResponse(
            is_valid=not reasons, reasons=reasons or [], digest=fake_digest(request.source_uri),
            rank=8, target_modules=["q_proj", "v_proj"], base_model=self.worker.base_model,
            size_bytes=4096,
        )

    async def LoadAdapter(self, request, context):
        """Marks the version READY in the asked tier, or fails as `load_failures` says."""
        failure = self.worker.load_failures.get(request.source_uri)
        if failure is not None:
            await context.abort(*failure)
        if request.digest and request.digest != fake_digest(request.source_uri):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "digest mismatch")
        key = (request.adapter, request.version)
        table = self.worker.residency
        if key not in table and len(table) >= self.worker.max_cpu_loras:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "host tier full")
        table[key] = worker_pb.AdapterResidency(
            adapter=request.adapter, version=request.version, source_uri=request.source_uri,
            digest=fake_digest(request.source_uri), tier=request.tier or worker_pb.TIER_DEVICE,
            state=worker_pb.LOAD_STATE_READY, rank=8, size_bytes=4096,
        )
        self.worker.calls.append((time.monotonic(), "load", request.adapter, request.version))
        return worker_pb.LoadAdapterResponse(adapter=table[key])

    async def EvictAdapter(self, request, context):
        """Forgets one version (or all of an adapter's with version 0)."""
        keys = [k for k in self.worker.residency
                if k[0] == request.adapter and request.version in (0, k[1])]
        if not keys:
            await context.abort(grpc.StatusCode.NOT_FOUND, "not on this worker")
        evicted = [self.worker.residency.pop(k) for k in keys]
        for key in keys:
            self.worker.calls.append((time.monotonic(), "evict", *key))
        return worker_pb.EvictAdapterResponse(adapters=evicted)

    async def ListAdapters(self, request, context):
        """Every version held."""
        return worker_pb.ListAdaptersResponse(adapters=list(self.worker.residency.values()))

    async def GetWorkerStatus(self, request, context):
        """Identity, capacities and load, as in the heartbeat."""
        status = self.worker.describe()
        return worker_pb.GetWorkerStatusResponse(
            worker_id=status.worker_id, address=status.address, base_model=status.base_model,
            capacities=status.capacities, load=status.load,
        )


class FakeWorker:
    """A fake worker; `start()` serves and heartbeats, `kill()` stops both at once."""

    def __init__(self, worker_id: str, controlplanes: list[str], base_model: str = "tiny-llama",
                 max_cpu_loras: int = 8, heartbeat_seconds: float = 0.3,
                 api_key: str | None = None):
        self.worker_id = worker_id
        self.api_key = api_key  # its worker key, for a control plane that checks keys
        self.controlplanes = list(controlplanes)
        self.base_model = base_model
        self.max_cpu_loras = max_cpu_loras
        self.heartbeat_seconds = heartbeat_seconds
        self.residency: dict[tuple[str, int], worker_pb.AdapterResidency] = {}
        self.invalid_sources: dict[str, list[str]] = {}
        self.missing_sources: set[str] = set()
        self.load_failures: dict[str, tuple[grpc.StatusCode, str]] = {}
        self.requests_per_adapter: dict[str, int] = {}
        # (monotonic time, "load" | "evict", adapter, version), in call order.
        self.calls: list[tuple[float, str, str, int]] = []
        self.num_validations = 0
        self.is_draining = False
        self.address = ""
        self._server: rpcserver.RunningServer | None = None
        self._heartbeats: asyncio.Task | None = None
        self._registered = asyncio.Event()  # a control plane took a heartbeat

    async def start(self) -> str:
        """Serves WorkerService on a free loopback port and starts heartbeating."""
        binding = rpcserver.ServiceBinding(
            worker_grpc.add_WorkerServiceServicer_to_server, FakeWorkerService(self),
            rpcserver.full_name(worker_pb, "WorkerService"),
        )
        self._server = await rpcserver.start_server([binding], "127.0.0.1:0")
        self.address = f"127.0.0.1:{self._server.port}"
        self._heartbeats = asyncio.create_task(self._heartbeat_forever())
        return self.address

    def describe(self) -> fleet_pb.Worker:
        """The worker as its heartbeat reports it."""
        return fleet_pb.Worker(
            worker_id=self.worker_id, address=self.address,
            base_model=worker_pb.BaseModel(name=self.base_model, architecture="LlamaForCausalLM"),
            capacities=worker_pb.Capacities(max_loras=2, max_lora_rank=16,
                                            max_cpu_loras=self.max_cpu_loras),
            load=worker_pb.WorkerLoad(num_host_adapters=len(self.residency),
                                      requests_per_adapter=self.requests_per_adapter),
            adapters=list(self.residency.values()),
        )

    async def _heartbeat_forever(self) -> None:
        while True:
            for address in self.controlplanes:  # the first replica that answers
                try:
                    async with grpc.aio.insecure_channel(address) as channel:
                        reply = await fleet_grpc.FleetServiceStub(channel).SendHeartbeat(
                            fleet_pb.SendHeartbeatRequest(worker=self.describe()), timeout=2.0,
                            metadata=bearer(self.api_key))
                    self.is_draining = reply.is_draining
                    self._registered.set()
                    break
                except grpc.aio.AioRpcError:
                    continue
            await asyncio.sleep(self.heartbeat_seconds)

    async def registered(self, timeout: float = 10.0) -> None:
        """Returns once a control plane has taken one of its heartbeats (it is then a
        worker the fleet knows); raises TimeoutError past `timeout`."""
        await asyncio.wait_for(self._registered.wait(), timeout)

    async def stop_heartbeats(self) -> None:
        """Stops heartbeating; the server keeps answering."""
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
            self._heartbeats = None

    async def kill(self) -> None:
        """Stops heartbeats and the server at once, like a crashed process."""
        await self.stop_heartbeats()
        if self._server is not None:
            await self._server.server.stop(0)
            self._server = None

    def resident(self) -> set[tuple[str, int]]:
        """(adapter, version) pairs held."""
        return set(self.residency)
