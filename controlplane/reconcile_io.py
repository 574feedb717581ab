"""The reconciler's reads and writes: worker residency, placement keys, action backoff."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.errors import NotLeader
from lorafleet.controlplane.planning import Residency
from lorafleet.controlplane.schema import Snapshot, VersionKey
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.transactions import Condition, Delete, Put, UnchangedSince
from lorafleet.controlplane.worker_client import WorkerClients, admin_address
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

log = logging.getLogger(__name__)

# etcd refuses transactions of more than 128 operations by default.
MAX_OPS_PER_TXN = 100
LIST_TIMEOUT_SECONDS = 2.0


class ActionBackoff:
    """Per-action exponential backoff: identical actions collapse, failures wait longer."""

    def __init__(self, first_delay: float = 0.2, max_delay: float = 10.0):
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._next: dict[object, tuple[float, float]] = {}

    def is_due(self, action) -> bool:
        """Whether `action` may run now."""
        entry = self._next.get(action)
        return entry is None or time.monotonic() >= entry[0]

    def failed(self, action) -> None:
        """Doubles the wait before `action` runs again."""
        _, delay = self._next.get(action, (0.0, self.first_delay / 2))
        delay = min(delay * 2, self.max_delay)
        self._next[action] = (time.monotonic() + delay, delay)

    def succeeded(self, action) -> None:
        """Forgets the action's failures."""
        self._next.pop(action, None)


async def fetch_residency(clients: WorkerClients, snapshot: Snapshot) -> Residency:
    """What each live worker holds, asked fresh; its last heartbeat when it does not answer."""
    workers = list(snapshot.workers.values())
    answers = await asyncio.gather(
        *(_list_adapters(clients, w) for w in workers), return_exceptions=False
    )
    return {
        worker.worker_id: {(r.adapter, r.version): r for r in listed}
        for worker, listed in zip(workers, answers, strict=True)
    }


async def _list_adapters(clients: WorkerClients, worker: fleet_pb.Worker):
    try:
        reply = await clients.stub(admin_address(worker)).ListAdapters(
            worker_pb.ListAdaptersRequest(), timeout=LIST_TIMEOUT_SECONDS,
            metadata=clients.metadata,
        )
        return list(reply.adapters)
    except grpc.aio.AioRpcError as error:
        log.info("worker %s did not list its adapters (%s); using its last heartbeat",
                 worker.worker_id, error.code().name)
        return list(worker.adapters)


def placement_changes(snapshot: Snapshot, desired) -> tuple[dict[VersionKey, fleet_pb.VersionPlacement], list[VersionKey]]:
    """(placements to write, placements to delete) to make etcd match `desired`."""
    to_write = {}
    for key, worker_ids in desired.items():
        stored = snapshot.placements.get(key)
        placement = fleet_pb.VersionPlacement(
            adapter=key[0], version=key[1], digest=snapshot.versions[key].digest,
            desired_worker_ids=worker_ids,
        )
        if stored is not None:  # keep failures of workers still alive
            for worker_id, reason in stored.failures.items():
                if worker_id in snapshot.workers:
                    placement.failures[worker_id] = reason
            for worker_id, since in stored.placed_on_demand.items():
                if worker_id in worker_ids:
                    placement.placed_on_demand[worker_id].CopyFrom(since)
        if placement != stored:
            to_write[key] = placement
    to_delete = sorted(set(snapshot.placements) - set(desired))
    return to_write, to_delete


async def write_placement(store: EtcdStore, fence: Condition, snapshot: Snapshot,
                          desired) -> bool:
    """Stores the desired placement (changed keys only), fenced, and only over keys nobody
    changed since `snapshot` (a gateway's on-demand placement, controlplane/on_demand.py);
    returns whether it wrote or found such a change (either way, worth another pass)."""
    to_write, to_delete = placement_changes(snapshot, desired)
    changes: list[Put | Delete] = [
        *(Put(store.keys.placement(*k), p) for k, p in sorted(to_write.items())),
        *(Delete(store.keys.placement(*k)) for k in to_delete),
    ]
    for start in range(0, len(changes), MAX_OPS_PER_TXN):
        batch = changes[start:start + MAX_OPS_PER_TXN]
        unchanged = [UnchangedSince(change.key, snapshot.revision) for change in batch]
        if await store.commit([fence, *unchanged], batch):
            continue
        if not await store.commit([fence], []):
            raise NotLeader("no longer the leader: placement not written")
        return True  # another writer changed a placement first: the next pass redoes it
    return bool(changes)
