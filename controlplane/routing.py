"""The routing table gateways follow: per adapter, its routed versions and their holders.

Built from a snapshot of etcd (rollouts, versions, workers' reported residency), so it
is exactly as fresh as the snapshot's revision. A worker is listed for a version only
when it reports the version READY in its device or host tier; device holders come first,
and draining workers last (they still finish what they run).
"""

from __future__ import annotations

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.schema import Snapshot, VersionKey
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

SERVING_TIERS = (worker_pb.TIER_DEVICE, worker_pb.TIER_HOST)


def holders(snapshot: Snapshot) -> dict[VersionKey, list[tuple[fleet_pb.Worker, int]]]:
    """(worker, tier) pairs per version, for workers that report its weights (by digest)
    READY in a serving tier."""
    found: dict[VersionKey, list[tuple[fleet_pb.Worker, int]]] = {}
    for worker in snapshot.workers.values():
        for residency in worker.adapters:
            key = (residency.adapter, residency.version)
            version = snapshot.versions.get(key)
            if (
                version is not None
                and residency.digest == version.digest  # not older weights under the name
                and residency.state == worker_pb.LOAD_STATE_READY
                and residency.tier in SERVING_TIERS
            ):
                found.setdefault(key, []).append((worker, residency.tier))
    return found


def routing_table(snapshot: Snapshot, base_model: str = "") -> dict[str, fleet_pb.AdapterRoute]:
    """Routes of every adapter with traffic, optionally only of one base model."""
    held = holders(snapshot)
    table = {}
    for name, rollout in sorted(snapshot.rollouts.items()):
        adapter = snapshot.adapters.get(name)
        if adapter is None or (base_model and adapter.base_model != base_model):
            continue
        route = fleet_pb.AdapterRoute(adapter=name, base_model=adapter.base_model)
        for share in rollout.weights:
            version = snapshot.versions.get((name, share.version))
            if share.weight == 0 or version is None:
                continue
            ranked = sorted(
                held.get((name, share.version), []),
                key=lambda pair: (pair[0].is_draining, pair[1], pair[0].worker_id),
            )
            route.versions.add(
                version=share.version, digest=version.digest, weight=share.weight,
                workers=[
                    fleet_pb.WorkerEndpoint(worker_id=w.worker_id, address=w.address, tier=tier)
                    for w, tier in ranked
                ],
            )
        if route.versions:
            table[name] = route
    return table


def diff(
    old: dict[str, fleet_pb.AdapterRoute], new: dict[str, fleet_pb.AdapterRoute]
) -> tuple[list[fleet_pb.AdapterRoute], list[str]]:
    """(routes added or changed, adapters removed) going from `old` to `new`."""
    changed = [route for name, route in sorted(new.items()) if old.get(name) != route]
    removed = sorted(set(old) - set(new))
    return changed, removed
