"""Placement: which workers should hold which adapter versions. A pure function.

    place(versions, workers, current, policy) -> {(adapter, version): (worker_id, ...)}

Capacity: a worker holds at most `capacity` versions, and the control plane fills it
from `Capacities.max_cpu_loras` (the host tier). Device slots (`max_loras`) bound the
distinct adapters of one engine step, not residency: the worker promotes host copies
into device slots per step on its own, so bounding placement by device slots would
waste most of a worker. A worker that reports no host tier falls back to `max_loras`.

Properties (each covered by a table test):
- every version gets max(1, min_replicas) workers of its base model when enough exist,
  and more as demand grows (one replica per `demand_per_replica` requests in flight),
  up to max_replicas;
- a worker never gets more versions than its capacity; draining workers get none;
- coverage first: when capacity is scarce, every version gets its minimum before any
  version gets demand-driven extras (hottest versions first within each round);
- sticky: versions keep the workers they have before any new worker is chosen, so a
  small change in inputs moves few; a worker with traffic on a version keeps it even
  beyond the replicas wanted (busy workers first);
- replicas spread: a new replica goes to the least-filled eligible worker;
- deterministic: ties break on version key and worker id, never on input order.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterable, Mapping

VersionKey = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class VersionDemand:
    """A version that receives traffic, with its replica bounds and current demand."""

    adapter: str
    version: int
    base_model: str
    min_replicas: int = 1
    max_replicas: int | None = None
    demand: float = 0.0
    excluded_worker_ids: frozenset[str] = frozenset()
    # Workers holding it with traffic now: kept whatever the replica count says.
    busy_worker_ids: frozenset[str] = frozenset()

    @property
    def key(self) -> VersionKey:
        """(adapter, version): the version's identity in placement maps."""
        return (self.adapter, self.version)


@dataclasses.dataclass(frozen=True)
class WorkerCapacity:
    """A live worker as placement sees it."""

    worker_id: str
    base_model: str
    capacity: int
    is_draining: bool = False


@dataclasses.dataclass(frozen=True)
class PlacementPolicy:
    """Knobs of placement."""

    # In-flight requests one replica is expected to absorb before another is added.
    demand_per_replica: float = 4.0

    def __post_init__(self) -> None:
        if self.demand_per_replica <= 0:
            raise ValueError(f"demand_per_replica must be > 0, got {self.demand_per_replica}")


def num_replicas_wanted(version: VersionDemand, num_candidates: int, policy: PlacementPolicy) -> int:
    """Replicas a version should have: demand-driven, within its bounds and the fleet."""
    wanted = max(1, version.min_replicas, math.ceil(version.demand / policy.demand_per_replica))
    if version.max_replicas:
        wanted = min(wanted, version.max_replicas)
    return min(wanted, num_candidates)


def place(
    versions: Iterable[VersionDemand],
    workers: Iterable[WorkerCapacity],
    current: Mapping[VersionKey, Iterable[str]],
    policy: PlacementPolicy | None = None,
) -> dict[VersionKey, tuple[str, ...]]:
    """Desired placement: for each version, the ids of the workers that should hold it.

    `current` is the placement in effect (entries for unknown versions or workers are
    ignored). Versions that fit nowhere map to an empty tuple.
    """
    policy = policy or PlacementPolicy()
    state = _FleetState(workers)
    ordered = sorted(versions, key=lambda v: (-v.demand, v.adapter, v.version))
    wanted = {v.key: num_replicas_wanted(v, state.num_candidates(v), policy) for v in ordered}
    chosen: dict[VersionKey, list[str]] = {v.key: [] for v in ordered}
    # Coverage first: every version's minimum before any version's demand-driven extras,
    # so when capacity is scarce a cold version still gets served before a hot one grows.
    minimums = {v.key: min(wanted[v.key], max(1, v.min_replicas)) for v in ordered}
    for limits in (minimums, wanted):
        for version in ordered:
            _keep_current(version, current.get(version.key, ()), limits, state, chosen)
        for version in ordered:
            missing = limits[version.key] - len(chosen[version.key])
            if missing > 0:
                chosen[version.key] += state.take_least_filled(version, chosen[version.key], missing)
    return {key: tuple(sorted(ids)) for key, ids in sorted(chosen.items())}


def count_moves(
    before: Mapping[VersionKey, Iterable[str]], after: Mapping[VersionKey, Iterable[str]]
) -> int:
    """Replica additions plus removals needed to go from `before` to `after`."""
    moves = 0
    for key in set(before) | set(after):
        old, new = set(before.get(key, ())), set(after.get(key, ()))
        moves += len(old ^ new)
    return moves


def _keep_current(
    version: VersionDemand,
    current_ids: Iterable[str],
    limits: Mapping[VersionKey, int],
    state: _FleetState,
    chosen: dict[VersionKey, list[str]],
) -> None:
    kept = chosen[version.key]
    busy = version.busy_worker_ids
    for worker_id in sorted(set(current_ids), key=lambda w: (w not in busy, w)):
        if len(kept) >= limits[version.key] and worker_id not in busy:
            return
        if worker_id not in kept and state.can_hold(version, worker_id):
            state.assign(worker_id)
            kept.append(worker_id)


class _FleetState:
    """Free capacity per worker and, per base model, a heap of workers by fill ratio.

    Heap entries go stale when a worker's fill changes; stale ones are skipped on pop
    (lazy deletion keeps each pick O(log workers)).
    """

    def __init__(self, workers: Iterable[WorkerCapacity]):
        self.workers = {
            w.worker_id: w for w in workers if not w.is_draining and w.capacity > 0
        }
        self.used = dict.fromkeys(self.workers, 0)
        self.heaps: dict[str, list[tuple[float, str]]] = {}
        self.num_per_model: dict[str, int] = {}
        for worker in sorted(self.workers.values(), key=lambda w: w.worker_id):
            self.heaps.setdefault(worker.base_model, []).append((0.0, worker.worker_id))
            self.num_per_model[worker.base_model] = self.num_per_model.get(worker.base_model, 0) + 1

    def num_candidates(self, version: VersionDemand) -> int:
        """Workers that could hold `version`, ignoring how full they are."""
        excluded = sum(
            1 for w in version.excluded_worker_ids
            if w in self.workers and self.workers[w].base_model == version.base_model
        )
        return self.num_per_model.get(version.base_model, 0) - excluded

    def can_hold(self, version: VersionDemand, worker_id: str) -> bool:
        """Whether `worker_id` is live, of the version's base model and has a free slot."""
        worker = self.workers.get(worker_id)
        return (
            worker is not None
            and worker.base_model == version.base_model
            and worker_id not in version.excluded_worker_ids
            and self.used[worker_id] < worker.capacity
        )

    def assign(self, worker_id: str) -> None:
        """Takes one slot of `worker_id` and re-queues it at its new fill ratio."""
        self.used[worker_id] += 1
        worker = self.workers[worker_id]
        if self.used[worker_id] < worker.capacity:
            heapq.heappush(self.heaps[worker.base_model], (self._fill(worker_id), worker_id))

    def take_least_filled(
        self, version: VersionDemand, holders: list[str], count: int
    ) -> list[str]:
        """Up to `count` new workers for `version`, least filled first."""
        heap = self.heaps.get(version.base_model, [])
        picked: list[str] = []
        skipped: list[tuple[float, str]] = []
        while heap and len(picked) < count:
            fill, worker_id = heapq.heappop(heap)
            if fill != self._fill(worker_id):
                continue  # stale: a newer entry for this worker is queued (or it is full)
            if worker_id in holders or not self.can_hold(version, worker_id):
                skipped.append((fill, worker_id))
                continue
            picked.append(worker_id)
        for entry in skipped:
            heapq.heappush(heap, entry)
        for worker_id in picked:
            self.assign(worker_id)
        return picked

    def _fill(self, worker_id: str) -> float:
        return self.used[worker_id] / self.workers[worker_id].capacity
