"""Workers: heartbeats kept alive by etcd leases, listing and draining.

Each worker's record lives under its own lease. A heartbeat renews the lease (or grants
a new one when it expired) and rewrites the record; a worker that stops heartbeating
vanishes from etcd when its lease runs out, which is how the reconciler learns it died.
A drain mark is a separate key on the same lease, so it ends with the worker.

"Draining" here is always the operator's DrainWorker (control.v1 `is_draining`): placement
moves the worker's adapters elsewhere while it keeps serving. A worker shutting down is
another thing, which it reports itself (worker.v1 GetWorkerStatusResponse.is_draining).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.errors import AlreadyExists, InvalidArgument, NotFound
from lorafleet.controlplane.schema import now
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.transactions import Put
from lorafleet.runtime.names import InvalidName, check_worker_id


async def read_workers(store: EtcdStore) -> dict[str, fleet_pb.Worker]:
    """Live workers by id, with is_draining set from their drain marks."""
    items, _ = await store.get_prefix(store.keys.worker(""))
    drains, _ = await store.get_prefix(store.keys.drain(""))
    workers = {}
    for _, value in sorted(items.items()):
        worker = fleet_pb.Worker.FromString(value)
        worker.is_draining = store.keys.drain(worker.worker_id) in drains
        workers[worker.worker_id] = worker
    return workers


async def _never_answers(address: str) -> bool:
    return False


class FleetRegistry:
    """Heartbeats, worker listing and draining. `is_answering(address)` tells whether a
    worker answers there (a health check): a worker id whose holder stopped answering may
    be taken over before its lease runs out."""

    def __init__(self, store: EtcdStore, lease_ttl_seconds: int,
                 is_answering: Callable[[str], Awaitable[bool]] = _never_answers):
        if lease_ttl_seconds < 2:
            raise ValueError(f"lease_ttl_seconds must be >= 2 (etcd's minimum), got "
                             f"{lease_ttl_seconds}")
        self.store = store
        self.keys = store.keys
        self.lease_ttl_seconds = lease_ttl_seconds
        self.is_answering = is_answering

    @property
    def heartbeat_interval_seconds(self) -> int:
        """How often workers should heartbeat: three tries per lease TTL."""
        return max(1, self.lease_ttl_seconds // 3)

    async def heartbeat(self, worker: fleet_pb.Worker) -> bool:
        """Registers or renews `worker`; returns whether an operator drains it."""
        _check_worker(worker)
        record = fleet_pb.Worker()
        record.CopyFrom(worker)
        record.is_draining = False  # kept in its own key, see module docstring
        record.last_heartbeat_time.CopyFrom(now())
        key = self.keys.worker(worker.worker_id)
        lease_id = await self._renewed_lease(key, worker)
        if not await self.store.try_put(key, record.SerializeToString(), lease_id):
            # The lease expired between renewal and write: start a fresh one.
            lease_id = await self.store.grant_lease(self.lease_ttl_seconds)
            await self.store.put(key, record.SerializeToString(), lease_id)
        return await self.store.get(self.keys.drain(worker.worker_id)) is not None

    async def _renewed_lease(self, key: str, worker: fleet_pb.Worker) -> int:
        """The lease of `worker`'s record, renewed; a new one when it has none. Refuses
        an id held by a live worker at another address: ids are unique per worker. One
        whose holder no longer answers (it stopped or died; its lease has not run out
        yet) is taken over at once, so a worker restarted on another port rejoins now."""
        found = await self.store.get(key)
        if found is not None:
            held = fleet_pb.Worker.FromString(found.value)
            if held.address != worker.address:
                if await self.is_answering(held.address):
                    raise AlreadyExists(
                        f"worker_id {worker.worker_id!r} is held by a live worker at "
                        f"{held.address}; give this worker another --worker-id")
                return await self.store.grant_lease(self.lease_ttl_seconds)
        if found is not None and found.lease and await self.store.try_refresh_lease(found.lease):
            return found.lease
        return await self.store.grant_lease(self.lease_ttl_seconds)

    async def list_workers(self, base_model: str = "") -> list[fleet_pb.Worker]:
        """Live workers in id order, optionally of one base model."""
        workers = await read_workers(self.store)
        return [w for w in workers.values() if not base_model or w.base_model.name == base_model]

    async def drain(self, worker_id: str) -> fleet_pb.Worker:
        """Marks a worker as draining: placement moves its adapters elsewhere."""
        key = self.keys.worker(worker_id)
        found = await self.store.get(key)
        if found is None:
            raise NotFound(f"worker {worker_id!r} not found")
        # A transaction, so an audit scope records the drain with it.
        await self.store.commit([], [Put(self.keys.drain(worker_id), b"", lease=found.lease)])
        worker = fleet_pb.Worker.FromString(found.value)
        worker.is_draining = True
        return worker


def _check_worker(worker: fleet_pb.Worker) -> None:
    if not worker.worker_id:
        raise InvalidArgument("worker.worker_id is required")
    try:
        check_worker_id(worker.worker_id)
    except InvalidName as error:
        raise InvalidArgument(str(error)) from error
    if not worker.address:
        raise InvalidArgument("worker.address is required")
    if not worker.base_model.name:
        raise InvalidArgument("worker.base_model.name is required")
