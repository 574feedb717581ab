"""FleetService: heartbeats, workers, placement view, routing-table stream, drain."""

from __future__ import annotations

import contextlib

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.controlplane.audit import audited
from lorafleet.controlplane.fleet import FleetRegistry
from lorafleet.controlplane.on_demand import OnDemandPlacer
from lorafleet.controlplane.routing import diff, holders, live_workers, routing_table
from lorafleet.controlplane.schema import Snapshot
from lorafleet.controlplane.store import EtcdStore
from lorafleet.runtime.error_status import stream_errors, unary_errors


def placement_view(snapshot: Snapshot, adapter: str = "") -> list[fleet_pb.VersionPlacement]:
    """Stored placements with the workers that report each version serving."""
    held = holders(snapshot)
    view = []
    for key, stored in sorted(snapshot.placements.items()):
        if adapter and key[0] != adapter:
            continue
        placement = fleet_pb.VersionPlacement()
        placement.CopyFrom(stored)
        placement.resident_worker_ids[:] = sorted(w.worker_id for w, _ in held.get(key, []))
        view.append(placement)
    return view


class FleetServicer(fleet_grpc.FleetServiceServicer):
    """Serves the fleet view over gRPC."""

    def __init__(self, store: EtcdStore, fleet: FleetRegistry, placer: OnDemandPlacer,
                 bindings=None):
        self.store = store
        self.fleet = fleet
        self.placer = placer
        self.bindings = bindings  # WorkerBindings: a worker id belongs to one key


    @unary_errors
    async def SendHeartbeat(self, request, context):
        """Registers or renews a worker (PERMISSION_DENIED for an id bound to another key)."""
        if self.bindings is not None and request.worker.worker_id:
            await self.bindings.check(request.worker.worker_id)
        is_draining = await self.fleet.heartbeat(request.worker)
        return fleet_pb.SendHeartbeatResponse(
            heartbeat_interval_seconds=self.fleet.heartbeat_interval_seconds,
            is_draining=is_draining,
        )

    @unary_errors
    async def ListWorkers(self, request, context):
        """Live workers in id order."""
        workers = await self.fleet.list_workers(request.base_model)
        return fleet_pb.ListWorkersResponse(workers=workers)

    @unary_errors
    async def GetPlacement(self, request, context):
        """Desired and actual holders of each placed version."""
        snapshot = await self.store.snapshot()
        return fleet_pb.GetPlacementResponse(placements=placement_view(snapshot, request.adapter))

    @unary_errors
    @audited("DrainWorker", lambda r: r.worker_id)
    async def DrainWorker(self, request, context):
        """Marks a worker as draining."""
        worker = await self.fleet.drain(request.worker_id)
        return fleet_pb.DrainWorkerResponse(worker=worker)

    @unary_errors
    @audited("PlaceAdapterVersion", lambda r: f"{r.adapter}@{r.version} on {r.worker_id}")
    async def PlaceAdapterVersion(self, request, context):
        """Adds a worker to a routed version's placement and loads it there."""
        placement = await self.placer.place(request.adapter, request.version, request.worker_id)
        return fleet_pb.PlaceAdapterVersionResponse(placement=placement)

    @stream_errors
    async def WatchRoutingTable(self, request, context):
        """A full routing table, then one message per change, each with its revision."""
        sent = None
        # aclosing: the etcd watch ends with the RPC, not whenever the collector runs.
        async with contextlib.aclosing(self.store.watch_snapshots()) as snapshots:
            async for snapshot in snapshots:
                table = routing_table(snapshot, request.base_model)
                workers = live_workers(snapshot, request.base_model)
                if sent is None:
                    yield fleet_pb.WatchRoutingTableResponse(
                        revision=snapshot.revision, is_snapshot=True,
                        routes=list(table.values()), workers=list(workers.values()),
                    )
                else:
                    message = routing_change(sent, (table, workers), snapshot.revision)
                    if message is not None:
                        yield message
                sent = (table, workers)


def routing_change(sent, current, revision: int) -> fleet_pb.WatchRoutingTableResponse | None:
    """The message that takes a gateway from `sent` to `current` ((routes, workers) pairs),
    or None when nothing it sees changed."""
    changed, removed = diff(sent[0], current[0])
    joined, left = diff(sent[1], current[1])
    if not (changed or removed or joined or left):
        return None
    return fleet_pb.WatchRoutingTableResponse(
        revision=revision, routes=changed, removed_adapters=removed,
        workers=joined, removed_worker_ids=left,
    )
