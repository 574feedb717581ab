"""WorkerService: adapter load/evict/list/validate and status, translated to `Worker`."""

from __future__ import annotations

import grpc

from lorafleet.dataplane.adapters.errors import AdapterError
from lorafleet.dataplane.lora.versions import VersionEntry, VersionState, parse_name
from lorafleet.dataplane.server.worker import DigestMismatch, VersionConflict, Worker
from lorafleet.worker.v1 import worker_service_pb2 as pb
from lorafleet.worker.v1 import worker_service_pb2_grpc as pb_grpc

_STATE = {
    VersionState.LOADING: pb.LOAD_STATE_LOADING,
    VersionState.READY: pb.LOAD_STATE_READY,
    VersionState.FAILED: pb.LOAD_STATE_FAILED,
}
_TIER = {"device": pb.TIER_DEVICE, "host": pb.TIER_HOST, None: pb.TIER_SOURCE}


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    """Manages this worker's adapters for the control plane (and for grpcurl)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.address = ""  # host:port, set once the server is bound

    async def LoadAdapter(self, request: pb.LoadAdapterRequest, context):
        name = await _checked_name(request.adapter, context)
        if not request.source_uri:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "source_uri: required")
        if self.worker.is_draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker is draining")
        try:
            entry = await self.worker.load_adapter(
                name, request.version, request.source_uri, digest=request.digest,
                to_device=request.tier in (pb.TIER_UNSPECIFIED, pb.TIER_DEVICE),
                make_default=request.make_default)
        except AdapterError as exc:
            await context.abort(grpc.StatusCode[exc.status_code_name], str(exc))
        except DigestMismatch as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except VersionConflict as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        return pb.LoadAdapterResponse(adapter=self.residency(entry))

    async def EvictAdapter(self, request: pb.EvictAdapterRequest, context):
        name = await _checked_name(request.adapter, context)
        keep_host = request.tier == pb.TIER_DEVICE
        try:
            entries = await self.worker.evict_adapter(name, request.version, keep_host=keep_host)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except TimeoutError as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        return pb.EvictAdapterResponse(adapters=[self.residency(e) for e in entries])

    async def ListAdapters(self, request: pb.ListAdaptersRequest, context):
        listed = [self.residency(e) for e in self.worker.versions.entries()]
        if request.tier != pb.TIER_UNSPECIFIED:
            listed = [r for r in listed if r.tier == request.tier]
        return pb.ListAdaptersResponse(adapters=listed)

    async def ValidateAdapter(self, request: pb.ValidateAdapterRequest, context):
        if not request.source_uri:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "source_uri: required")
        try:
            report = await self.worker.validate_adapter(request.source_uri)
        except AdapterError as exc:
            await context.abort(grpc.StatusCode[exc.status_code_name], str(exc))
        return pb.ValidateAdapterResponse(
            is_valid=report.is_valid, reasons=report.reasons, digest=report.digest or "",
            rank=report.rank or 0, target_modules=report.target_modules,
            base_model=report.base_model_name_or_path or "", size_bytes=report.size_bytes or 0)

    async def GetWorkerStatus(self, request, context):
        return self.status()

    def status(self) -> pb.GetWorkerStatusResponse:
        """Identity, limits and load of this worker."""
        worker = self.worker
        engine, lora, options = worker.bridge.engine, worker.lora, worker.options
        stats, counts = engine.stats(), worker.cache.counts()
        in_flight: dict[str, int] = {}
        for entry in worker.versions.entries():
            if entry.num_pins:
                in_flight[entry.label] = entry.num_pins
        return pb.GetWorkerStatusResponse(
            worker_id=options.worker_id, address=self.address, base_model=worker.base_model,
            capacities=pb.Capacities(
                max_loras=lora.max_loras, max_lora_rank=lora.max_lora_rank,
                max_cpu_loras=lora.max_cpu_loras, num_kv_blocks=stats.num_total_blocks,
                kv_block_size=engine.allocator.block_size, max_num_seqs=options.max_num_seqs,
                max_waiting=options.max_waiting, lora_slot_bytes=lora.bank.num_bytes_per_slot),
            load=pb.WorkerLoad(
                num_waiting=stats.num_waiting, num_running=stats.num_running,
                num_kv_blocks_used=stats.num_used_blocks, num_device_adapters=counts["device"],
                num_host_adapters=counts["host"], requests_per_adapter=in_flight),
            is_draining=worker.is_draining)

    def residency(self, entry: VersionEntry) -> pb.AdapterResidency:
        """The proto view of one version on this worker."""
        tier = self.worker.cache.tier_of(entry.digest) if entry.digest else None
        out = pb.AdapterResidency(
            adapter=entry.name, version=entry.version, digest=entry.digest,
            tier=_TIER[tier], state=_STATE[entry.state], error_message=entry.error,
            rank=entry.rank, size_bytes=entry.size_bytes,
            num_pinned_requests=entry.num_pins, is_default=self.worker.versions.is_default(entry),
            source_uri=entry.source_uri)
        if entry.last_used is not None:
            out.last_used.FromNanoseconds(int(entry.last_used * 1e9))
        return out


async def _checked_name(name: str, context) -> str:
    try:
        return parse_name(name)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"adapter: {exc}")
