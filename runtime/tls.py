"""TLS for every lorafleet server and client: certificates from PEM files, the command-line
options that name them (one definition, used by every command), and the identity a client
certificate proves.

A component (worker, gateway, control plane) uses one certificate both ways: it serves
with it, and presents it as its client certificate when it calls another component.
`--tls-ca` names the CA that signed the other components: a server requires and verifies
client certificates signed by it (mTLS), and a component's own calls trust it.

    tls = TlsConfig.from_args(args)               # after add_server_tls_arguments(parser)
    security = ServerSecurity(credentials=tls.server_credentials())
    channel = tls.aio_channel("127.0.0.1:50051")  # plaintext when tls is PLAINTEXT_TLS

Imports grpc and the standard library only, so clients may use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import ssl
from collections.abc import Sequence
from typing import Any

import grpc

CLIENT_AUTH_CHOICES = ("require", "none")


class TlsFileError(ValueError):
    """A certificate, key or CA file is missing, unreadable or not PEM; names the option."""


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """PEM bytes of this side's certificate chain and key, and of the CA it trusts.

    No certificate and no CA: plaintext. A server needs the certificate and key; with a
    CA and `require_client_cert` it refuses callers without a certificate the CA signed.
    A client with a CA trusts only that CA (without one, the system's roots); with its own
    certificate and key it presents them (mTLS).
    """

    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    root_certificates: bytes | None = None
    require_client_cert: bool = True
    is_tls: bool = False  # a client asked for TLS with the system's roots (--tls)
    # The files of the certificate and key, for HTTPS (ssl loads them from files).
    cert_path: pathlib.Path | None = None
    key_path: pathlib.Path | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise TlsFileError("--tls-cert and --tls-key go together")

    @property
    def is_enabled(self) -> bool:
        """Whether connections are TLS at all."""
        return bool(self.is_tls or self.certificate_chain or self.root_certificates)

    @classmethod
    def from_files(cls, cert: str | pathlib.Path | None = None,
                   key: str | pathlib.Path | None = None,
                   ca: str | pathlib.Path | None = None, *,
                   require_client_cert: bool = True, is_tls: bool = False) -> TlsConfig:
        """Reads the PEM files (None: not given); TlsFileError names a bad one."""
        return cls(_read_pem(cert, "--tls-cert"), _read_pem(key, "--tls-key"),
                   _read_pem(ca, "--tls-ca"), require_client_cert, is_tls,
                   pathlib.Path(cert) if cert else None, pathlib.Path(key) if key else None)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TlsConfig:
        """The config the TLS options of `args` describe (server or client options)."""
        return cls.from_files(
            args.tls_cert, args.tls_key, args.tls_ca,
            require_client_cert=getattr(args, "tls_client_auth", "require") == "require",
            is_tls=getattr(args, "tls", False))

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for serving (None: plaintext). A CA without a certificate is an
        error: a server cannot verify clients over a connection it does not encrypt."""
        if self.certificate_chain is None:
            if self.root_certificates is not None:
                raise TlsFileError("--tls-ca needs --tls-cert and --tls-key on a server")
            return None
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=self.root_certificates is not None and self.require_client_cert)

    def http_ssl_context(self) -> ssl.SSLContext | None:
        """Server-side TLS for an HTTP port with the same certificate (None: plain HTTP,
        also when the certificate was given as bytes only). HTTP callers authenticate
        with API keys, so no client certificate is asked for."""
        if self.cert_path is None or self.key_path is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials for calling a server (None: plaintext)."""
        if not self.is_enabled:
            return None
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain)

    def aio_channel(self, address: str,
                    options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to `address`, TLS or plaintext as configured."""
        credentials = self.channel_credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=list(options))
        return grpc.aio.secure_channel(address, credentials, options=list(options))


PLAINTEXT_TLS = TlsConfig()


def _read_pem(path: str | pathlib.Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{option} {path}: cannot read ({exc.strerror or exc})") from exc
    if b"-----BEGIN " not in data:
        raise TlsFileError(f"{option} {path}: not a PEM file")
    return data


def add_server_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls-cert, --tls-key, --tls-ca and --tls-client-auth, for every server command."""
    group = parser.add_argument_group(
        "TLS", "serve over TLS; with --tls-ca, require client certificates (mTLS) and "
               "call the other components over TLS too (docs/security.md)")
    group.add_argument("--tls-cert", metavar="PEM",
                       help="this server's certificate chain; also presented as its client "
                            "certificate when it calls another component (default: plaintext)")
    group.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    group.add_argument("--tls-ca", metavar="PEM",
                       help="CA that signs the other components: incoming callers must "
                            "present a certificate it signed, outgoing calls trust it")
    group.add_argument("--tls-client-auth", choices=CLIENT_AUTH_CHOICES, default="require",
                       help="with --tls-ca: 'require' a client certificate (default), or "
                            "'none' for a port whose callers authenticate with API keys only "
                            "(outgoing calls still trust --tls-ca)")


def add_client_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls, --tls-ca, --tls-cert and --tls-key, for every client command."""
    group = parser.add_argument_group("TLS", "reach the server over TLS (docs/security.md)")
    group.add_argument("--tls", action="store_true",
                       help="use TLS, trusting the system's CAs (implied by --tls-ca)")
    group.add_argument("--tls-ca", metavar="PEM",
                       help="trust only this CA (e.g. the one `lorafleet up --tls` made)")
    group.add_argument("--tls-cert", metavar="PEM",
                       help="client certificate, for servers that require one (mTLS)")
    group.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")


def peer_identity(context: Any) -> str | None:
    """Who the caller's verified client certificate says it is, or None without one.

    `context` is a grpc (or grpc.aio) ServicerContext. The identity is the certificate's
    subject common name, or its first subject alternative name when it has no common name.
    gRPC fills these only after verifying the chain against the server's --tls-ca, so a
    plaintext caller or a server without mTLS yields None. Certificates made by
    `lorafleet up --tls` name their role first: "worker:ID", "gateway:ID",
    "controlplane:ID", "admin" (docs/security.md, "Identities from certificates").
    """
    auth = context.auth_context() or {}
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(key) or []
        if values:
            value = values[0]
            return value.decode() if isinstance(value, bytes) else str(value)
    return None
