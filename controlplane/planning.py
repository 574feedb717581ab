"""From a snapshot to decisions: the desired placement, then the loads and evictions.

Pure functions of their inputs, so the reconciler's choices can be tested without etcd
or workers. Evictions are planned only where they are safe: a routed version is evicted
from a worker only once another worker it is placed on reports it READY, so a routed
version never drops to zero replicas. A routed version that no placed worker serves yet
keeps the workers already serving it (e.g. a gateway's on-demand load) instead of being
loaded afresh elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.placement import PlacementPolicy, VersionDemand, WorkerCapacity, place
from lorafleet.controlplane.routing import SERVING_TIERS, holders
from lorafleet.controlplane.schema import Snapshot, VersionKey
from lorafleet.controlplane.worker_client import admin_address
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

Residency = Mapping[str, Mapping[VersionKey, worker_pb.AdapterResidency]]


def capacity(worker: fleet_pb.Worker) -> int:
    """Versions a worker may hold: its host tier, or its device slots without one."""
    return worker.capacities.max_cpu_loras or worker.capacities.max_loras


def demand_by_version(snapshot: Snapshot) -> dict[VersionKey, float]:
    """Requests in flight per version, summed over workers ("tenant/name@N" keys)."""
    demand: dict[VersionKey, float] = {}
    for worker in snapshot.workers.values():
        for label, count in worker.load.requests_per_adapter.items():
            name, _, number = label.rpartition("@")
            if name and number.isdigit():
                key = (name, int(number))
                demand[key] = demand.get(key, 0.0) + count
    return demand


def desired_placement(snapshot: Snapshot, policy: PlacementPolicy) -> dict[VersionKey, tuple]:
    """Where every routed version should be, sticky to the placement stored in etcd."""
    demand = demand_by_version(snapshot)
    versions = []
    for key in snapshot.routed_weights():
        adapter = snapshot.adapters[key[0]]
        stored = snapshot.placements.get(key)
        versions.append(VersionDemand(
            adapter=key[0], version=key[1], base_model=adapter.base_model,
            min_replicas=adapter.min_replicas, max_replicas=adapter.max_replicas or None,
            demand=demand.get(key, 0.0),
            excluded_worker_ids=frozenset(stored.failures) if stored else frozenset(),
        ))
    workers = [
        WorkerCapacity(w.worker_id, w.base_model.name, capacity(w), w.is_draining)
        for w in snapshot.workers.values()
    ]
    return place(versions, workers, current_placement(snapshot), policy)


def current_placement(snapshot: Snapshot) -> dict[VersionKey, tuple[str, ...]]:
    """The stored placement, except for a routed version that none of its stored workers
    serves (none stored yet, gone, draining, or still loading) while other live workers do:
    those count instead. So a copy a gateway loaded on demand, already taking traffic,
    becomes the placement rather than being evicted for a fresh load elsewhere."""
    current = {key: tuple(p.desired_worker_ids) for key, p in snapshot.placements.items()}
    held = holders(snapshot)
    for key in snapshot.routed_weights():
        serving = sorted(w.worker_id for w, _ in held.get(key, []) if not w.is_draining)
        if serving and not set(serving) & set(current.get(key, ())):
            current[key] = tuple(serving)
    return current


@dataclasses.dataclass(frozen=True)
class Load:
    """Make `version` of `adapter` resident on a worker."""

    worker_id: str
    address: str  # of the worker's WorkerService
    adapter: str
    version: int
    digest: str
    source_uri: str


@dataclasses.dataclass(frozen=True)
class Eviction:
    """Drop `version` of `adapter` from a worker."""

    worker_id: str
    address: str  # of the worker's WorkerService
    adapter: str
    version: int


def is_serving(residency: worker_pb.AdapterResidency | None, digest: str) -> bool:
    """Whether a reported residency holds weights with `digest`, ready to serve now."""
    return (
        residency is not None
        and residency.state == worker_pb.LOAD_STATE_READY
        and residency.tier in SERVING_TIERS
        and residency.digest == digest
    )


def is_stale(residency: worker_pb.AdapterResidency, snapshot: Snapshot) -> bool:
    """Whether a worker holds other weights under this name@version than the registry
    knows (the adapter was deleted and registered again), or a version it no longer has."""
    version = snapshot.versions.get((residency.adapter, residency.version))
    return version is None or bool(residency.digest and residency.digest != version.digest)


def plan_loads(snapshot: Snapshot, desired, residency: Residency) -> list[Load]:
    """Loads for every desired (version, worker) the worker does not hold or load yet."""
    loads = []
    for key, worker_ids in sorted(desired.items()):
        version = snapshot.versions[key]
        for worker_id in worker_ids:
            held = residency.get(worker_id, {}).get(key)
            if held is not None and (
                is_serving(held, version.digest)
                or held.state == worker_pb.LOAD_STATE_LOADING
                or is_stale(held, snapshot)  # evicted first; the load follows next pass
            ):
                continue
            worker = snapshot.workers[worker_id]
            loads.append(Load(worker_id, admin_address(worker), key[0], key[1], version.digest,
                              version.source_uri))
    return loads


def plan_evictions(snapshot: Snapshot, desired, residency: Residency) -> list[Eviction]:
    """Evictions of versions a worker holds but should not, where that is safe."""
    routed = snapshot.routed_weights()
    evictions = []
    for worker_id, held in sorted(residency.items()):
        worker = snapshot.workers.get(worker_id)
        if worker is None:
            continue
        for key, entry in sorted(held.items()):
            if not is_stale(entry, snapshot) and not _can_drop(snapshot, key, worker_id,
                                                              desired, residency, routed):
                continue
            evictions.append(Eviction(worker_id, admin_address(worker), key[0], key[1]))
    return evictions


def _can_drop(snapshot, key, worker_id, desired, residency, routed) -> bool:
    placed_on = desired.get(key, ())
    if worker_id in placed_on:
        return False
    if key not in routed:
        return True
    # Routed: only once another placed worker serves these weights, so it never has zero.
    digest = snapshot.versions[key].digest
    return any(is_serving(residency.get(w, {}).get(key), digest) for w in placed_on)
