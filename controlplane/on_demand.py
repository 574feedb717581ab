"""On-demand placement: a gateway asks for a routed version on a worker it can reach.

Gateways never load adapters on workers themselves. When no reachable worker serves a
version (none holds it yet, or its holder just died), a gateway calls
FleetService.PlaceAdapterVersion: the replica adds the worker to the version's stored
placement (so the reconciler keeps the copy instead of evicting it, and the routing table
lists it), then loads the version there and answers once the worker holds it. A load that
fails takes the worker out of the placement again, with the reason in its failures, so a
worker that cannot (or will not) load a version is never listed for it, whatever it
claims. Any replica may serve this; it writes placement through the reconciler's writer
(placement_writes.py), guarded by the key's revision, so it never overwrites a placement
another writer changed meanwhile, nor is overwritten.
"""

from __future__ import annotations

import grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.errors import Conflict, FailedPrecondition, NotFound, Unavailable
from lorafleet.controlplane.placement_writes import try_put_placement
from lorafleet.controlplane.schema import Snapshot
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.worker_client import WorkerClients, admin_address
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

NUM_WRITE_ATTEMPTS = 3
LOAD_TIMEOUT_SECONDS = 120.0


class OnDemandPlacer:
    """Records a worker in a version's placement, then loads the version there."""

    def __init__(self, store: EtcdStore, clients: WorkerClients):
        self.store = store
        self.clients = clients

    async def place(self, adapter: str, version: int, worker_id: str) -> fleet_pb.VersionPlacement:
        """The version's placement once `worker_id` is in it and holds the version."""
        for _ in range(NUM_WRITE_ATTEMPTS):
            snapshot = await self.store.snapshot()
            worker, placement = _checked(snapshot, adapter, version, worker_id)
            if await self._store(snapshot, placement):
                break
        else:
            raise Conflict(f"the placement of {adapter}@{version} kept changing; try again")
        try:
            await self._load(worker, snapshot.versions[(adapter, version)])
        except Unavailable as error:
            await self._unplace(adapter, version, worker_id, str(error))
            raise
        return placement

    async def _unplace(self, adapter: str, version: int, worker_id: str, reason: str) -> None:
        """Takes `worker_id` out of the version's placement, recording why."""
        for _ in range(NUM_WRITE_ATTEMPTS):
            snapshot = await self.store.snapshot()
            stored = snapshot.placements.get((adapter, version))
            if stored is None or worker_id not in stored.desired_worker_ids:
                return
            placement = fleet_pb.VersionPlacement()
            placement.CopyFrom(stored)
            placement.desired_worker_ids[:] = [w for w in stored.desired_worker_ids
                                               if w != worker_id]
            placement.failures[worker_id] = reason[:512]
            placement.placed_on_demand.pop(worker_id, None)
            if await self._store(snapshot, placement):
                return

    async def _store(self, snapshot: Snapshot, placement: fleet_pb.VersionPlacement) -> bool:
        return await try_put_placement(self.store, snapshot, placement)

    async def _load(self, worker: fleet_pb.Worker, version) -> None:
        request = worker_pb.LoadAdapterRequest(
            adapter=version.adapter, version=version.version, source_uri=version.source_uri,
            digest=version.digest, tier=worker_pb.TIER_HOST)
        try:
            # One try: the gateway that asked tries another worker at once on UNAVAILABLE.
            await self.clients.call(admin_address(worker), "LoadAdapter", request,
                                    timeout=LOAD_TIMEOUT_SECONDS, num_attempts=1)
        except grpc.aio.AioRpcError as error:
            raise Unavailable(f"{worker.worker_id} could not load {version.adapter}@"
                              f"{version.version}: {error.code().name}: {error.details()}") from None


def _checked(snapshot: Snapshot, adapter: str, version: int, worker_id: str
             ) -> tuple[fleet_pb.Worker, fleet_pb.VersionPlacement]:
    """The worker, and the placement with it added; NotFound / FailedPrecondition when the
    version is not routed or the worker cannot take it."""
    key = (adapter, version)
    if key not in snapshot.routed_weights():
        raise NotFound(f"{adapter}@{version} is not a routed version")
    worker = snapshot.workers.get(worker_id)
    if worker is None:
        raise NotFound(f"worker {worker_id!r} is not live")
    base_model = snapshot.adapters[adapter].base_model
    if worker.base_model.name != base_model:
        raise FailedPrecondition(f"worker {worker_id} serves {worker.base_model.name!r}, "
                                 f"not {adapter}'s base model {base_model!r}")
    if worker.is_draining:
        raise FailedPrecondition(f"worker {worker_id} is draining")
    placement = fleet_pb.VersionPlacement(adapter=adapter, version=version,
                                          digest=snapshot.versions[key].digest)
    stored = snapshot.placements.get(key)
    if stored is not None:
        placement.CopyFrom(stored)
    placement.desired_worker_ids[:] = sorted({*placement.desired_worker_ids, worker_id})
    placement.failures.pop(worker_id, None)
    placement.placed_on_demand[worker_id].GetCurrentTime()
    return worker, placement
