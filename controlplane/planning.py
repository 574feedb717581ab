"""From a snapshot to decisions: the desired placement, then the loads and evictions.

Pure functions of their inputs, so the reconciler's choices can be tested without etcd
or workers. The stored placement is the authority on who holds what: a copy a worker
reports outside it is not believed (and is evicted), and a gateway's on-demand load is
recorded in it first (controlplane/on_demand.py). A placed worker with traffic on a
version keeps it, whatever demand says, so an on-demand copy is never evicted under its
requests. Evictions are planned only where they are safe: a routed version is evicted from
a worker only once another worker it is placed on reports it READY, so a routed version
never drops to zero replicas. What a worker holds is read from one record, its heartbeat
(`reported_residency`), the record the routing table reads too: an eviction waits until
gateways are shown another holder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.placement import PlacementPolicy, VersionDemand, WorkerCapacity, place
from lorafleet.controlplane.routing import SERVING_TIERS
from lorafleet.controlplane.schema import Snapshot, VersionKey
from lorafleet.controlplane.worker_client import admin_address
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

Residency = Mapping[str, Mapping[VersionKey, worker_pb.AdapterResidency]]
# A copy used this recently (before its worker's last heartbeat) still has traffic.
TRAFFIC_GRACE_SECONDS = 30.0


def reported_residency(snapshot: Snapshot) -> Residency:
    """What each live worker holds, as its last heartbeat reported it: the one record of
    residency, read by the reconciler's plans as by the routing table."""
    return {worker_id: {(r.adapter, r.version): r for r in worker.adapters}
            for worker_id, worker in snapshot.workers.items()}


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
            busy_worker_ids=busy_workers(snapshot, key),
        ))
    workers = [
        WorkerCapacity(w.worker_id, w.base_model.name, capacity(w), w.is_draining)
        for w in snapshot.workers.values()
    ]
    return place(versions, workers, current_placement(snapshot), policy)


def current_placement(snapshot: Snapshot) -> dict[VersionKey, tuple[str, ...]]:
    """The stored placement: what workers report holding beyond it does not count."""
    return {key: tuple(p.desired_worker_ids) for key, p in snapshot.placements.items()}


def busy_workers(snapshot: Snapshot, key: VersionKey) -> frozenset[str]:
    """Placed workers with traffic on the version as their last heartbeat shows it
    (requests in flight or pinned, a use within TRAFFIC_GRACE_SECONDS), or placed there on
    demand less than that before it (the traffic that asked for it is on its way)."""
    placement = snapshot.placements.get(key)
    label = f"{key[0]}@{key[1]}"
    busy = set()
    for worker_id in placement.desired_worker_ids if placement else ():
        worker = snapshot.workers.get(worker_id)
        if worker is None:
            continue
        residency = next((r for r in worker.adapters
                          if (r.adapter, r.version) == key), None)
        used = residency.last_used if residency is not None and residency.HasField(
            "last_used") else None
        if (worker.load.requests_per_adapter.get(label)
                or (residency is not None and residency.num_pinned_requests)
                or _is_recent(worker, used)
                or _is_recent(worker, placement.placed_on_demand.get(worker_id))):
            busy.add(worker_id)
    return frozenset(busy)


def _is_recent(worker: fleet_pb.Worker, moment) -> bool:
    """Whether `moment` is at most TRAFFIC_GRACE_SECONDS before the worker's last heartbeat."""
    if moment is None or not worker.HasField("last_heartbeat_time"):
        return False
    age = worker.last_heartbeat_time.ToNanoseconds() - moment.ToNanoseconds()
    return age <= TRAFFIC_GRACE_SECONDS * 1e9


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
