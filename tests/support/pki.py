"""Certificates the tests make (trustme): one CA, a certificate per component, and
TlsConfig objects built from PEM files, as the command-line options would build them.
The `pki` and `other_pki` fixtures (tests/conftest.py) hand out fresh CAs."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib

import trustme

from lorafleet.runtime.tls import TlsConfig

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclasses.dataclass
class Pki:
    """A CA and the files of the certificates it issued, under `folder`."""

    ca: trustme.CA
    folder: pathlib.Path

    @property
    def ca_file(self) -> pathlib.Path:
        """The CA certificate as a PEM file."""
        path = self.folder / "ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return path

    def issue(self, name: str, **options) -> tuple[pathlib.Path, pathlib.Path]:
        """(certificate chain, key) files of a loopback certificate with common name
        `name`; `options` go to trustme (not_before, not_after)."""
        leaf = self.ca.issue_cert(*LOOPBACK_NAMES, common_name=name, **options)
        slug = name.replace(":", "-").replace("/", "-")
        cert, key = self.folder / f"{slug}.pem", self.folder / f"{slug}.key"
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return cert, key

    def component(self, name: str, **options) -> TlsConfig:
        """A component's TlsConfig: its certificate both ways, trusting this CA (mTLS)."""
        cert, key = self.issue(name, **options)
        return TlsConfig.from_files(cert, key, self.ca_file)

    def client(self, name: str | None = None) -> TlsConfig:
        """A client trusting this CA, with a certificate named `name` (None: no certificate)."""
        if name is None:
            return TlsConfig.from_files(ca=self.ca_file)
        cert, key = self.issue(name)
        return TlsConfig.from_files(cert, key, self.ca_file)


def expired(pki: Pki, name: str) -> TlsConfig:
    """A component certificate that expired yesterday."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return pki.component(name, not_before=now - datetime.timedelta(days=3),
                         not_after=now - datetime.timedelta(days=1))
