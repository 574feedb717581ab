"""The adapter registry: adapters and their immutable versions, stored in etcd.

Each change is one etcd transaction guarded by compares, so two control-plane replicas
serving the same etcd never overwrite each other: a lost race is retried from a fresh
read, a few times, then reported as Conflict.
"""

from __future__ import annotations

import urllib.parse

from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.controlplane.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from lorafleet.controlplane.schema import now
from lorafleet.controlplane.store import EtcdStore
from lorafleet.controlplane.transactions import (
    Absent,
    Delete,
    DeletePrefix,
    Entry,
    Exists,
    Put,
    Unchanged,
)
from lorafleet.controlplane.validation import VersionValidator
from lorafleet.runtime.auth import Role, can_see, current_principal, tenant_scope
from lorafleet.runtime.names import SOURCE_SCHEMES, InvalidName, check_adapter_name

NUM_TXN_ATTEMPTS = 5
# Refused versions an adapter keeps (newest first); older ones go when a version is added.
MAX_REJECTED_KEPT = 3


def checked_name(name: str) -> str:
    """`name` if it is a valid "tenant/name", else InvalidArgument naming the field."""
    try:
        return check_adapter_name(name)
    except InvalidName as error:
        raise InvalidArgument(str(error)) from error


class AdapterRegistry:
    """Adapters and versions: create, read, list, delete; versions validated by workers."""

    def __init__(self, store: EtcdStore, validator: VersionValidator):
        self.store = store
        self.keys = store.keys
        self.validator = validator

    async def create_adapter(self, adapter: adapter_pb.Adapter) -> adapter_pb.Adapter:
        """Stores a new adapter; AlreadyExists when the name is taken."""
        checked_name(adapter.name)
        if not adapter.base_model:
            raise InvalidArgument("adapter.base_model is required")
        if adapter.max_replicas and max(adapter.min_replicas, 1) > adapter.max_replicas:
            raise InvalidArgument(
                f"adapter.min_replicas ({adapter.min_replicas}) exceeds "
                f"adapter.max_replicas ({adapter.max_replicas})"
            )
        stored = adapter_pb.Adapter()
        stored.CopyFrom(adapter)
        stored.create_time.CopyFrom(now())
        key = self.keys.adapter(adapter.name)
        created = await self.store.commit([Absent(key)], [Put(key, stored)])
        if not created:
            raise AlreadyExists(f"adapter {adapter.name!r} already exists")
        return stored

    async def get_adapter(self, name: str) -> adapter_pb.Adapter:
        """The adapter, or NotFound. Another tenant's adapter is NotFound too, after the
        same read and with the same message as an absent one: existence is not revealed."""
        found = await self.store.get(self.keys.adapter(checked_name(name)))
        if found is None or not can_see(name):
            raise NotFound(f"adapter {name!r} not found")
        return adapter_pb.Adapter.FromString(found.value)

    async def list_adapters(self, tenant: str = "") -> list[adapter_pb.Adapter]:
        """Adapters in name order, optionally of one tenant; a tenant caller sees its own
        only (asking for another tenant's lists nothing)."""
        scope = tenant_scope()
        if scope is not None and tenant not in ("", scope):
            return []
        tenant = scope or tenant
        prefix = self.keys.adapter(f"{tenant}/" if tenant else "")
        items, _ = await self.store.get_prefix(prefix)
        return [adapter_pb.Adapter.FromString(items[key]) for key in sorted(items)]

    async def list_versions(self, name: str) -> list[adapter_pb.AdapterVersion]:
        """An adapter's versions, oldest first; NotFound for an unknown adapter."""
        await self.get_adapter(name)
        items, _ = await self.store.get_prefix(self.keys.versions(name))
        return [adapter_pb.AdapterVersion.FromString(items[key]) for key in sorted(items)]

    async def get_rollout(self, name: str) -> adapter_pb.Rollout | None:
        """The rollout in effect, or None when the adapter never had one."""
        found = await self.store.get(self.keys.rollout(name))
        return None if found is None else adapter_pb.Rollout.FromString(found.value)

    async def delete_adapter(self, name: str) -> None:
        """Deletes an adapter with its versions, rollouts and placement, in one transaction.

        FailedPrecondition while its rollout routes traffic to any version.
        """
        for _ in range(NUM_TXN_ATTEMPTS):
            await self.get_adapter(name)
            rollout_key = self.keys.rollout(name)
            found = await self.store.get(rollout_key)
            if found is not None and any(w.weight > 0 for w in _rollout(found).weights):
                raise FailedPrecondition(
                    f"adapter {name!r} still receives traffic; set its rollout to no "
                    "versions first"
                )
            deletes = [
                Delete(self.keys.adapter(name)),
                Delete(rollout_key),
                *(DeletePrefix(p) for p in (
                    self.keys.versions(name), self.keys.history(name), self.keys.placement(name)
                )),
            ]
            if await self.store.commit([Unchanged(rollout_key, found)], deletes):
                return
        raise Conflict(f"adapter {name!r} kept changing; try again")

    async def create_version(self, name: str, source_uri: str) -> adapter_pb.AdapterVersion:
        """Adds a version and has a worker validate it (PENDING while no worker can)."""
        _check_source_uri(source_uri)
        adapter = await self.get_adapter(name)
        version = await self._store_pending(name, source_uri)
        validated = await self.validator.try_validate(version, adapter.base_model)
        return validated or version

    async def _store_pending(self, name: str, source_uri: str) -> adapter_pb.AdapterVersion:
        """Stores the next version as PENDING, dropping refused versions beyond the newest
        MAX_REJECTED_KEPT in the same transaction (so refusals cannot pile up)."""
        principal = current_principal()
        for _ in range(NUM_TXN_ATTEMPTS):
            existing = await self.list_versions(name)
            number = max((v.version for v in existing), default=0) + 1
            version = adapter_pb.AdapterVersion(
                adapter=name, version=number, source_uri=source_uri,
                state=adapter_pb.VERSION_STATE_PENDING, create_time=now(),
                created_by_tenant=principal is not None and principal.role is Role.TENANT,
            )
            key = self.keys.version(name, number)
            rejected = [v for v in existing if v.state == adapter_pb.VERSION_STATE_REJECTED]
            dropped = [Delete(self.keys.version(name, v.version))
                       for v in rejected[:-MAX_REJECTED_KEPT]]
            stored = await self.store.commit(
                [Absent(key), Exists(self.keys.adapter(name))], [Put(key, version), *dropped]
            )
            if stored:
                return version
        raise Conflict(f"versions of {name!r} kept changing; try again")


def _rollout(found: Entry) -> adapter_pb.Rollout:
    return adapter_pb.Rollout.FromString(found.value)


def _check_source_uri(source_uri: str) -> None:
    if not source_uri:
        raise InvalidArgument("source_uri is required")
    scheme = urllib.parse.urlsplit(source_uri).scheme
    if scheme not in SOURCE_SCHEMES:
        raise InvalidArgument(
            f"source_uri scheme {scheme!r} is not supported; use a path, file:// or s3://"
        )
