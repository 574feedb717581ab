"""What GET /v1/models lists: the `ModelLister` interface and the worker's lister.

The gateway lists from its routing table; a worker from the versions its server holds,
read in process (as ListAdapters reports them). Who sees which is decided by the caller's
principal in the HTTP layer, not by a call that needs an admin's key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Protocol

from lorafleet.worker.v1 import worker_service_pb2 as wpb


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """One entry of GET /v1/models."""

    id: str  # base model name, or an adapter reference "tenant/name" / "tenant/name@N"
    parent: str | None  # the base model's name for adapters, None for the base model
    owned_by: str = "lorafleet"


class ModelLister(Protocol):
    """Whatever knows the servable base model and adapters (a worker, the gateway)."""

    async def list_models(self, metadata=()) -> list[ModelCard]:
        """The base model first, then every servable adapter reference; `metadata` is
        the caller's (its authorization), for listers that ask a server."""
        ...


class WorkerModels:
    """Lists a worker's base model and its READY adapter versions: `tenant/name` for
    each name that has a default version, and `tenant/name@N` for every version."""

    def __init__(self, base_model: str, residency: Callable[[], Iterable[wpb.AdapterResidency]]):
        self._base_model = base_model
        self._residency = residency  # what ListAdapters reports, read now

    async def list_models(self, metadata=()) -> list[ModelCard]:
        """Reads the worker's versions now, so a load or eviction shows at once."""
        base = self._base_model
        ready = [a for a in self._residency() if a.state == wpb.LOAD_STATE_READY]
        names = sorted({a.adapter for a in ready if a.is_default})
        versions = [f"{a.adapter}@{a.version}"
                    for a in sorted(ready, key=lambda a: (a.adapter, a.version))]
        return [ModelCard(base, None), *(ModelCard(ref, base) for ref in names + versions)]
