"""What GET /v1/models lists: the `ModelLister` interface and the worker's lister.

The gateway lists from its routing table; a worker lists from its own WorkerService
(ListAdapters and GetWorkerStatus) over gRPC, like any other client of it.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import grpc

from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc


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

    def __init__(self, channel: grpc.aio.Channel):
        self._stub = wpb_grpc.WorkerServiceStub(channel)

    async def list_models(self, metadata=()) -> list[ModelCard]:
        """Asks the worker now, so a load or eviction shows at once. With auth on, only
        an admin's key may list a worker's adapters (WorkerService is the admin surface)."""
        status = await self._stub.GetWorkerStatus(wpb.GetWorkerStatusRequest(), timeout=10,
                                                  metadata=metadata)
        listed = await self._stub.ListAdapters(wpb.ListAdaptersRequest(), timeout=10,
                                               metadata=metadata)
        base = status.base_model.name
        ready = [a for a in listed.adapters if a.state == wpb.LOAD_STATE_READY]
        names = sorted({a.adapter for a in ready if a.is_default})
        versions = [f"{a.adapter}@{a.version}"
                    for a in sorted(ready, key=lambda a: (a.adapter, a.version))]
        return [ModelCard(base, None), *(ModelCard(ref, base) for ref in names + versions)]
