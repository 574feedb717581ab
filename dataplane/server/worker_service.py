"""WorkerService: adapter load/evict/list/validate and status, translated to `Worker`."""

from __future__ import annotations

from lorafleet.dataplane.server.errors import ShuttingDown
from lorafleet.dataplane.server.requests import BadRequest
from lorafleet.dataplane.server.versions import VersionEntry, VersionState
from lorafleet.dataplane.server.worker import Worker
from lorafleet.runtime.error_status import unary_errors
from lorafleet.runtime.names import InvalidName, check_adapter_name
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

    def __init__(self, worker: Worker, address: str, admin_address: str = ""):
        self.worker = worker
        self.address = address  # host:port others reach this worker at
        self.admin_address = admin_address  # where this servicer listens, when not `address`

    @unary_errors
    async def LoadAdapter(self, request: pb.LoadAdapterRequest, context):
        name = _checked_name(request.adapter)
        if not request.source_uri:
            raise BadRequest("source_uri: required")
        if self.worker.is_shutting_down:
            raise ShuttingDown("worker is shutting down")
        entry = await self.worker.load_adapter(
            name, request.version, request.source_uri, digest=request.digest,
            to_device=request.tier in (pb.TIER_UNSPECIFIED, pb.TIER_DEVICE),
            make_default=request.make_default)
        return pb.LoadAdapterResponse(adapter=self.residency(entry))

    @unary_errors
    async def EvictAdapter(self, request: pb.EvictAdapterRequest, context):
        name = _checked_name(request.adapter)
        keep_host = request.tier == pb.TIER_DEVICE
        entries = await self.worker.evict_adapter(name, request.version, keep_host=keep_host)
        return pb.EvictAdapterResponse(adapters=[self.residency(e) for e in entries])

    @unary_errors
    async def ListAdapters(self, request: pb.ListAdaptersRequest, context):
        listed = [self.residency(e) for e in self.worker.versions.entries()]
        if request.tier != pb.TIER_UNSPECIFIED:
            listed = [r for r in listed if r.tier == request.tier]
        return pb.ListAdaptersResponse(adapters=listed)

    @unary_errors
    async def ValidateAdapter(self, request: pb.ValidateAdapterRequest, context):
        if not request.source_uri:
            raise BadRequest("source_uri: required")
        report = await self.worker.validate_adapter(request.source_uri)
        return pb.ValidateAdapterResponse(
            is_valid=report.is_valid, reasons=report.reasons, digest=report.digest or "",
            rank=report.rank or 0, target_modules=report.target_modules,
            base_model=report.base_model_name_or_path or "", size_bytes=report.size_bytes or 0)

    @unary_errors
    async def GetWorkerStatus(self, request, context):
        return self.status()

    def status(self) -> pb.GetWorkerStatusResponse:
        """Identity, limits and load of this worker (load as the engine last published)."""
        worker, config = self.worker, self.worker.config
        snapshot, sizes = worker.snapshot, worker.sizes
        stats, counts = snapshot.stats, snapshot.adapter_counts
        in_flight: dict[str, int] = {}
        for entry in worker.versions.entries():
            if entry.num_pins:
                in_flight[entry.label] = entry.num_pins
        return pb.GetWorkerStatusResponse(
            worker_id=config.worker_id, address=self.address,
            admin_address=self.admin_address, base_model=worker.base_model,
            capacities=pb.Capacities(
                max_loras=sizes.max_loras, max_lora_rank=sizes.max_lora_rank,
                max_cpu_loras=sizes.max_cpu_loras, num_kv_blocks=sizes.num_kv_blocks,
                kv_block_size=sizes.kv_block_size, max_num_seqs=config.max_num_seqs,
                max_waiting=config.max_waiting, lora_slot_bytes=sizes.lora_slot_bytes),
            load=pb.WorkerLoad(
                num_waiting=stats.num_waiting, num_running=stats.num_running,
                num_kv_blocks_used=stats.num_used_blocks, num_device_adapters=counts["device"],
                num_host_adapters=counts["host"], requests_per_adapter=in_flight,
                num_kv_blocks_cached=stats.num_cached_blocks),
            is_draining=worker.is_shutting_down)

    def residency(self, entry: VersionEntry) -> pb.AdapterResidency:
        """The proto view of one version on this worker."""
        tier = self.worker.snapshot.tier_of(entry.digest) if entry.digest else None
        out = pb.AdapterResidency(
            adapter=entry.name, version=entry.version, digest=entry.digest,
            tier=_TIER[tier], state=_STATE[entry.state], error_message=entry.error,
            rank=entry.rank, size_bytes=entry.size_bytes,
            num_pinned_requests=entry.num_pins, is_default=self.worker.versions.is_default(entry),
            source_uri=entry.source_uri)
        if entry.last_used is not None:
            out.last_used.FromNanoseconds(int(entry.last_used * 1e9))
        return out


def _checked_name(name: str) -> str:
    try:
        return check_adapter_name(name)
    except InvalidName as exc:
        raise BadRequest(f"adapter: {exc}") from exc
