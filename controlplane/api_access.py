"""AccessService (API keys and the audit trail), the API keys it keeps in etcd, and the
binding of a worker id to the key that first registered it. (controlplane/access.py wires
them into a replica: who may call it, and how it calls workers.)

Records live at `keys/<key id>` under the root as the JSON line of lorafleet.runtime.auth's
KeyRecord (an argon2id hash, never the key). Each replica keeps them in memory, re-read
every 0.5 s, so a key revoked on any replica fails on every replica within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from google.protobuf import timestamp_pb2

from lorafleet.control.v1 import access_service_pb2 as access_pb
from lorafleet.control.v1 import access_service_pb2_grpc as access_grpc
from lorafleet.controlplane.audit import audited, list_entries, name_target
from lorafleet.controlplane.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.transactions import Absent, Delete, Exists, Put, Unchanged
from lorafleet.runtime.auth import KeyRecord, MemoryKeyStore, Principal, current_principal
from lorafleet.runtime.auth.keys import InvalidKeyRecord, make_key
from lorafleet.runtime.auth.remote import PROTO_ROLE, ROLE_OF
from lorafleet.runtime.auth.stores import FileKeyStore, KeyStore
from lorafleet.runtime.auth.verify import KeyVerifier
from lorafleet.runtime.error_status import unary_errors
from lorafleet.runtime.names import InvalidName, check_worker_id

log = logging.getLogger(__name__)
REFRESH_SECONDS = 0.5


class EtcdKeyStore(MemoryKeyStore):
    """The stored keys, mirrored in memory and refreshed from etcd every 0.5 s."""

    def __init__(self, store: EtcdStore):
        super().__init__()
        self.store = store
        self.prefix = f"{store.keys.root}keys/"
        self._refreshing: asyncio.Task | None = None

    async def start(self) -> None:
        """Reads every key, then keeps refreshing in the background."""
        await self.refresh()
        self._refreshing = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        """Stops refreshing."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing

    async def refresh(self) -> None:
        """Replaces the in-memory records with etcd's."""
        items, _ = await self.store.get_prefix(self.prefix)
        records = {}
        for key, value in items.items():
            try:
                record = KeyRecord.from_json(value.decode())
            except (InvalidKeyRecord, UnicodeDecodeError):
                log.error("ignoring a malformed key record at %s", key)
                continue
            records[record.key_id] = record
        self.records = records

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - keep the last records; etcd may come back
                log.warning("could not refresh API keys from etcd", exc_info=True)

    async def create(self, record: KeyRecord) -> None:
        """Stores a new record (in the audit scope's transaction)."""
        key = f"{self.prefix}{record.key_id}"
        if not await self.store.commit([Absent(key)], [Put(key, record.to_json().encode())]):
            raise Conflict("key id collision; try again")
        self.put(record)

    async def revoke(self, key_id: str) -> None:
        """Deletes a record; NotFound when there is none."""
        key = f"{self.prefix}{key_id}"
        if not await self.store.commit([Exists(key)], [Delete(key)]):
            raise NotFound(f"key {key_id[:32]!r} not found")
        self.remove(key_id)


def api_key_of(record: KeyRecord, source: str = "") -> access_pb.ApiKey:
    """The public description of a record, and where it is kept ("etcd", "file")."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(record.create_time * 1e9))
    return access_pb.ApiKey(key_id=record.key_id, role=PROTO_ROLE[record.role],
                            tenant=record.tenant, can_create_versions=record.can_create_versions,
                            create_time=stamp, source=source)


class AccessServicer(access_grpc.AccessServiceServicer):
    """Serves AccessService: keys in etcd and the audit trail."""

    def __init__(self, store: EtcdStore, keys: EtcdKeyStore, verifier: KeyVerifier,
                 file_keys: FileKeyStore | None = None):
        self.store = store
        self.keys = keys
        self.verifier = verifier
        self.file_keys = file_keys  # the --auth-keys file, if any

    @unary_errors
    @audited("CreateKey", lambda r: _role_name(r.role) + (f" {r.tenant}" if r.tenant else ""))
    async def CreateKey(self, request, context):
        """Makes and stores a key; its secret is in this reply only."""
        role = ROLE_OF.get(request.role)
        if role is None:
            raise InvalidArgument("role: give ROLE_ADMIN, ROLE_TENANT, ROLE_WORKER, ROLE_GATEWAY or "
                                  "ROLE_CONTROLPLANE")
        try:
            key, record = await asyncio.to_thread(make_key, role.value, request.tenant,
                                                  request.can_create_versions)
        except InvalidKeyRecord as error:
            raise InvalidArgument(str(error)) from None
        name_target(f"{record.key_id} ({record.principal().describe().split(' (')[0]})")
        await self.keys.create(record)
        return access_pb.CreateKeyResponse(key=key, api_key=api_key_of(record))

    @unary_errors
    async def ListKeys(self, request, context):
        """Every key this replica accepts, in id order, without secrets: those in etcd and
        those in its --auth-keys file."""
        await self.keys.refresh()
        listed = [api_key_of(r, "etcd") for r in self.keys.records.values()]
        if self.file_keys is not None:
            listed += [api_key_of(r, "file") for r in self.file_keys.records().values()]
        return access_pb.ListKeysResponse(api_keys=sorted(listed, key=lambda k: k.key_id))

    @unary_errors
    @audited("RevokeKey", lambda r: r.key_id)
    async def RevokeKey(self, request, context):
        """Deletes a key; a key of the --auth-keys file is removed from that file instead."""
        if self.file_keys is not None and self.file_keys.record(request.key_id) is not None:
            raise FailedPrecondition(f"key {request.key_id} is in the --auth-keys file "
                                     f"{self.file_keys.path}: remove its line there")
        await self.keys.revoke(request.key_id)
        return access_pb.RevokeKeyResponse()

    @unary_errors
    async def VerifyKey(self, request, context):
        """Whether a key is valid, and whose it is."""
        principal = await self.verifier.verify(request.key)
        if principal is None:
            return access_pb.VerifyKeyResponse(is_valid=False)
        record = self.verifier.store.record(principal.key_id)
        return access_pb.VerifyKeyResponse(is_valid=True, api_key=api_key_of(record))

    @unary_errors
    async def ListAuditEntries(self, request, context):
        """Audit entries, oldest first."""
        try:
            since = request.since.ToNanoseconds() if request.HasField("since") else 0
        except ValueError:  # seconds outside years 1..9999 (found by tests/fuzz)
            raise InvalidArgument("since: not a valid timestamp") from None
        return access_pb.ListAuditEntriesResponse(entries=await list_entries(self.store, since))


def _role_name(role: int) -> str:
    """The role's enum name; a number no enum value has (found by tests/fuzz) as itself."""
    return access_pb.Role.Name(role) if role in access_pb.Role.values() else str(role)


class WorkerBindings:
    """Binds a worker id to the key of its first heartbeat (`worker-keys/<id>` in etcd).
    Another key for the same id is refused while the bound key exists; revoking that key
    frees the id for a new one."""

    def __init__(self, store: EtcdStore, keys: KeyStore):
        self.store = store
        self.keys = keys

    async def check(self, worker_id: str) -> None:
        """Binds `worker_id` to the caller's key, or PermissionDenied when it is bound to
        another live key. Without auth (no principal) there is nothing to bind."""
        principal: Principal | None = current_principal()
        if principal is None or not _is_worker_id(worker_id):
            return  # without auth nothing to bind; a bad id is refused by the heartbeat
        key = f"{self.store.keys.root}worker-keys/{worker_id}"
        found = await self.store.get(key)
        bound = found.value.decode() if found else None
        if bound == principal.key_id:
            return
        if bound is not None and self.keys.record(bound) is not None:
            raise PermissionDenied(f"worker_id {worker_id!r} belongs to another key")
        if not await self.store.commit([Unchanged(key, found)],
                                       [Put(key, principal.key_id.encode())]):
            raise PermissionDenied(f"worker_id {worker_id!r} belongs to another key")


def _is_worker_id(worker_id: str) -> bool:
    try:
        check_worker_id(worker_id)
    except InvalidName:
        return False
    return True
