"""How a control-plane replica checks its callers and identifies itself to workers.

Keys come from etcd (`lorafleet key create`) and, optionally, a bootstrap file of key
records (the first admin key, before any is in etcd). The replica calls workers with its
own key (`api_key`, an admin key), so workers that check keys accept its LoadAdapter.
"""

from __future__ import annotations

import dataclasses

from lorafleet import rpcserver
from lorafleet.auth import AuthInterceptor, FileKeyStore, KeyVerifier
from lorafleet.auth.policy import CONTROL_PLANE_METHODS
from lorafleet.auth.stores import ChainKeyStore
from lorafleet.control.v1 import access_service_pb2
from lorafleet.control.v1 import access_service_pb2_grpc as access_grpc
from lorafleet.controlplane.keys import AccessServicer, EtcdKeyStore, WorkerBindings
from lorafleet.controlplane.store import EtcdStore


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """Whether callers are checked, the bootstrap key file, and the replica's own key."""

    is_on: bool = False  # tests start replicas without auth; the command line turns it on
    keys_file: str | None = None
    api_key: str | None = None  # sent to workers (LoadAdapter, ValidateAdapter, ...)


class ControlPlaneAuth:
    """The key store, verifier, interceptor and AccessService of one replica."""

    def __init__(self, store: EtcdStore, config: AuthConfig):
        self.config = config
        self.keys = EtcdKeyStore(store)
        stores = (FileKeyStore(config.keys_file), self.keys) if config.keys_file else (self.keys,)
        self.verifier = KeyVerifier(ChainKeyStore(*stores))
        self.servicer = AccessServicer(store, self.keys, self.verifier)
        self.bindings = WorkerBindings(store, self.verifier.store)

    def binding(self) -> rpcserver.ServiceBinding:
        """AccessService, to serve beside the others."""
        return rpcserver.ServiceBinding(
            access_grpc.add_AccessServiceServicer_to_server, self.servicer,
            rpcserver.full_name(access_service_pb2, "AccessService"))

    def security(self, base: rpcserver.ServerSecurity) -> rpcserver.ServerSecurity:
        """`base` (TLS) plus the auth interceptor when auth is on."""
        if not self.config.is_on:
            return base
        interceptor = AuthInterceptor(self.verifier, CONTROL_PLANE_METHODS)
        return dataclasses.replace(base, interceptors=(*base.interceptors, interceptor))

    async def start(self) -> None:
        """Reads the stored keys and keeps them current."""
        await self.keys.start()

    async def stop(self) -> None:
        """Stops refreshing keys."""
        await self.keys.stop()
