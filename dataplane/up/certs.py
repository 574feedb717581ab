"""`lorafleet up --tls`: a local CA and one certificate per part of the fleet, made with
`cryptography` under DATA_DIR/tls/ (new every session; keys readable by this user only).

Every certificate names 127.0.0.1, localhost and the --host address, serves as both a
server and a client certificate, and says who holds it in its common name ("controlplane:
controlplane-0", "gateway:gateway", "worker:worker-0", "admin"), which is what
`lorafleet.runtime.tls.peer_identity` reads. The control plane and the workers require client
certificates (mTLS); the gateway's callers authenticate with API keys over TLS.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

VALID_DAYS = 30
ADMIN = "admin"


@dataclasses.dataclass(frozen=True)
class UpTls:
    """The session's TLS files (None: plaintext), and the flags and clients they make."""

    folder: pathlib.Path | None = None

    @property
    def is_on(self) -> bool:
        """Whether the session runs TLS."""
        return self.folder is not None

    @property
    def ca(self) -> pathlib.Path:
        """The CA certificate every part and client trusts."""
        return self._file("ca.pem")

    def cert(self, name: str) -> tuple[pathlib.Path, pathlib.Path]:
        """(certificate, key) of the part `name` ("controlplane", "gateway", a worker, "admin")."""
        return self._file(f"{name}.pem"), self._file(f"{name}.key")

    def server_args(self, name: str, *, require_client_cert: bool = True) -> list[str]:
        """The TLS flags of the part `name` (none when TLS is off)."""
        if not self.is_on:
            return []
        cert, key = self.cert(name)
        argv = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca)]
        return argv if require_client_cert else [*argv, "--tls-client-auth", "none"]

    def client_args(self, *, with_cert: bool) -> list[str]:
        """Client command flags: the CA, and with `with_cert` the admin certificate."""
        if not self.is_on:
            return []
        cert, key = self.cert(ADMIN)
        extra = ["--tls-cert", str(cert), "--tls-key", str(key)] if with_cert else []
        return ["--tls-ca", str(self.ca), *extra]

    def client(self) -> TlsConfig:
        """How `up` itself calls the fleet: as admin, with the admin certificate."""
        if not self.is_on:
            return PLAINTEXT_TLS
        cert, key = self.cert(ADMIN)
        return TlsConfig.from_files(cert, key, self.ca)

    def _file(self, name: str) -> pathlib.Path:
        if self.folder is None:
            raise ValueError("TLS is off in this session")
        return self.folder / name


PLAINTEXT_UP = UpTls()


def make_up_certs(data_dir: pathlib.Path, names: Iterable[str], host: str) -> UpTls:
    """A new CA and a certificate for each of `names` and for "admin", under
    DATA_DIR/tls/."""
    folder = data_dir / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lorafleet up local CA")])
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key(), now)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(is_ca=True), critical=True)
               .sign(ca_key, hashes.SHA256()))
    _write(folder / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    alt_names = _alt_names(host)
    for name in [*names, ADMIN]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _identity(name))])
        cert = (_builder(subject, ca_name, key.public_key(), now)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(is_ca=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(folder / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM),
               private=False)
        _write(folder / f"{name}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), private=True)
    return UpTls(folder)


def _identity(name: str) -> str:
    """The common name: the role first, then the part's name ("admin" alone)."""
    if name == ADMIN:
        return ADMIN
    role = name if name in ("controlplane", "gateway") else "worker"
    return f"{role}:{name}"


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now: datetime.datetime):
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))


def _key_usage(*, is_ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not is_ca, key_cert_sign=is_ca,
        crl_sign=is_ca, encipher_only=False, decipher_only=False)


def _alt_names(host: str) -> list[x509.GeneralName]:
    """127.0.0.1, localhost and `host` (an IP address or a DNS name; a wildcard bind
    address is not a name anyone dials)."""
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.DNSName("localhost")]
    if host in ("", "0.0.0.0", "::", "127.0.0.1", "localhost"):
        return names
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    return names


def _write(path: pathlib.Path, data: bytes, *, private: bool) -> None:
    """Writes `data`; a private key with mode 0600 from the start."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
