"""TLS material as typed, checked values, built from plain PEM strings; no ops import.

Two kinds of material reach the charm:

- the unit's own certificate, its private key and the CA that signed it, from the
  ``certificates`` relation (clients to PgBouncer): :class:`ClientTLSMaterial`;
- the backend's ``tls`` flag and ``tls-ca`` from ``backend-database`` (PgBouncer to PostgreSQL):
  :class:`BackendTLS`.

Everything is checked before it can reach a file: the PEM parses, the certificate matches the
key, it is valid now, and the CA (through the intermediates given) signs it. Each failure is a
:class:`TLSMaterialError` subclass naming which check failed and which input it came from, so
the status can say it; the value itself is never put in a message. What is kept is re-serialised
from the parsed objects, so whatever surrounded the PEM blocks (text, other block types) never
reaches PgBouncer's files.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from state.config import CLIENT_TLS_MODES, InvalidConfigError

MAX_PEM_BYTES = 65536
"""Longest PEM text accepted for one input (a CA bundle of a few certificates is ~10 KiB)."""

MAX_CHAIN_CERTIFICATES = 8
"""Most certificates accepted in one input (leaf plus intermediates, or a CA bundle)."""

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END \1-----", re.ASCII
)
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE", ""})


class TLSMaterialError(ValueError):
    """TLS material that cannot be used; nothing built from it may be written.

    Attributes:
        source: which input it came from (``certificate``, ``private key``, ``ca``,
            ``backend-database tls-ca``, …).
        reason: what is wrong, without the value.
    """

    kind = "unusable TLS material"

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{self.kind}: {source}: {reason}")


class GarbagePEMError(TLSMaterialError):
    """The text is not PEM of the expected type, or holds nothing usable."""

    kind = "bad PEM"


class UnsupportedKeyError(TLSMaterialError):
    """A private key PgBouncer cannot use as is (encrypted, or of an unsupported type)."""

    kind = "unsupported private key"


class KeyMismatchError(TLSMaterialError):
    """The certificate's public key is not the private key's."""

    kind = "certificate does not match its private key"


class CertificateExpiredError(TLSMaterialError):
    """A certificate's ``notAfter`` is in the past."""

    kind = "certificate expired"


class CertificateNotYetValidError(TLSMaterialError):
    """A certificate's ``notBefore`` is in the future."""

    kind = "certificate not yet valid"


class UntrustedCertificateError(TLSMaterialError):
    """No chain from the certificate to the CA given: the CA does not sign it."""

    kind = "certificate not signed by the CA"


class MissingCAError(TLSMaterialError):
    """TLS was announced without the CA needed to verify it."""

    kind = "no CA to verify with"


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def _pem_blocks(text: object, source: str) -> list[tuple[str, str]]:
    """The PEM blocks in ``text`` as ``(label, block)``; refuses anything that is not PEM."""
    if not isinstance(text, str) or not text.strip():
        raise GarbagePEMError(source, "empty or not text")
    if len(text.encode("utf-8", "replace")) > MAX_PEM_BYTES:
        raise GarbagePEMError(source, f"longer than {MAX_PEM_BYTES} bytes")
    if not text.isascii() or "\x00" in text:
        raise GarbagePEMError(source, "not ASCII PEM text")
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]
    if not blocks:
        raise GarbagePEMError(source, "no PEM block")
    return blocks


def parse_certificates(
    text: object, source: str, max_count: int = MAX_CHAIN_CERTIFICATES
) -> tuple[x509.Certificate, ...]:
    """Every ``CERTIFICATE`` block of ``text``, parsed, in order.

    Args:
        text: PEM text, one or more certificates.
        source: the input's name, for the error.
        max_count: most certificates accepted.

    Returns:
        The certificates (at least one).

    Raises:
        GarbagePEMError: not PEM, another block type, a block that does not parse, or too many.
    """
    blocks = _pem_blocks(text, source)
    if any(label != "CERTIFICATE" for label, _ in blocks):
        raise GarbagePEMError(source, "holds a PEM block that is not a CERTIFICATE")
    if len(blocks) > max_count:
        raise GarbagePEMError(source, f"more than {max_count} certificates")
    certs: list[x509.Certificate] = []
    for _, block in blocks:
        try:
            certs.append(x509.load_pem_x509_certificate(block.encode()))
        except ValueError:
            raise GarbagePEMError(source, "a CERTIFICATE block does not parse") from None
    return tuple(certs)


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def parse_private_key(text: object, source: str = "private key") -> PrivateKey:
    """The one private key in ``text`` (RSA or EC, unencrypted).

    Raises:
        GarbagePEMError: not exactly one key block, or it does not parse.
        UnsupportedKeyError: encrypted (PgBouncer cannot be given a passphrase) or not RSA/EC.
    """
    blocks = _pem_blocks(text, source)
    if len(blocks) != 1 or not blocks[0][0].endswith("PRIVATE KEY"):
        raise GarbagePEMError(source, "must hold exactly one PRIVATE KEY block")
    label, block = blocks[0]
    if label == "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED" in block:
        raise UnsupportedKeyError(source, "encrypted")
    try:
        key = serialization.load_pem_private_key(block.encode(), password=None)
    except TypeError:
        raise UnsupportedKeyError(source, "encrypted") from None
    except UnsupportedAlgorithm:
        raise UnsupportedKeyError(source, "of an algorithm this charm cannot load") from None
    except ValueError:
        raise GarbagePEMError(source, "the PRIVATE KEY block does not parse") from None
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise UnsupportedKeyError(source, "Ed25519/Ed448 keys are not supported; use RSA or EC")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise UnsupportedKeyError(source, "not an RSA or EC key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise UnsupportedKeyError(source, "RSA keys shorter than 2048 bits are refused")
    return key


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_key_matches(cert: x509.Certificate, key: PrivateKey, source: str) -> None:
    """Raise :class:`KeyMismatchError` unless ``cert`` carries ``key``'s public key."""
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise KeyMismatchError(source, "its public key is not the private key's")


def check_validity(
    cert: x509.Certificate, source: str, now: datetime.datetime | None = None
) -> None:
    """Raise unless ``now`` is within ``cert``'s validity period.

    Raises:
        CertificateExpiredError: ``notAfter`` has passed.
        CertificateNotYetValidError: ``notBefore`` is still to come.
    """
    moment = _now(now)
    if cert.not_valid_after_utc <= moment:
        raise CertificateExpiredError(
            source, f"expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    if cert.not_valid_before_utc > moment:
        raise CertificateNotYetValidError(
            source, f"valid from {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_chain(
    leaf: x509.Certificate,
    intermediates: tuple[x509.Certificate, ...],
    cas: tuple[x509.Certificate, ...],
    now: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ...]:
    """Find the path from ``leaf`` up to one of ``cas``; every link's signature is checked.

    Args:
        leaf: the certificate to verify.
        intermediates: certificates that may sit between it and a CA, in any order.
        cas: the trusted CAs.
        now: the moment to check validity at (now by default).

    Returns:
        The intermediates on the path, leaf's issuer first (what follows the leaf in the
        certificate file PgBouncer presents).

    Raises:
        UntrustedCertificateError: no path ends at a CA, or a link on it is not a CA.
        CertificateExpiredError: an intermediate or the CA on the path has expired.
        CertificateNotYetValidError: one on the path is not valid yet.
    """
    path: list[x509.Certificate] = []
    current = leaf
    for _ in range(MAX_CHAIN_CERTIFICATES + 1):
        for ca in cas:
            if _issued_by(current, ca):
                if not _is_ca(ca):
                    raise UntrustedCertificateError("ca", "the issuer is not marked as a CA")
                check_validity(ca, "ca", now)
                return tuple(path)
        step = next(
            (
                c
                for c in intermediates
                if c not in path and c != current and _issued_by(current, c)
            ),
            None,
        )
        if step is None:
            break
        if not _is_ca(step):
            raise UntrustedCertificateError("chain", "an intermediate is not marked as a CA")
        check_validity(step, "chain", now)
        path.append(step)
        current = step
    raise UntrustedCertificateError("certificate", "no chain leads to the CA given")


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class ClientTLSMaterial:
    """The unit's certificate for clients, checked; the texts are what PgBouncer's files hold.

    Attributes:
        cert_pem: the leaf certificate followed by the intermediates up to the CA.
        key_pem: the private key, unencrypted PKCS#8 (never shown by ``repr``).
        ca_pem: the CA certificate(s), published to clients as ``tls-ca``.
        serial: the leaf's serial number (rotation checks compare it).
        not_after: when the leaf expires.
        sans_dns: the DNS names the leaf covers.
        sans_ip: the IP addresses the leaf covers.
    """

    cert_pem: str
    key_pem: str = field(repr=False)
    ca_pem: str
    serial: int
    not_after: datetime.datetime
    sans_dns: tuple[str, ...] = ()
    sans_ip: tuple[str, ...] = ()

    @classmethod
    def from_pem(
        cls,
        certificate: object,
        private_key: object,
        ca: object,
        chain: object = None,
        now: datetime.datetime | None = None,
    ) -> ClientTLSMaterial:
        """Check and normalise a certificate, its key and its CA.

        Args:
            certificate: PEM of the leaf (further certificates after it are taken as
                intermediates).
            private_key: PEM of its private key.
            ca: PEM of the CA (one or more certificates).
            chain: optional PEM of intermediates (a provider's chain may repeat the leaf and
                the CA; those are dropped).
            now: the moment to check validity at (now by default).

        Raises:
            TLSMaterialError: a subclass naming the check that failed.
        """
        certs = parse_certificates(certificate, "certificate")
        key = parse_private_key(private_key, "private key")
        cas = parse_certificates(ca, "ca")
        extra = parse_certificates(chain, "chain") if chain else ()
        leaf = certs[0]
        check_key_matches(leaf, key, "certificate")
        check_validity(leaf, "certificate", now)
        for one in cas:
            check_validity(one, "ca", now)
        candidates = tuple(c for c in certs[1:] + extra if c != leaf and c not in cas)
        path = check_chain(leaf, candidates, cas, now)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        dns: tuple[str, ...] = ()
        ips: tuple[str, ...] = ()
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = tuple(san.get_values_for_type(x509.DNSName))
            ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            pass
        return cls(
            cert_pem="".join(_pem(c) for c in (leaf, *path)),
            key_pem=key_pem,
            ca_pem="".join(_pem(c) for c in cas),
            serial=leaf.serial_number,
            not_after=leaf.not_valid_after_utc,
            sans_dns=dns,
            sans_ip=ips,
        )


def parse_flag(value: object, source: str) -> bool:
    """A databag boolean: ``"True"``/``"true"`` or ``"False"``/``"false"``/absent.

    Raises:
        TLSMaterialError: anything else.
    """
    if value is None or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise TLSMaterialError(source, 'must be "True" or "False"')


@dataclass(frozen=True)
class BackendTLS:
    """The backend's TLS, as the PostgreSQL charm announces it: its CA, normalised PEM.

    Attributes:
        ca_pem: the CA certificate(s) PgBouncer and the charm verify the server with.
        not_after: the earliest expiry among them.
    """

    ca_pem: str
    not_after: datetime.datetime

    @classmethod
    def from_databag(
        cls, data: Mapping[str, str], now: datetime.datetime | None = None
    ) -> BackendTLS | None:
        """Build from the provider's ``tls`` and ``tls-ca`` fields.

        Args:
            data: the provider's databag (or the merged content of its ``secret-tls``).
            now: the moment to check validity at (now by default).

        Returns:
            None when ``tls`` is absent or false (the CA, if any, is then ignored).

        Raises:
            MissingCAError: ``tls`` is true but there is no ``tls-ca``.
            TLSMaterialError: the flag or the CA is unusable (a subclass says which).
        """
        if not parse_flag(data.get("tls"), "backend-database tls"):
            return None
        text = data.get("tls-ca")
        if not text:
            raise MissingCAError("backend-database tls-ca", "tls is True but tls-ca is empty")
        cas = parse_certificates(text, "backend-database tls-ca")
        for one in cas:
            if not _is_ca(one):
                raise UntrustedCertificateError(
                    "backend-database tls-ca", "a certificate in it is not marked as a CA"
                )
            check_validity(one, "backend-database tls-ca", now)
        return cls(
            ca_pem="".join(_pem(c) for c in cas),
            not_after=min(c.not_valid_after_utc for c in cas),
        )


SERVER_SSLMODE = "verify-full"
"""How PgBouncer and the charm verify PostgreSQL: the CA signs it *and* it names the host.

``verify-full`` for IP endpoints too: PgBouncer 1.24 and libpq both match an IP literal against
the certificate's IP SANs (seen in ``tests/functional/test_tls.py``). ``verify-ca`` is not used:
with a CA shared across a model (a self-signed-certificates operator signs every application's
certificate), any certificate from that CA would pass for the database (docs/decisions.md).
"""


def libpq_tls_params(ca_path: str) -> dict[str, str]:
    """Connection parameters of libpq for a verified connection to the backend.

    Args:
        ca_path: a file holding the backend's CA (libpq reads only files).

    Returns:
        ``sslmode`` and ``sslrootcert``, to add to psycopg's connection arguments.
    """
    return {"sslmode": SERVER_SSLMODE, "sslrootcert": ca_path}


CLIENT_TLS_OPTION = "client_tls_mode"
"""The config option saying whether clients must use TLS once the unit has a certificate."""


class TLSRequiredError(TLSMaterialError):
    """``client_tls_mode`` is ``require`` but the unit has no usable certificate."""

    kind = "client TLS required"


def client_tls_mode(options: Mapping[str, object]) -> str:
    """The validated ``client_tls_mode`` option (``prefer`` when unset).

    Raises:
        InvalidConfigError: another value.
    """
    value = options.get(CLIENT_TLS_OPTION, "prefer")
    if value not in CLIENT_TLS_MODES:
        raise InvalidConfigError(
            CLIENT_TLS_OPTION, f"must be one of {', '.join(CLIENT_TLS_MODES)}"
        )
    return str(value)


def client_sslmode(mode: str, material: ClientTLSMaterial | None) -> str | None:
    """PgBouncer's ``client_tls_sslmode`` for this unit, or None for plain only.

    Args:
        mode: the ``client_tls_mode`` option.
        material: the unit's checked certificate, or None.

    Raises:
        TLSRequiredError: ``require`` without a certificate. The charm then keeps the last
            applied configuration (and its TLS files) and blocks: falling back to plain would
            silently drop the guarantee the operator asked for.
    """
    if material is None:
        if mode == "require":
            raise TLSRequiredError("certificates", "client_tls_mode is require and no certificate")
        return None
    return mode


_LIBPQ_TLS_PROBLEMS = (
    ("certificate verify failed", "the backend's certificate is not signed by its tls-ca"),
    # OpenSSL 3's words when the CA has the issuer's name but not its key.
    ("signature failure", "the backend's certificate is not signed by its tls-ca"),
    ("does not match host name", "the backend's certificate does not name the host connected to"),
    ("server does not support SSL", "the backend announced TLS but does not serve it"),
    ("root certificate file", "the backend's tls-ca could not be read"),
)


def backend_tls_problem(message: str) -> str | None:
    """Which TLS check a failed backend connection tripped, from libpq's error text.

    For the status (``backend unreachable: …``): the words say what to fix, and carry no part
    of the message itself (which may hold host names and user names).

    Args:
        message: ``str()`` of the ``psycopg.OperationalError``.

    Returns:
        A short description, or None when the failure is not about TLS.
    """
    for needle, problem in _LIBPQ_TLS_PROBLEMS:
        if needle in message:
            return problem
    return None
