"""The reconciler's writes and pacing: placement keys, action backoff."""

from __future__ import annotations

import time

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.errors import NotLeader
from lorafleet.controlplane.schema import Snapshot, VersionKey
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.transactions import Condition, Delete, Put, UnchangedSince

# etcd refuses transactions of more than 128 operations by default.
MAX_OPS_PER_TXN = 100


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
