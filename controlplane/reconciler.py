"""The reconciler: level-based, run only by the elected leader.

Each pass reads everything fresh in one etcd range read, workers' residency included (as
their heartbeats report it: the one record of residency, which gateways' routes are built
from too), validates pending versions, computes and stores the desired placement, pushes
`LoadAdapter` where a placed version is missing, then `EvictAdapter` where a version is no
longer placed and that is safe (see planning.py). A pass runs on every etcd change that
can alter a decision (watched: a heartbeat that reports a load or eviction done is one)
and at least every `resync_seconds`, so a missed event is caught by the next resync.
Failed calls back off per (worker, version); a version that a worker refuses is recorded
in its placement's `failures` and placed elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time

import grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.election import LeaderElection
from lorafleet.controlplane.metrics import ControlPlaneMetrics
from lorafleet.controlplane.placement import PlacementPolicy
from lorafleet.controlplane.placement_writes import try_put_placement, write_placement
from lorafleet.controlplane.planning import (
    Eviction,
    Load,
    desired_placement,
    plan_evictions,
    plan_loads,
    reported_residency,
)
from lorafleet.controlplane.schema import Snapshot
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.validation import VersionValidator
from lorafleet.controlplane.worker_client import TRANSIENT_CODES, WorkerClients
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReconcilerConfig:
    """Timing and policy of the reconciler."""

    resync_seconds: float = 10.0
    min_pass_interval_seconds: float = 0.1
    load_timeout_seconds: float = 60.0
    max_concurrent_calls: int = 16
    policy: PlacementPolicy = PlacementPolicy()


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


class Reconciler:
    """Drives workers towards the desired placement; one instance per leadership term."""

    def __init__(self, store: EtcdStore, clients: WorkerClients, validator: VersionValidator,
                 election: LeaderElection, config: ReconcilerConfig | None = None,
                 metrics: ControlPlaneMetrics | None = None):
        self.store = store
        self.metrics = metrics or store.metrics
        self.clients = clients
        self.validator = validator
        self.election = election
        self.config = config or ReconcilerConfig()
        self.backoff = ActionBackoff()
        self._calls = asyncio.Semaphore(self.config.max_concurrent_calls)

    async def run(self) -> None:
        """Reconciles until cancelled: on every etcd change and every resync period."""
        wake = asyncio.Event()
        watcher = asyncio.create_task(self._wake_on_changes(wake))
        try:
            while True:
                wake.clear()
                try:
                    if await self.reconcile_once():
                        wake.set()  # progress made: look again right away
                except Exception:  # a pass must never end the reconciler
                    log.exception("reconcile pass failed; retrying after the resync period")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.config.resync_seconds)
                await asyncio.sleep(self.config.min_pass_interval_seconds)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _wake_on_changes(self, wake: asyncio.Event) -> None:
        # Heartbeats rewrite worker keys every few seconds; only changes that can alter a
        # decision wake a pass early. Load drift is picked up by the periodic resync.
        last = None
        async with contextlib.aclosing(self.store.watch_snapshots()) as snapshots:
            async for snapshot in snapshots:
                shape = decision_fingerprint(snapshot)
                if shape != last:
                    wake.set()
                    last = shape

    async def reconcile_once(self) -> bool:
        """One level-based pass; returns whether it wrote placement or found another
        writer's (worth a re-pass). Its loads and evictions wake the next pass through
        the heartbeats that report them done; a pass before those would repeat them."""
        with self.metrics.reconcile_pass():
            return await self._reconcile()

    async def _reconcile(self) -> bool:
        snapshot = await self.store.snapshot()
        if await self.validator.validate_pending(snapshot):
            snapshot = await self.store.snapshot()
        desired = desired_placement(snapshot, self.config.policy)
        wrote = await write_placement(self.store, self.election.fence(), snapshot, desired)
        residency = reported_residency(snapshot)
        planned_loads = plan_loads(snapshot, desired, residency)
        planned_evictions = plan_evictions(snapshot, desired, residency)
        loads = [a for a in planned_loads if self.backoff.is_due(a)]
        evictions = [a for a in planned_evictions if self.backoff.is_due(a)]
        results = await asyncio.gather(
            *(self._load(snapshot, a) for a in loads), *(self._evict(a) for a in evictions)
        )
        # Pending: planned, not done (waiting for backoff, or deferred just now).
        self.metrics.record_fleet(snapshot, desired, {
            "load": len(planned_loads) - sum(results[:len(loads)]),
            "evict": len(planned_evictions) - sum(results[len(loads):])})
        return wrote

    async def _load(self, snapshot: Snapshot, load: Load) -> bool:
        request = worker_pb.LoadAdapterRequest(
            adapter=load.adapter, version=load.version, source_uri=load.source_uri,
            digest=load.digest, tier=worker_pb.TIER_HOST,
        )
        try:
            async with self._calls:
                await self.clients.call(load.address, "LoadAdapter", request,
                                        timeout=self.config.load_timeout_seconds)
        except grpc.aio.AioRpcError as error:
            if error.code() in TRANSIENT_CODES:
                self.metrics.record_action("load", "deferred")
                self.backoff.failed(load)
                log.info("load %s@%d on %s deferred: %s", load.adapter, load.version,
                         load.worker_id, error.details())
                return False
            self.metrics.record_action("load", "refused")
            await self._record_failure(snapshot, load, error)
            return True
        self.metrics.record_action("load", "ok")
        self.backoff.succeeded(load)
        return True

    async def _record_failure(self, snapshot: Snapshot, load: Load, error) -> None:
        """Records the refusal in the version's placement, unless that placement changed
        after `snapshot` (this pass wrote it, or a gateway's on-demand placement did): the
        next pass, which sees the change, meets the refusal again and records it then."""
        log.warning("load %s@%d on %s failed: %s", load.adapter, load.version, load.worker_id,
                    error.details())
        stored = snapshot.placements.get((load.adapter, load.version))
        if stored is None:
            return
        placement = fleet_pb.VersionPlacement()
        placement.CopyFrom(stored)
        placement.failures[load.worker_id] = f"{error.code().name}: {error.details()}"
        await try_put_placement(self.store, snapshot, placement, self.election.fence())

    async def _evict(self, eviction: Eviction) -> bool:
        request = worker_pb.EvictAdapterRequest(
            adapter=eviction.adapter, version=eviction.version, tier=worker_pb.TIER_HOST
        )
        try:
            async with self._calls:
                await self.clients.call(eviction.address, "EvictAdapter", request)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                self.metrics.record_action("evict", "deferred")
                self.backoff.failed(eviction)
                log.info("evict %s@%d on %s deferred: %s", eviction.adapter, eviction.version,
                         eviction.worker_id, error.details())
                return False
        self.metrics.record_action("evict", "ok")
        self.backoff.succeeded(eviction)
        return True


def decision_fingerprint(snapshot: Snapshot) -> str:
    """A digest of the snapshot without heartbeat times, load and per-request counters."""
    digest = hashlib.sha256()
    for mapping in (snapshot.adapters, snapshot.versions, snapshot.rollouts, snapshot.placements):
        for key, message in sorted(mapping.items()):
            digest.update(repr(key).encode() + message.SerializeToString(deterministic=True))
    for worker_id, worker in sorted(snapshot.workers.items()):
        shape = fleet_pb.Worker()
        shape.CopyFrom(worker)
        shape.ClearField("last_heartbeat_time")
        shape.ClearField("load")
        for residency in shape.adapters:
            residency.ClearField("last_used")
            residency.ClearField("num_pinned_requests")
        digest.update(worker_id.encode() + shape.SerializeToString(deterministic=True))
    digest.update(repr(snapshot.leader).encode())
    return digest.hexdigest()
