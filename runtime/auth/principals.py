"""Who is calling: a principal (role, and the tenant for a tenant), and where servicers
read it.

The auth interceptor sets the principal of each RPC in a context variable before the
servicer runs; servicers ask `current_principal()`. None means the server runs without
auth (`--insecure-no-auth`, or a programmatic start in tests): every check passes.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum


class Role(enum.Enum):
    """What a key may do; docs/security.md has the table of RPCs per role."""

    ADMIN = "admin"  # every RPC
    TENANT = "tenant"  # its own adapters and the base model
    WORKER = "worker"  # heartbeats, checking its callers' keys
    GATEWAY = "gateway"  # routing table, proxying on behalf of callers, on-demand placement
    CONTROLPLANE = "controlplane"  # commands to workers: the control plane towards workers


ROLE_NAMES = tuple(role.value for role in Role)


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller. `tenant` is set for tenants only; `key_id` names the key
    (for audit and for binding a worker id to its key); `via` is the gateway or admin
    principal that vouched for a tenant (x-lorafleet-tenant), None for a direct call."""

    role: Role
    tenant: str = ""
    key_id: str = ""
    can_create_versions: bool = False
    via: Principal | None = None

    def owns(self, adapter_name: str) -> bool:
        """Whether this caller may see `adapter_name` ("tenant/name"): everyone but a
        tenant sees every adapter; a tenant sees its own."""
        return self.role is not Role.TENANT or adapter_name.startswith(f"{self.tenant}/")

    def describe(self) -> str:
        """"admin", "tenant:acme", … with the key id, as written in the audit trail."""
        who = f"tenant:{self.tenant}" if self.role is Role.TENANT else self.role.value
        text = f"{who} (key {self.key_id})" if self.key_id else who
        return f"{text} via {self.via.describe()}" if self.via is not None else text


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "lorafleet_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the RPC being served, or None when the server runs without auth."""
    return _CURRENT.get()


def set_principal(principal: Principal | None) -> contextvars.Token:
    """Makes `principal` current for this RPC (the interceptor's job; tests use it too)."""
    return _CURRENT.set(principal)


def can_see(adapter_name: str) -> bool:
    """Whether the current caller may see `adapter_name` (True without auth)."""
    principal = current_principal()
    return principal is None or principal.owns(adapter_name)


def tenant_scope() -> str | None:
    """The tenant the current caller is confined to, or None for every tenant."""
    principal = current_principal()
    if principal is None or principal.role is not Role.TENANT:
        return None
    return principal.tenant
