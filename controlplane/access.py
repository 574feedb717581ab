"""How a control-plane replica checks its callers and identifies itself to workers.

Keys come from etcd (`lorafleet key create`) and, optionally, a bootstrap file of key
records (the first admin key, before any is in etcd). The replica calls workers as
itself: with its TLS client certificate when it has one (no key leaves it), else with its
own key (`api_key`, of role controlplane: never an admin key, which any worker could
replay), so workers that check keys accept its LoadAdapter.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

from lorafleet.control.v1 import access_service_pb2
from lorafleet.control.v1 import access_service_pb2_grpc as access_grpc
from lorafleet.controlplane.api_access import AccessServicer, EtcdKeyStore, WorkerBindings
from lorafleet.controlplane.store import EtcdStore
from lorafleet.runtime import rpcserver
from lorafleet.runtime.auth import AuthInterceptor, FileKeyStore, KeyVerifier
from lorafleet.runtime.auth.keys import InvalidKeyRecord
from lorafleet.runtime.auth.policy import CONTROL_PLANE_METHODS
from lorafleet.runtime.auth.startup import INSECURE_WARNING
from lorafleet.runtime.auth.stores import ChainKeyStore, read_key_file
from lorafleet.runtime.startup import StartupError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """Whether callers are checked, the bootstrap key file, and the replica's own key."""

    is_on: bool = False  # tests start replicas without auth; the command line turns it on
    keys_file: str | None = None
    api_key: str | None = None  # a controlplane key, sent to workers without mTLS


class ControlPlaneAuth:
    """The key store, verifier, interceptor and AccessService of one replica."""

    def __init__(self, store: EtcdStore, config: AuthConfig):
        self.config = config
        self.keys = EtcdKeyStore(store)
        file_keys = FileKeyStore(config.keys_file) if config.keys_file else None
        self.verifier = KeyVerifier(ChainKeyStore(*filter(None, (file_keys, self.keys))))
        self.servicer = AccessServicer(store, self.keys, self.verifier, file_keys)
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


def auth_config_from_args(args) -> AuthConfig:
    """The AuthConfig of `lorafleet controlplane`'s options (see add_auth_arguments);
    StartupError when no key configuration is given and auth is not explicitly off."""
    if args.insecure_no_auth:
        log.warning(INSECURE_WARNING)
        return AuthConfig(is_on=False, api_key=args.api_key)
    if not (args.auth_keys or args.api_key):
        raise StartupError(
            "no key configuration: give --auth-keys FILE (key records, e.g. the first admin "
            "key from 'lorafleet key hash --role admin') and/or --api-key KEY (this "
            "replica's controlplane key, sent to workers), or --insecure-no-auth to serve without "
            "checking callers (see docs/security.md)")
    if args.auth_keys:
        try:
            read_key_file(pathlib.Path(args.auth_keys))
        except (OSError, InvalidKeyRecord) as error:
            raise StartupError(f"--auth-keys: {error}") from error
    if not args.api_key:
        log.warning("no --api-key: workers that check keys will refuse this control "
                    "plane's LoadAdapter, EvictAdapter and ValidateAdapter")
    return AuthConfig(is_on=True, keys_file=args.auth_keys, api_key=args.api_key)
