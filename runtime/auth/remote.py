"""Checking keys through the control plane, for workers and gateways (no etcd there).

The server sends a presented key to AccessService.VerifyKey with its own key, and keeps
the answer for `ttl_seconds` (0.5 s: a revoked key fails within a second). When no
control plane answers, an answer already held is used for up to `stale_seconds`, so a
control-plane restart does not stop traffic of callers already seen; a key never seen
is refused with UNAVAILABLE until a control plane answers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import grpc

from lorafleet.control.v1 import access_service_pb2 as access_pb
from lorafleet.control.v1 import access_service_pb2_grpc as access_grpc
from lorafleet.runtime.auth.interceptor import VerifierUnavailable, bearer
from lorafleet.runtime.auth.principals import Principal, Role

ROLE_OF = {access_pb.ROLE_ADMIN: Role.ADMIN, access_pb.ROLE_TENANT: Role.TENANT,
           access_pb.ROLE_WORKER: Role.WORKER, access_pb.ROLE_GATEWAY: Role.GATEWAY,
           access_pb.ROLE_CONTROLPLANE: Role.CONTROLPLANE}
PROTO_ROLE = {role: number for number, role in ROLE_OF.items()}


def principal_of(api_key: access_pb.ApiKey) -> Principal | None:
    """The principal an ApiKey message describes (None for an unknown role)."""
    role = ROLE_OF.get(api_key.role)
    if role is None:
        return None
    return Principal(role, api_key.tenant, api_key.key_id, api_key.can_create_versions)


class RemoteVerifier:
    """A verifier that asks the control plane, caching answers briefly."""

    def __init__(self, controlplanes: Sequence[str], own_key: str, *,
                 ttl_seconds: float = 0.5, stale_seconds: float = 300.0,
                 timeout_seconds: float = 2.0, max_cached: int = 10_000,
                 open_channel: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel):
        if not controlplanes:
            raise ValueError("checking keys through the control plane needs its address")
        self.controlplanes = list(controlplanes)
        self.metadata = bearer(own_key)
        self.ttl_seconds, self.stale_seconds = ttl_seconds, stale_seconds
        self.timeout_seconds, self.max_cached = timeout_seconds, max_cached
        self._answers: dict[bytes, tuple[float, Principal | None]] = {}
        self._open_channel = open_channel  # e.g. TlsConfig.aio_channel, for TLS/mTLS
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def verify(self, key: str) -> Principal | None:
        """The key's principal, None when invalid; VerifierUnavailable when nobody knows."""
        digest = hashlib.sha256(key.encode()).digest()
        held = self._answers.get(digest)
        now = time.monotonic()
        if held is not None and now - held[0] < self.ttl_seconds:
            return held[1]
        try:
            principal = await self._ask(key)
        except VerifierUnavailable:
            if held is not None and now - held[0] < self.stale_seconds:
                return held[1]
            raise
        if len(self._answers) >= self.max_cached:
            self._answers.pop(next(iter(self._answers)))
        self._answers[digest] = (now, principal)
        return principal

    async def _ask(self, key: str) -> Principal | None:
        last = None
        for address in self.controlplanes:
            stub = access_grpc.AccessServiceStub(self._channel(address))
            try:
                reply = await stub.VerifyKey(access_pb.VerifyKeyRequest(key=key),
                                             metadata=self.metadata,
                                             timeout=self.timeout_seconds)
            except grpc.aio.AioRpcError as error:
                last = f"{address}: {error.code().name} {error.details()}"
                continue
            return principal_of(reply.api_key) if reply.is_valid else None
        raise VerifierUnavailable(f"no control plane answered ({last})")

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._open_channel(address)
        return channel

    async def close(self) -> None:
        """Closes the channels to the control planes."""
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
