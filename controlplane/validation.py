"""Version validation by a worker of the adapter's base model (`ValidateAdapter`).

The control plane never parses weights: the worker's loader is the one place adapter
rules live. A verdict is recorded once, in one transaction guarded by the version's
mod revision, so two replicas validating the same version cannot both write it.
"""

from __future__ import annotations

import logging

import grpc

from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.fleet import read_workers
from lorafleet.controlplane.schema import Snapshot
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.transactions import Put, Unchanged
from lorafleet.controlplane.worker_client import TRANSIENT_CODES, WorkerClients, admin_address
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

log = logging.getLogger(__name__)
OTHER_TENANTS_WEIGHTS = ("refused: these weights are registered by another tenant; a tenant may "
                         "register only its own weights (an admin can register shared ones)")


def candidate_workers(workers, base_model: str) -> list[fleet_pb.Worker]:
    """Live workers of `base_model`, those not draining first, then by id."""
    matching = [w for w in workers if w.base_model.name == base_model]
    return sorted(matching, key=lambda w: (w.is_draining, w.worker_id))


class VersionValidator:
    """Asks workers to validate versions and records the verdicts."""

    def __init__(self, store: EtcdStore, clients: WorkerClients):
        self.store = store
        self.clients = clients

    async def try_validate(
        self, version: adapter_pb.AdapterVersion, base_model: str
    ) -> adapter_pb.AdapterVersion | None:
        """Validates a PENDING version; None when no worker of `base_model` answered."""
        workers = await read_workers(self.store)
        return await self._validate(workers, version, base_model)

    async def validate_pending(self, snapshot: Snapshot) -> int:
        """Validates every PENDING version that now has a worker; returns how many."""
        num_validated = 0
        for version in list(snapshot.versions.values()):
            adapter = snapshot.adapters.get(version.adapter)
            if adapter is None or version.state != adapter_pb.VERSION_STATE_PENDING:
                continue
            if await self._validate(snapshot.workers, version, adapter.base_model) is not None:
                num_validated += 1
        return num_validated

    async def _validate(self, workers: dict[str, fleet_pb.Worker], version, base_model: str):
        for worker in candidate_workers(workers.values(), base_model):
            verdict = await self._ask(worker, version.source_uri)
            if verdict is not None:
                return await self._record(version, verdict)
        return None

    async def _ask(self, worker: fleet_pb.Worker, source_uri: str):
        """The worker's verdict, or None when it could not give one right now."""
        request = worker_pb.ValidateAdapterRequest(source_uri=source_uri)
        try:
            return await self.clients.call(admin_address(worker), "ValidateAdapter", request)
        except grpc.aio.AioRpcError as error:
            if error.code() in TRANSIENT_CODES or error.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("worker %s could not validate %s: %s", worker.worker_id, source_uri,
                         error.details())
                return None
            # NOT_FOUND / INVALID_ARGUMENT: the source itself is the problem.
            return worker_pb.ValidateAdapterResponse(is_valid=False, reasons=[error.details()])

    async def _record(self, version, verdict: worker_pb.ValidateAdapterResponse):
        key = self.store.keys.version(version.adapter, version.version)
        found = await self.store.get(key)
        if found is None:
            return None  # the adapter was deleted meanwhile
        stored = adapter_pb.AdapterVersion.FromString(found.value)
        if stored.state != adapter_pb.VERSION_STATE_PENDING:
            return stored  # another replica recorded a verdict first
        _apply_verdict(stored, verdict)
        if stored.created_by_tenant and stored.state == adapter_pb.VERSION_STATE_READY:
            await self._refuse_others_weights(stored)
        if await self.store.commit([Unchanged(key, found)], [Put(key, stored)]):
            return stored
        latest = await self.store.get(key)
        return None if latest is None else adapter_pb.AdapterVersion.FromString(latest.value)


    async def _refuse_others_weights(self, version: adapter_pb.AdapterVersion) -> None:
        """Rejects a tenant's version whose weights another tenant registered: a source
        inside a worker's adapter roots can reach any tenant's folder, the digest cannot
        lie about whose weights they are."""
        tenant = version.adapter.split("/", 1)[0]
        items, _ = await self.store.get_prefix(f"{self.store.keys.root}versions/")
        for raw in items.values():
            other = adapter_pb.AdapterVersion.FromString(raw)
            if other.digest == version.digest and other.adapter.split("/", 1)[0] != tenant:
                version.state = adapter_pb.VERSION_STATE_REJECTED
                version.reasons[:] = [OTHER_TENANTS_WEIGHTS]
                return


def _apply_verdict(version: adapter_pb.AdapterVersion, verdict) -> None:
    version.digest = verdict.digest
    version.rank = verdict.rank
    version.size_bytes = verdict.size_bytes
    version.target_modules[:] = list(verdict.target_modules)
    if verdict.is_valid:
        version.state = adapter_pb.VERSION_STATE_READY
    else:
        version.state = adapter_pb.VERSION_STATE_REJECTED
        version.reasons[:] = list(verdict.reasons) or ["refused by the worker's validation"]
