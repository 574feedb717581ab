"""Auth on the command line of every server: the options, and the interceptor they make.

Auth is on by default: a server started from the command line needs a key
configuration, or `--insecure-no-auth` said out loud (and logged as a warning).

    add_auth_arguments(parser, remote=True)
    interceptors = auth_interceptors(args, policy.WORKER_METHODS, controlplanes=[...])
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from lorafleet.runtime.auth.interceptor import AuthInterceptor
from lorafleet.runtime.auth.keys import InvalidKeyRecord
from lorafleet.runtime.auth.policy import Table
from lorafleet.runtime.auth.remote import RemoteVerifier
from lorafleet.runtime.auth.stores import FileKeyStore
from lorafleet.runtime.auth.verify import KeyVerifier
from lorafleet.runtime.startup import StartupError
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

log = logging.getLogger(__name__)
API_KEY_ENV = "LORAFLEET_API_KEY"
INSECURE_WARNING = ("AUTH IS OFF (--insecure-no-auth): anyone who reaches this port can "
                    "generate with any adapter and change anything; use it only on a "
                    "machine you alone can reach")


def add_auth_arguments(parser: argparse.ArgumentParser, *, own_key: str | None) -> None:
    """--auth-keys, --insecure-no-auth and, when `own_key` says what this server does with
    it, --api-key (default $LORAFLEET_API_KEY)."""
    group = parser.add_argument_group("authentication (docs/security.md)")
    group.add_argument("--auth-keys", metavar="FILE",
                       help="check callers' API keys against this file of key records (JSON "
                            "lines from 'lorafleet key hash'); re-read when it changes")
    if own_key is not None:
        group.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), metavar="KEY",
                           help=f"this server's own key (default: ${API_KEY_ENV}): {own_key}")
    group.add_argument("--insecure-no-auth", action="store_true",
                       help="serve without checking callers: anyone reaching the port may do "
                            "anything. Without it, a key configuration is required")


def auth_interceptors(args: argparse.Namespace, policy: Table, *,
                      controlplanes: Sequence[str] = (),
                      tls: TlsConfig = PLAINTEXT_TLS) -> tuple[AuthInterceptor, ...]:
    """The interceptors the options ask for: a key file (--auth-keys), else the control
    plane checks keys (--api-key with `controlplanes`, reached with `tls`); none with
    --insecure-no-auth. StartupError when auth is neither configured nor explicitly off."""
    if args.insecure_no_auth:
        log.warning(INSECURE_WARNING)
        return ()
    if args.auth_keys:
        try:
            store = FileKeyStore(args.auth_keys)
        except (OSError, InvalidKeyRecord) as error:
            raise StartupError(f"--auth-keys: {error}") from error
        if controlplanes and not getattr(args, "api_key", None):
            log.warning("no --api-key: this server calls the control plane without a key, "
                        "and a control plane that checks keys refuses it")
        return (AuthInterceptor(KeyVerifier(store), policy),)
    if getattr(args, "api_key", None) and controlplanes:
        verifier = RemoteVerifier(controlplanes, args.api_key, open_channel=tls.aio_channel)
        return (AuthInterceptor(verifier, policy),)
    raise StartupError(missing_auth_message(remote=bool(controlplanes)))


def missing_auth_message(*, remote: bool) -> str:
    """The one line a server prints when started with no key configuration."""
    how = ("--auth-keys FILE, or --api-key KEY (this server's key; the control plane "
           "checks callers' keys)" if remote else "--auth-keys FILE")
    return (f"no key configuration: give {how}, or --insecure-no-auth to serve without "
            "checking callers (see docs/security.md)")
