"""Key and audit calls on Client and AsyncClient (AccessService on a control plane,
admin keys only). Each returns the RPC's protobuf response (an awaitable of it on
AsyncClient) and raises the typed errors of `errors`."""

from __future__ import annotations

import datetime

from google.protobuf import timestamp_pb2

from lorafleet.clients.errors import InvalidArgument
from lorafleet.control.v1 import access_service_pb2 as access_pb

ROLES = {"admin": access_pb.ROLE_ADMIN, "tenant": access_pb.ROLE_TENANT,
         "worker": access_pb.ROLE_WORKER, "gateway": access_pb.ROLE_GATEWAY,
         "controlplane": access_pb.ROLE_CONTROLPLANE}


class AccessCalls:
    """One method per AccessService RPC; `timeout` overrides the default deadline."""

    def _unary(self, service: str, rpc: str, request, timeout: float | None):
        raise NotImplementedError

    def create_key(self, role: str, *, tenant: str = "", can_create_versions: bool = False,
                   timeout: float | None = None) -> access_pb.CreateKeyResponse:
        """A new key for `role` ("admin", "tenant", "worker", "gateway"); the reply's
        `key` is the secret, shown this once."""
        if role not in ROLES:
            raise InvalidArgument(f"role: {role!r} is not one of {', '.join(ROLES)}")
        request = access_pb.CreateKeyRequest(role=ROLES[role], tenant=tenant,
                                             can_create_versions=can_create_versions)
        return self._unary("access", "CreateKey", request, timeout)

    def list_keys(self, *, timeout: float | None = None) -> access_pb.ListKeysResponse:
        """The stored keys (ids, roles, tenants, times; never secrets)."""
        return self._unary("access", "ListKeys", access_pb.ListKeysRequest(), timeout)

    def revoke_key(self, key_id: str, *, timeout: float | None = None
                   ) -> access_pb.RevokeKeyResponse:
        """Revokes a key: every server refuses it within a second."""
        return self._unary("access", "RevokeKey", access_pb.RevokeKeyRequest(key_id=key_id),
                           timeout)

    def list_audit_entries(self, *, since: datetime.datetime | None = None,
                           timeout: float | None = None) -> access_pb.ListAuditEntriesResponse:
        """Recorded admin changes at or after `since` (all without), oldest first."""
        request = access_pb.ListAuditEntriesRequest()
        if since is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(since.astimezone(datetime.timezone.utc))
            request.since.CopyFrom(stamp)
        return self._unary("access", "ListAuditEntries", request, timeout)
