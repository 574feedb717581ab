"""Every write of a placement key: the leader's desired placement, a load a worker
refused, a gateway's on-demand placement (controlplane/on_demand.py, on any replica).

One rule for every writer: a key is written only if nobody changed it after the snapshot
its writer decided on (`UnchangedSince`), so the reconciler and on-demand placement never
overwrite each other; whoever loses reads again and decides again. The leader's writes
are also fenced by its leadership.
"""

from __future__ import annotations

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.errors import NotLeader
from lorafleet.controlplane.schema import Snapshot, VersionKey
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.transactions import Condition, Delete, Put, UnchangedSince

# etcd refuses transactions of more than 128 operations by default.
MAX_OPS_PER_TXN = 100


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


async def try_put_placement(store: EtcdStore, snapshot: Snapshot,
                            placement: fleet_pb.VersionPlacement,
                            fence: Condition | None = None) -> bool:
    """Stores one version's placement if its key is as `snapshot` saw it (and `fence`
    holds); returns whether it did."""
    key = store.keys.placement(placement.adapter, placement.version)
    guards = [UnchangedSince(key, snapshot.revision), *([fence] if fence else [])]
    return await store.commit(guards, [Put(key, placement)])


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
