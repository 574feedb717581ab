"""Who may call what: principals and roles, API keys (argon2id hashes), key stores, and
the one interceptor every lorafleet server runs (docs/security.md).

Imports grpc, the stubs and argon2 only: no torch, no etcd (the control plane keeps its
etcd key store in lorafleet.controlplane.api_access)."""

from lorafleet.runtime.auth.interceptor import (
    TENANT_HEADER,
    AuthInterceptor,
    bearer,
    key_of,
    own_metadata,
)
from lorafleet.runtime.auth.keys import KeyRecord, make_key
from lorafleet.runtime.auth.principals import (
    Principal,
    Role,
    can_see,
    current_principal,
    tenant_scope,
)
from lorafleet.runtime.auth.stores import FileKeyStore, MemoryKeyStore
from lorafleet.runtime.auth.verify import KeyVerifier

__all__ = [
    "TENANT_HEADER", "AuthInterceptor", "FileKeyStore", "KeyRecord", "KeyVerifier",
    "MemoryKeyStore", "Principal", "Role", "bearer", "can_see", "current_principal",
    "key_of", "make_key", "own_metadata", "tenant_scope",
]
