"""From a GenerateRequest to a version and the workers that may run it, by the routing table.

A request resolves its version once: the adapter reference sent to the worker is always
"tenant/name@N", so the worker serves exactly that version whatever its own default is,
and a rollout change never moves a request that already started.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Collection, Mapping

import grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.dataplane.gateway.affinity import prefer, prefix_key
from lorafleet.dataplane.gateway.picking import (
    Candidate,
    base_candidates,
    find_version,
    holder_candidates,
    load_candidates,
    order,
    pick_version,
)
from lorafleet.dataplane.gateway.table import RoutingTable
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.runtime.auth.principals import can_see
from lorafleet.runtime.names import parse_ref


class RouteError(Exception):
    """A request the gateway cannot route, with the status the caller gets (declared per
    instance: lorafleet/error_status.py)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.status_code_name = code.name


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a request runs on: an adapter version (or the base model) and the table read;
    `prefix` keys its prompt's start on those weights, for prefix affinity (affinity.py)."""

    table: RoutingTable
    base_model: str
    adapter: str = ""
    version: fleet_pb.VersionRoute | None = None
    prefix: bytes = b""

    @property
    def reference(self) -> str:
        """The adapter reference the worker gets: "tenant/name@N", or "" for the base model."""
        return f"{self.adapter}@{self.version.version}" if self.version is not None else ""


class Router:
    """Resolves requests against the latest table and ranks workers for each attempt."""

    def __init__(self, table: Callable[[], RoutingTable | None], *, base_model: str = "",
                 rng: random.Random | None = None):
        self._table = table
        self._base_model = base_model
        self.rng = rng or random.Random()

    def resolve(self, request: pb.GenerateRequest) -> Resolved:
        """The version the request runs on; raises RouteError."""
        resolved = self._resolve(request)
        weights = resolved.version.digest if resolved.version else resolved.base_model
        return dataclasses.replace(resolved, prefix=prefix_key(request, weights))

    def _resolve(self, request: pb.GenerateRequest) -> Resolved:
        table = self._table()
        if table is None:
            raise RouteError(grpc.StatusCode.UNAVAILABLE,
                             "no routing table yet: the control plane has not answered")
        if not request.adapter:
            return Resolved(table, self.base_model_of(table))
        try:
            name, number = parse_ref(request.adapter)
        except ValueError as exc:
            raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, f"adapter: {exc}") from None
        route = table.routes.get(name)
        if route is None or not can_see(name):  # another tenant's reads like an absent one
            raise RouteError(grpc.StatusCode.NOT_FOUND,
                             f"adapter {name} is unknown or its rollout routes no traffic")
        if number is None:
            try:
                version = pick_version(route, request.routing_key, self.rng)
            except LookupError as exc:
                raise RouteError(grpc.StatusCode.NOT_FOUND, str(exc)) from None
        else:
            version = find_version(route, number)
            if version is None:
                routed = ", ".join(str(v.version) for v in route.versions)
                raise RouteError(grpc.StatusCode.NOT_FOUND,
                                 f"adapter {name}@{number} is not routed (routed versions: {routed})")
        return Resolved(table, route.base_model, name, version)

    def base_model_of(self, table: RoutingTable) -> str:
        """The base model a request without an adapter runs on."""
        if self._base_model:
            return self._base_model
        names = table.base_models()
        if len(names) == 1:
            return names[0]
        if not names:
            raise RouteError(grpc.StatusCode.UNAVAILABLE, "no live worker serves a base model")
        raise RouteError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"adapter: empty means the base model, but this gateway routes "
                         f"several ({', '.join(names)}); name an adapter, or start the "
                         f"gateway with --base-model")

    def ranked(self, resolved: Resolved, outstanding: Mapping[str, int],
               excluded: Collection[str], loaded_here: Collection[str] = ()) -> list[Candidate]:
        """Workers for the next attempt, best first; raises RouteError when none is left."""
        # The version stays the one resolved; its holders come from the newest table, so
        # a retry sees a worker that died or a copy that was loaded meanwhile.
        table = self._table() or resolved.table
        version = resolved.version and _newest(table, resolved)
        live = table.workers_of(resolved.base_model)
        if version is None:
            candidates = base_candidates(live)
        else:
            candidates = holder_candidates(version, table.workers)
            if not [c for c in candidates if c.worker_id not in excluded]:
                candidates = load_candidates(version, live, loaded_here)
        ranked = prefer(order(candidates, outstanding, excluded, self.rng), resolved.prefix,
                        outstanding)
        if not ranked:
            what = resolved.reference or f"base model {resolved.base_model}"
            raise RouteError(grpc.StatusCode.UNAVAILABLE,
                             f"no live worker of {resolved.base_model} can serve {what}")
        return ranked


def _newest(table: RoutingTable, resolved: Resolved) -> fleet_pb.VersionRoute:
    route = table.routes.get(resolved.adapter)
    newest = find_version(route, resolved.version.version) if route is not None else None
    return newest if newest is not None and newest.digest == resolved.version.digest \
        else resolved.version
