"""The routing table gateways follow: per adapter, its routed versions and their holders,
plus the live workers (so a version no worker holds yet can be loaded on demand).

Built from a snapshot of etcd (rollouts, versions, placements, workers' reported
residency), so it is exactly as fresh as the snapshot's revision. A worker is listed for a
version only when the version's placement has it (the control plane put it there, or a
gateway's on-demand request did) and it reports the version's weights (by digest) READY in
its device or host tier: what a worker claims beyond its placement is not believed. Device
holders come first, and draining workers last (they still finish what they run).
"""

from __future__ import annotations

from typing import TypeVar

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.schema import Snapshot, VersionKey
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

SERVING_TIERS = (worker_pb.TIER_DEVICE, worker_pb.TIER_HOST)
Message = TypeVar("Message", fleet_pb.AdapterRoute, fleet_pb.WorkerRoute)


def holders(snapshot: Snapshot) -> dict[VersionKey, list[tuple[fleet_pb.Worker, int]]]:
    """(worker, tier) pairs per version, for workers placed to hold it that report its
    weights (by digest) READY in a serving tier."""
    found: dict[VersionKey, list[tuple[fleet_pb.Worker, int]]] = {}
    for worker in snapshot.workers.values():
        for residency in worker.adapters:
            key = (residency.adapter, residency.version)
            version = snapshot.versions.get(key)
            placement = snapshot.placements.get(key)
            if (
                version is not None
                and placement is not None
                and worker.worker_id in placement.desired_worker_ids
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
            placement = snapshot.placements.get((name, share.version))
            route.versions.add(
                version=share.version, digest=version.digest, weight=share.weight,
                workers=[
                    fleet_pb.WorkerEndpoint(worker_id=w.worker_id, address=w.address, tier=tier)
                    for w, tier in ranked
                ],
                source_uri=version.source_uri,
                placed_worker_ids=placement.desired_worker_ids if placement else [],
            )
        if route.versions:
            table[name] = route
    return table


def live_workers(snapshot: Snapshot, base_model: str = "") -> dict[str, fleet_pb.WorkerRoute]:
    """Every live worker by id (optionally only of one base model), as gateways see it.

    Only fields that change rarely, so heartbeats alone never produce a routing message."""
    return {
        worker_id: fleet_pb.WorkerRoute(
            worker_id=worker_id, address=worker.address, base_model=worker.base_model.name,
            is_draining=worker.is_draining, admin_address=worker.admin_address,
        )
        for worker_id, worker in sorted(snapshot.workers.items())
        if not base_model or worker.base_model.name == base_model
    }


def diff(old: dict[str, Message], new: dict[str, Message]) -> tuple[list[Message], list[str]]:
    """(entries added or changed, names removed) going from `old` to `new`: adapter routes
    or live workers."""
    changed = [route for name, route in sorted(new.items()) if old.get(name) != route]
    removed = sorted(set(old) - set(new))
    return changed, removed
