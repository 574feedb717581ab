"""The one auth interceptor every lorafleet server runs.

It reads `authorization: Bearer <key>` from the call's metadata, asks a verifier for
the principal, checks the method's roles in a policy table, and makes the principal
current (contextvars) for the servicer. No key or an invalid one: UNAUTHENTICATED. A
role the table does not list: PERMISSION_DENIED. A gateway or admin caller may add
`x-lorafleet-tenant: <name>` to act for that tenant (the gateway vouching for the caller
it authenticated); from anyone else the header is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import grpc

from lorafleet.runtime.auth.policy import Table, is_public
from lorafleet.runtime.auth.principals import Principal, Role, current_principal, set_principal
from lorafleet.runtime.rpcserver import relay, settle
from lorafleet.runtime.tls import TlsConfig, peer_identity

TENANT_HEADER = "x-lorafleet-tenant"
_VOUCHERS = (Role.GATEWAY, Role.ADMIN)


class Verifier(Protocol):
    """Anything that turns a presented key into a principal (None: not a valid key)."""

    async def verify(self, key: str) -> Principal | None:
        """The key's principal, or None."""


class VerifierUnavailable(RuntimeError):
    """The verifier could not decide now (e.g. the control plane is unreachable)."""


def bearer(key: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `key` (empty without one)."""
    return (("authorization", f"Bearer {key}"),) if key else ()


def key_of(metadata) -> str | None:
    """The bearer key in call metadata, or None."""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, key = value.partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return key.strip()
    return None


def vouched_for(principal: Principal, metadata) -> Principal:
    """The tenant a gateway or admin caller acts for (x-lorafleet-tenant), else itself."""
    if principal.role not in _VOUCHERS:
        return principal
    tenant = next((v for k, v in metadata or () if k == TENANT_HEADER), "")
    if not tenant:
        return principal
    return Principal(Role.TENANT, tenant, principal.key_id, via=principal)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorizes every call before its servicer runs."""

    def __init__(self, verifier: Verifier, policy: Table):
        self.verifier = verifier
        self.policy = policy
        # Told of every call refused here, (method, status code): a server's request
        # metrics count these calls, which its servicer never sees.
        self.refusal_observers: list[Callable[[str, grpc.StatusCode], None]] = []

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_public(method):
            return handler
        admit = _Admission(self, method, handler_call_details.invocation_metadata)
        if handler.request_streaming and handler.response_streaming:
            return handler._replace(stream_stream=_guard_stream(admit, handler.stream_stream))
        if handler.request_streaming:
            return handler._replace(stream_unary=_guard_unary(admit, handler.stream_unary))
        if handler.response_streaming:
            return handler._replace(unary_stream=_guard_stream(admit, handler.unary_stream))
        return handler._replace(unary_unary=_guard_unary(admit, handler.unary_unary))


    async def principal_of(self, metadata) -> Principal | None:
        """The principal call `metadata` authenticates as (x-lorafleet-tenant applied),
        None without a valid key; VerifierUnavailable when the verifier cannot tell now.
        For endpoints outside gRPC (the OpenAI HTTP model list) that need the same answer."""
        key = key_of(metadata)
        principal = await self.verifier.verify(key) if key is not None else None
        return None if principal is None else vouched_for(principal, metadata)


def auth_of(interceptors) -> AuthInterceptor | None:
    """The AuthInterceptor among a server's interceptors, or None (auth off)."""
    return next((i for i in interceptors if isinstance(i, AuthInterceptor)), None)


class _Admission:
    """The checks of one call, run inside its handler (where it can abort)."""

    def __init__(self, interceptor: AuthInterceptor, method: str, metadata):
        self.interceptor, self.method, self.metadata = interceptor, method, metadata

    async def __call__(self, context: grpc.aio.ServicerContext) -> None:
        key = key_of(self.metadata)
        if key is None:
            principal = certified_principal(peer_identity(context))
            if principal is None:
                await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                                   "no API key: send metadata 'authorization: Bearer <key>'")
        else:
            try:
                principal = await self.interceptor.verifier.verify(key)
            except VerifierUnavailable as error:
                await self._refuse(context, grpc.StatusCode.UNAVAILABLE,
                                   f"cannot check the API key: {error}")
            if principal is None:
                await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                                   "invalid or revoked API key")
        principal = vouched_for(principal, self.metadata)
        if principal.role not in self.interceptor.policy.get(self.method, ()):
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                               f"role {principal.role.value} may not call {self.method}")
        set_principal(principal)  # each RPC runs in its own task: no reset needed

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                      details: str) -> None:
        for observe in self.interceptor.refusal_observers:
            observe(self.method, code)
        await context.abort(code, details)


# A client certificate (verified by the server's --tls-ca) names its component's role first:
# "worker:ID", "gateway:ID", "controlplane:ID" (it commands workers, nothing more), "admin".
_CERTIFIED_ROLES = {"worker": Role.WORKER, "gateway": Role.GATEWAY,
                    "controlplane": Role.CONTROLPLANE, "admin": Role.ADMIN}


def certified_principal(identity: str | None) -> Principal | None:
    """The principal a verified client certificate's identity names, or None (no
    certificate, or a name that is not a component's)."""
    if not identity:
        return None
    kind, _, name = identity.partition(":")
    role = _CERTIFIED_ROLES.get(kind)
    if role is None or (kind != "admin" and not name):
        return None
    return Principal(role, key_id=f"cert:{identity}")


def _guard_unary(admit: _Admission, behavior):
    async def guarded(request, context):
        await admit(context)
        return await settle(behavior(request, context))

    return guarded


def _guard_stream(admit: _Admission, behavior):
    async def guarded(request, context):
        await admit(context)
        async for response in relay(behavior(request, context)):
            yield response

    return guarded


def own_metadata(tls: TlsConfig, key: str | None) -> tuple[tuple[str, str], ...]:
    """What a component sends with its calls to another component: nothing when it
    presents a TLS client certificate (the peer verifies it, and a receiver cannot replay
    a certificate), else its own key. Over plaintext a key is a bearer credential that the
    receiving peer could replay: run components over mTLS (docs/security.md)."""
    return () if tls.certificate_chain else bearer(key)


def on_behalf_of_caller(caller_metadata, own: tuple[tuple[str, str], ...], *,
                        is_auth_on: bool) -> tuple[tuple[str, str], ...]:
    """Metadata for a call a gateway makes for its caller: its own identity (`own`, see
    own_metadata) and, for a tenant caller, the tenant it vouches for; the worker then
    applies the tenant's rules itself. The caller's key never goes further. With auth off,
    the caller's own authorization goes through unchanged."""
    if not is_auth_on:
        return tuple((k, v) for k, v in caller_metadata or () if k == "authorization")
    principal = current_principal()
    if principal is not None and principal.role is Role.TENANT:
        return (*own, (TENANT_HEADER, principal.tenant))
    return own
