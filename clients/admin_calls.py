"""Admin calls on Client and AsyncClient: AdapterService and FleetService (a control
plane) and WorkerService (one worker). Each returns the RPC's protobuf response (an
awaitable of it on AsyncClient) and raises the typed errors of `errors`. Admin calls are
not retried: a create that timed out may have happened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lorafleet.clients.errors import InvalidArgument
from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

Weights = Mapping[int, int] | Iterable[adapter_pb.VersionWeight]
Tier = int | str  # worker_pb.TIER_DEVICE, or "device" / "host"


class AdminCalls:
    """One method per admin RPC; `timeout` overrides the client's default deadline."""

    def _unary(self, service: str, rpc: str, request, timeout: float | None):
        raise NotImplementedError

    # AdapterService (control plane)

    def create_adapter(self, name: str, *, base_model: str, description: str = "",
                       min_replicas: int = 0, max_replicas: int = 0,
                       timeout: float | None = None) -> adapter_pb.CreateAdapterResponse:
        """Registers adapter `name` ("tenant/name") for `base_model`."""
        adapter = adapter_pb.Adapter(name=name, base_model=base_model, description=description,
                                     min_replicas=min_replicas, max_replicas=max_replicas)
        request = adapter_pb.CreateAdapterRequest(adapter=adapter)
        return self._unary("adapters", "CreateAdapter", request, timeout)

    def get_adapter(self, name: str, *, timeout: float | None = None
                    ) -> adapter_pb.GetAdapterResponse:
        """An adapter with its versions and current rollout."""
        request = adapter_pb.GetAdapterRequest(name=name)
        return self._unary("adapters", "GetAdapter", request, timeout)

    def list_adapters(self, *, tenant: str = "", timeout: float | None = None
                      ) -> adapter_pb.ListAdaptersResponse:
        """The registered adapters (of one tenant, when given), in name order."""
        request = adapter_pb.ListAdaptersRequest(tenant=tenant)
        return self._unary("adapters", "ListAdapters", request, timeout)

    def delete_adapter(self, name: str, *, timeout: float | None = None
                       ) -> adapter_pb.DeleteAdapterResponse:
        """Deletes an adapter that no rollout routes traffic to."""
        request = adapter_pb.DeleteAdapterRequest(name=name)
        return self._unary("adapters", "DeleteAdapter", request, timeout)

    def create_adapter_version(self, adapter: str, source_uri: str, *,
                               timeout: float | None = None
                               ) -> adapter_pb.CreateAdapterVersionResponse:
        """Adds an immutable version from `source_uri`; a worker validates it."""
        request = adapter_pb.CreateAdapterVersionRequest(adapter=adapter, source_uri=source_uri)
        return self._unary("adapters", "CreateAdapterVersion", request, timeout)

    def list_adapter_versions(self, adapter: str, *, timeout: float | None = None
                              ) -> adapter_pb.ListAdapterVersionsResponse:
        """An adapter's versions, oldest first."""
        request = adapter_pb.ListAdapterVersionsRequest(adapter=adapter)
        return self._unary("adapters", "ListAdapterVersions", request, timeout)

    def update_rollout(self, adapter: str, weights: Weights, *, timeout: float | None = None
                       ) -> adapter_pb.UpdateRolloutResponse:
        """Sets the traffic split, e.g. {1: 90, 2: 10}; empty stops all traffic."""
        if isinstance(weights, Mapping):
            weights = [adapter_pb.VersionWeight(version=v, weight=w) for v, w in weights.items()]
        request = adapter_pb.UpdateRolloutRequest(adapter=adapter, weights=list(weights))
        return self._unary("adapters", "UpdateRollout", request, timeout)

    def rollback_rollout(self, adapter: str, *, timeout: float | None = None
                         ) -> adapter_pb.RollbackRolloutResponse:
        """Restores the traffic split that preceded the current one."""
        request = adapter_pb.RollbackRolloutRequest(adapter=adapter)
        return self._unary("adapters", "RollbackRollout", request, timeout)

    # FleetService (control plane)

    def list_workers(self, *, base_model: str = "", timeout: float | None = None
                     ) -> fleet_pb.ListWorkersResponse:
        """The live workers (of one base model, when given)."""
        request = fleet_pb.ListWorkersRequest(base_model=base_model)
        return self._unary("fleet", "ListWorkers", request, timeout)

    def get_placement(self, *, adapter: str = "", timeout: float | None = None
                      ) -> fleet_pb.GetPlacementResponse:
        """Desired and actual workers of each adapter version (of one adapter, when given)."""
        request = fleet_pb.GetPlacementRequest(adapter=adapter)
        return self._unary("fleet", "GetPlacement", request, timeout)

    def drain_worker(self, worker_id: str, *, timeout: float | None = None
                     ) -> fleet_pb.DrainWorkerResponse:
        """Moves a worker's adapters elsewhere and stops placing new ones on it."""
        request = fleet_pb.DrainWorkerRequest(worker_id=worker_id)
        return self._unary("fleet", "DrainWorker", request, timeout)

    # WorkerService (one worker)

    def list_worker_adapters(self, *, tier: Tier | None = None, timeout: float | None = None
                             ) -> worker_pb.ListAdaptersResponse:
        """The adapter versions this worker knows, with tier, pins and last use."""
        request = worker_pb.ListAdaptersRequest(tier=_tier(tier))
        return self._unary("worker", "ListAdapters", request, timeout)

    def load_adapter(self, adapter: str, source_uri: str, *, version: int = 0,
                     digest: str = "", tier: Tier | None = None, make_default: bool = False,
                     timeout: float | None = None) -> worker_pb.LoadAdapterResponse:
        """Makes a version resident on this worker (version 0: the worker numbers it)."""
        request = worker_pb.LoadAdapterRequest(adapter=adapter, version=version,
                                               source_uri=source_uri, digest=digest,
                                               tier=_tier(tier), make_default=make_default)
        return self._unary("worker", "LoadAdapter", request, timeout)

    def evict_adapter(self, adapter: str, *, version: int = 0, tier: Tier | None = None,
                      timeout: float | None = None) -> worker_pb.EvictAdapterResponse:
        """Evicts a version (0: every version) from `tier` and the tiers above it."""
        request = worker_pb.EvictAdapterRequest(adapter=adapter, version=version,
                                                tier=_tier(tier))
        return self._unary("worker", "EvictAdapter", request, timeout)

    def validate_adapter(self, source_uri: str, *, timeout: float | None = None
                         ) -> worker_pb.ValidateAdapterResponse:
        """Checks an adapter as a load would, without loading it."""
        request = worker_pb.ValidateAdapterRequest(source_uri=source_uri)
        return self._unary("worker", "ValidateAdapter", request, timeout)

    def get_worker_status(self, *, timeout: float | None = None
                          ) -> worker_pb.GetWorkerStatusResponse:
        """The worker's base model, capacities and current load."""
        request = worker_pb.GetWorkerStatusRequest()
        return self._unary("worker", "GetWorkerStatus", request, timeout)


def _tier(tier: Tier | None) -> int:
    """A Tier value from the enum or its short name ("device", "host", "source")."""
    if tier is None:
        return worker_pb.TIER_UNSPECIFIED
    if isinstance(tier, str):
        name = f"TIER_{tier.upper()}"
        if name not in worker_pb.Tier.DESCRIPTOR.values_by_name:
            raise InvalidArgument(f"tier: {tier!r} is not device, host or source")
        return worker_pb.Tier.Value(name)
    return tier
