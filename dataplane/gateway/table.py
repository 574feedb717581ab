"""The gateway's copy of the routing table, rebuilt from WatchRoutingTable messages.

A snapshot message replaces the whole table (so whatever changed while the control plane
was away is picked up); a change message replaces the adapter routes and workers it names
and drops the removed ones. Tables are immutable: `apply` returns a new one, so a request
that read a table keeps a consistent view while the next message arrives.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb

_EMPTY: Mapping = types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class RoutingTable:
    """Routes by adapter name and live workers by id, as of one control-plane revision."""

    revision: int = 0
    routes: Mapping[str, fleet_pb.AdapterRoute] = dataclasses.field(default_factory=lambda: _EMPTY)
    workers: Mapping[str, fleet_pb.WorkerRoute] = dataclasses.field(default_factory=lambda: _EMPTY)

    def apply(self, message: fleet_pb.WatchRoutingTableResponse) -> RoutingTable:
        """The table after `message`: a snapshot replaces everything, a change edits."""
        routes = {} if message.is_snapshot else dict(self.routes)
        workers = {} if message.is_snapshot else dict(self.workers)
        for name in message.removed_adapters:
            routes.pop(name, None)
        for worker_id in message.removed_worker_ids:
            workers.pop(worker_id, None)
        routes.update((route.adapter, route) for route in message.routes)
        workers.update((worker.worker_id, worker) for worker in message.workers)
        return RoutingTable(message.revision, types.MappingProxyType(routes),
                            types.MappingProxyType(workers))

    def workers_of(self, base_model: str) -> list[fleet_pb.WorkerRoute]:
        """Live workers of one base model, in id order."""
        return [w for _, w in sorted(self.workers.items()) if w.base_model == base_model]

    def base_models(self) -> list[str]:
        """Every base model a live worker serves or a routed adapter names, sorted."""
        names = {w.base_model for w in self.workers.values()}
        names.update(route.base_model for route in self.routes.values())
        return sorted(name for name in names if name)

    def addresses(self) -> set[str]:
        """Addresses of every live worker (gRPC and, when apart, admin)."""
        return {a for w in self.workers.values() for a in (w.address, w.admin_address) if a}
