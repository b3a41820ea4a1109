"""A throwaway certificate authority for serving the sandbox over mutual TLS.

Everything is generated on the spot with `cryptography` into a directory the
caller owns (a test's tmp_path); no key is ever shipped with the code. The CA
issues one server certificate for 127.0.0.1 and localhost, and any number of
client certificates, identified by their subject's common name.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = timedelta(days=1)


@dataclass(frozen=True)
class IssuedCertificate:
    """Where a certificate and its private key were written, and its subject."""

    cert_file: Path
    key_file: Path
    subject: str


class TestAuthority:
    """A CA whose certificate (`ca_file`) clients and the sandbox both trust."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, directory: Path, name: str = "job sandbox test CA") -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        self._subject = subject
        builder = _builder(subject, subject, self._key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        self._cert = builder.sign(self._key, hashes.SHA256())
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue_server(self) -> IssuedCertificate:
        """A certificate for the loopback names the sandbox listens on."""
        names = x509.SubjectAlternativeName(
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH

        return self._issue("server", "localhost", names, usage)

    def issue_client(self, common_name: str) -> IssuedCertificate:
        """A client certificate whose subject is ``CN=<common_name>``."""
        return self._issue(
            f"client-{common_name}", common_name, None, ExtendedKeyUsageOID.CLIENT_AUTH
        )

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """The sandbox's TLS context: its certificate, and client certs checked.

        Required: a client without a certificate signed by this CA cannot even
        connect. Optional: one may connect without, but any it presents is
        verified, so secret-based clients keep working over HTTPS.
        """
        server = self.issue_server()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(server.cert_file, server.key_file)
        context.load_verify_locations(self.ca_file)
        context.verify_mode = (
            ssl.CERT_REQUIRED if require_client_cert else (ssl.CERT_OPTIONAL)
        )

        return context

    def _issue(
        self,
        stem: str,
        common_name: str,
        names: x509.SubjectAlternativeName | None,
        usage: x509.ObjectIdentifier,
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(common_name)
        builder = _builder(subject, self._subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if names is not None:
            builder = builder.add_extension(names, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file = self.directory / f"{stem}.pem"
        key_file = self.directory / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(key_file, key)

        return IssuedCertificate(cert_file, key_file, subject.rfc4514_string())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write an unencrypted PKCS#8 PEM key readable by its owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )
