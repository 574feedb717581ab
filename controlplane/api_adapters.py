"""AdapterService: a thin translation between messages and the registry."""

from __future__ import annotations

from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.control.v1 import adapter_service_pb2_grpc as adapter_grpc
from lorafleet.controlplane.audit import audited
from lorafleet.controlplane.errors import PermissionDenied
from lorafleet.controlplane.registry import AdapterRegistry
from lorafleet.controlplane.rollouts import RolloutManager
from lorafleet.runtime.auth import Role, current_principal
from lorafleet.runtime.error_status import unary_errors


class AdapterServicer(adapter_grpc.AdapterServiceServicer):
    """Serves the adapter registry over gRPC."""

    def __init__(self, registry: AdapterRegistry, rollouts: RolloutManager):
        self.registry = registry
        self.rollouts = rollouts
        self.store = registry.store  # where @audited records changes

    @unary_errors
    @audited("CreateAdapter", lambda r: r.adapter.name)
    async def CreateAdapter(self, request, context):
        """Registers an adapter."""
        adapter = await self.registry.create_adapter(request.adapter)
        return adapter_pb.CreateAdapterResponse(adapter=adapter)

    @unary_errors
    async def GetAdapter(self, request, context):
        """An adapter with its versions and rollout."""
        adapter = await self.registry.get_adapter(request.name)
        versions = await self.registry.list_versions(request.name)
        rollout = await self.registry.get_rollout(request.name)
        return adapter_pb.GetAdapterResponse(adapter=adapter, versions=versions, rollout=rollout)

    @unary_errors
    async def ListAdapters(self, request, context):
        """Adapters in name order."""
        adapters = await self.registry.list_adapters(request.tenant)
        return adapter_pb.ListAdaptersResponse(adapters=adapters)

    @unary_errors
    @audited("DeleteAdapter", lambda r: r.name)
    async def DeleteAdapter(self, request, context):
        """Deletes an adapter that receives no traffic."""
        await self.registry.delete_adapter(request.name)
        return adapter_pb.DeleteAdapterResponse()

    @unary_errors
    @audited("CreateAdapterVersion", lambda r: r.adapter)
    async def CreateAdapterVersion(self, request, context):
        """Adds a version, validated by a worker when one is up. A tenant needs a key that
        allows it, and its own adapter (another tenant's is NOT_FOUND, as if absent)."""
        principal = current_principal()
        if principal is not None and principal.role is Role.TENANT:
            await self.registry.get_adapter(request.adapter)
            if not principal.can_create_versions:
                raise PermissionDenied("this tenant key may not create versions; ask an "
                                       "admin for a key made with --can-create-versions")
        version = await self.registry.create_version(request.adapter, request.source_uri)
        return adapter_pb.CreateAdapterVersionResponse(version=version)

    @unary_errors
    async def ListAdapterVersions(self, request, context):
        """An adapter's versions, oldest first."""
        versions = await self.registry.list_versions(request.adapter)
        return adapter_pb.ListAdapterVersionsResponse(versions=versions)

    @unary_errors
    @audited("UpdateRollout", lambda r: r.adapter)
    async def UpdateRollout(self, request, context):
        """Sets a new traffic split."""
        rollout = await self.rollouts.update(request.adapter, request.weights)
        return adapter_pb.UpdateRolloutResponse(rollout=rollout)

    @unary_errors
    @audited("RollbackRollout", lambda r: r.adapter)
    async def RollbackRollout(self, request, context):
        """Restores the previous traffic split."""
        rollout = await self.rollouts.rollback(request.adapter)
        return adapter_pb.RollbackRolloutResponse(rollout=rollout)
