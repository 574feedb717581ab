"""Rollouts: an adapter's traffic split over its versions, with a history for rollback.

An update pushes the rollout it replaces onto the adapter's history; a rollback pops
the newest history entry and makes it current with the next generation. Both are one
etcd transaction guarded by the current rollout's mod revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.controlplane.errors import Conflict, FailedPrecondition, InvalidArgument
from lorafleet.controlplane.registry import NUM_TXN_ATTEMPTS, AdapterRegistry
from lorafleet.controlplane.schema import now
from lorafleet.controlplane.transactions import Delete, Exists, Put, Unchanged


class RolloutManager:
    """UpdateRollout and RollbackRollout over the registry's keys."""

    def __init__(self, registry: AdapterRegistry):
        self.registry = registry
        self.store = registry.store
        self.keys = registry.keys

    async def update(
        self, name: str, weights: Sequence[adapter_pb.VersionWeight]
    ) -> adapter_pb.Rollout:
        """Replaces the split; the old one goes to history. Empty weights stop traffic."""
        versions = {v.version: v for v in await self.registry.list_versions(name)}
        _check_weights(name, weights, versions)
        for _ in range(NUM_TXN_ATTEMPTS):
            current, guard = await self._current(name)
            rollout = adapter_pb.Rollout(
                adapter=name, weights=list(weights), update_time=now(),
                generation=(current.generation if current else 0) + 1,
            )
            changes = [Put(self.keys.rollout(name), rollout)]
            if current is not None:
                changes.append(Put(self.keys.history(name, current.generation), current))
            if await self.store.commit([guard], changes):
                return rollout
        raise Conflict(f"the rollout of {name!r} kept changing; try again")

    async def rollback(self, name: str) -> adapter_pb.Rollout:
        """Restores the rollout before the current one; FailedPrecondition if none."""
        await self.registry.get_adapter(name)
        for _ in range(NUM_TXN_ATTEMPTS):
            current, guard = await self._current(name)
            history, _ = await self.store.get_prefix(self.keys.history(name))
            if current is None or not history:
                raise FailedPrecondition(f"adapter {name!r} has no earlier rollout")
            newest_key = max(history)
            earlier = adapter_pb.Rollout.FromString(history[newest_key])
            rollout = adapter_pb.Rollout(
                adapter=name, weights=earlier.weights, update_time=now(),
                generation=current.generation + 1,
            )
            changes = [Put(self.keys.rollout(name), rollout), Delete(newest_key)]
            if await self.store.commit([guard, Exists(newest_key)], changes):
                return rollout
        raise Conflict(f"the rollout of {name!r} kept changing; try again")

    async def _current(self, name: str) -> tuple[adapter_pb.Rollout | None, Unchanged]:
        """(current rollout or None, a condition that holds while it is unchanged)."""
        key = self.keys.rollout(name)
        found = await self.store.get(key)
        current = None if found is None else adapter_pb.Rollout.FromString(found.value)
        return current, Unchanged(key, found)


def _check_weights(name, weights, versions: dict[int, adapter_pb.AdapterVersion]) -> None:
    seen = set()
    for share in weights:
        if share.version not in versions:
            raise InvalidArgument(f"weights: adapter {name!r} has no version {share.version}")
        if share.version in seen:
            raise InvalidArgument(f"weights: version {share.version} is listed twice")
        seen.add(share.version)
    if weights and not any(share.weight > 0 for share in weights):
        raise InvalidArgument("weights: all weights are zero; send no weights to stop traffic")
    for share in weights:
        state = versions[share.version].state
        if state != adapter_pb.VERSION_STATE_READY:
            raise FailedPrecondition(
                f"version {share.version} of {name!r} is "
                f"{adapter_pb.VersionState.Name(state)}, not VERSION_STATE_READY"
            )
