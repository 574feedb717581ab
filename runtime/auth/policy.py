"""Which roles may call which method: one table per service, nothing else decides.

A method missing from every table is refused (PERMISSION_DENIED) for every role, so a new
RPC is closed until someone writes its line here. Health checking and server reflection
answer anyone: probes and grpcurl need them, and they reveal no tenant data. Finer
checks (a tenant's own adapters, may a tenant add versions) live in the servicers.
"""

from __future__ import annotations

from collections.abc import Mapping

from lorafleet.runtime.auth.principals import Role

ADMIN, TENANT, WORKER, GATEWAY = Role.ADMIN, Role.TENANT, Role.WORKER, Role.GATEWAY
CONTROLPLANE = Role.CONTROLPLANE
Table = Mapping[str, frozenset[Role]]


def _service(name: str, methods: Mapping[str, set[Role]]) -> dict[str, frozenset[Role]]:
    return {f"/{name}/{method}": frozenset(roles) for method, roles in methods.items()}


INFERENCE = _service("lorafleet.inference.v1.InferenceService", {
    "Generate": {ADMIN, TENANT, GATEWAY},
})

# Adapter loading is the worker's admin surface: the control plane alone commands it (a
# gateway asks the control plane for an on-demand load, FleetService.PlaceAdapterVersion).
WORKER_ADMIN = _service("lorafleet.worker.v1.WorkerService", {
    "LoadAdapter": {ADMIN, CONTROLPLANE},
    "EvictAdapter": {ADMIN, CONTROLPLANE},
    "ListAdapters": {ADMIN, CONTROLPLANE},
    "ValidateAdapter": {ADMIN, CONTROLPLANE},
    "GetWorkerStatus": {ADMIN, CONTROLPLANE},
})

ADAPTERS = _service("lorafleet.control.v1.AdapterService", {
    "CreateAdapter": {ADMIN},
    "GetAdapter": {ADMIN, TENANT},
    "ListAdapters": {ADMIN, TENANT},
    "DeleteAdapter": {ADMIN},
    "CreateAdapterVersion": {ADMIN, TENANT},  # a tenant only with a key that allows it
    "ListAdapterVersions": {ADMIN, TENANT},
    "UpdateRollout": {ADMIN},
    "RollbackRollout": {ADMIN},
})

FLEET = _service("lorafleet.control.v1.FleetService", {
    "SendHeartbeat": {WORKER},
    "ListWorkers": {ADMIN},
    "GetPlacement": {ADMIN},
    "WatchRoutingTable": {ADMIN, GATEWAY},
    "DrainWorker": {ADMIN},
    "PlaceAdapterVersion": {ADMIN, GATEWAY},
})

ACCESS = _service("lorafleet.control.v1.AccessService", {
    "CreateKey": {ADMIN},
    "ListKeys": {ADMIN},
    "RevokeKey": {ADMIN},
    "VerifyKey": {ADMIN, WORKER, GATEWAY},
    "ListAuditEntries": {ADMIN},
})

# The methods a worker, a gateway and a control plane serve.
WORKER_METHODS: Table = {**INFERENCE, **WORKER_ADMIN}
GATEWAY_METHODS: Table = dict(INFERENCE)
CONTROL_PLANE_METHODS: Table = {**ADAPTERS, **FLEET, **ACCESS}

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def is_public(method: str) -> bool:
    """Health checks and reflection: answered without a key."""
    return method.startswith(PUBLIC_PREFIXES)
