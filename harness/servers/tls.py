"""Certificates made in the tests with ``cryptography``: CAs, leaves, broken variants."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.servers.system import service_tempdir, write_service_file

UTC = datetime.UTC


CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
"""What a CA (root or intermediate) may sign: certificates and CRLs."""


def now() -> datetime.datetime:
    """The current moment, timezone-aware."""
    return datetime.datetime.now(UTC)


def new_key(kind: str = "ec") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A fresh private key: EC P-256 (fast) or RSA 2048."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> str:
    """Unencrypted PKCS#8 PEM of ``key``."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def cert_pem(cert: x509.Certificate) -> str:
    """PEM of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class CertAuthority:
    """A CA able to sign leaves (and intermediates)."""

    name: str
    key: object
    cert: x509.Certificate
    issued: list[x509.Certificate] = field(default_factory=list)

    @property
    def pem(self) -> str:
        """The CA certificate in PEM."""
        return cert_pem(self.cert)

    def sign(
        self,
        public_key,
        common_name: str,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        is_ca: bool = False,
    ) -> x509.Certificate:
        """Issue a certificate for ``public_key``."""
        start = not_before or now() - datetime.timedelta(minutes=5)
        end = not_after or now() + datetime.timedelta(days=30)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if is_ca:
            builder = builder.add_extension(CA_KEY_USAGE, critical=True)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())  # type: ignore[arg-type]
        self.issued.append(cert)
        return cert

    def leaf(self, common_name: str = "localhost", **kwargs) -> Leaf:
        """A fresh key and a certificate for it."""
        key = new_key(kwargs.pop("kind", "ec"))
        if "dns" not in kwargs and "ips" not in kwargs:
            kwargs["dns"], kwargs["ips"] = ("localhost",), ("127.0.0.1",)
        return Leaf(key=key, cert=self.sign(key.public_key(), common_name, **kwargs), ca=self)


@dataclass
class Leaf:
    """A certificate, its key and the CA that signed it."""

    key: object
    cert: x509.Certificate
    ca: CertAuthority

    @property
    def cert_pem(self) -> str:
        """The certificate in PEM."""
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> str:
        """The key in PEM."""
        return key_pem(self.key)

    @property
    def serial(self) -> int:
        """The certificate's serial number."""
        return self.cert.serial_number


def make_ca(name: str = "test CA", not_after: datetime.datetime | None = None) -> CertAuthority:
    """A self-signed CA."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(minutes=10))
        .not_valid_after(not_after or now() + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertAuthority(name=name, key=key, cert=cert)


def intermediate(ca: CertAuthority, name: str = "test intermediate") -> CertAuthority:
    """A CA signed by ``ca``."""
    key = new_key()
    cert = ca.sign(key.public_key(), name, is_ca=True)
    return CertAuthority(name=name, key=key, cert=cert)


def write_server_files(leaf: Leaf, directory: Path | None = None) -> tuple[Path, Path, Path]:
    """Write ``leaf``'s certificate, key and CA as 0600 files the ``postgres`` user owns."""
    base = directory or service_tempdir("pgbk8s-tls-")
    cert, key, ca = base / "server.crt", base / "server.key", base / "ca.crt"
    write_service_file(cert, leaf.cert_pem)
    write_service_file(key, leaf.key_pem)
    write_service_file(ca, leaf.ca.pem)
    return cert, key, ca


def peer_certificate_serial(host: str, port: int) -> int:
    """Serial of the certificate a PostgreSQL-protocol server presents (SSLRequest, then TLS).

    Speaks just enough of the protocol to start TLS: the 8-byte SSLRequest, an ``S`` answer,
    then a TLS handshake. Nothing is verified here: it only reads which certificate is served
    (the callers check trust with libpq separately).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
        if sock.recv(1) != b"S":
            raise RuntimeError("the server refused TLS")
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
