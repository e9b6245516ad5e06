"""A ``certificates`` provider played by hand (a self-signed-certificates operator's part).

It signs each unit's certificate signing request (read from the unit's databag, where the
tls-certificates library put it) with a CA made here, and publishes the provider's application
databag in the interface's form. Tests replace an entry with whatever a broken or hostile
provider might send (garbage, another key, an expired certificate, …) with :meth:`publish`.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509
from ops import testing

from harness.juju import Unit
from harness.servers.tls import CertAuthority, cert_pem, make_ca
from harness.story import Deployment

CERTIFICATES = "certificates"
PROVIDER_APP = "self-signed-certificates"


class CertificatesProvider:
    """The provider side of ``certificates`` for one deployment.

    Args:
        d: the deployment whose units ask for certificates.
        ca: the CA that signs (a new one by default).
    """

    def __init__(self, d: Deployment, ca: CertAuthority | None = None):
        self.d = d
        self.ca = ca or make_ca("self-signed-certificates CA")
        self.relation_id: int | None = None

    def relate(self) -> int:
        """``juju integrate pgbouncer-k8s:certificates self-signed-certificates``: CSRs written."""
        rid = self.d.app.add_relation(
            testing.Relation(CERTIFICATES, remote_app_name=PROVIDER_APP, remote_units_data={0: {}})
        )
        self.relation_id = rid
        for unit in self.d._leader_first():
            unit.relation_created(rid)
        return rid

    def csr_pem(self, unit: Unit) -> str:
        """The unit's current certificate signing request, as the library wrote it."""
        assert self.relation_id is not None
        bag = unit.relation(self.relation_id).local_unit_data  # type: ignore[attr-defined]
        return json.loads(bag["certificate_signing_requests"])[0]["certificate_signing_request"]

    def sign(self, unit: Unit, ca: CertAuthority | None = None, **kwargs: Any) -> x509.Certificate:
        """A certificate for the unit's CSR (its key, its names), by ``ca`` (ours by default)."""
        csr = x509.load_pem_x509_csr(self.csr_pem(unit).encode())
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cn = csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
        kwargs.setdefault("dns", tuple(san.get_values_for_type(x509.DNSName)))
        kwargs.setdefault("ips", tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))
        return (ca or self.ca).sign(csr.public_key(), str(cn), **kwargs)

    def entry(self, unit: Unit, certificate: str | None = None, **fields: Any) -> dict[str, Any]:
        """The provider's entry answering ``unit``'s CSR (a fresh good certificate by default)."""
        pem = certificate if certificate is not None else cert_pem(self.sign(unit))
        return {
            "certificate_signing_request": self.csr_pem(unit),
            "certificate": pem,
            "ca": self.ca.pem,
            "chain": [pem, self.ca.pem],
            **fields,
        }

    def publish(
        self, entries: list[dict[str, Any]] | str, units: list[Unit] | None = None
    ) -> None:
        """Write the provider's databag (a list of entries, or raw text) and run relation-changed."""
        assert self.relation_id is not None
        text = entries if isinstance(entries, str) else json.dumps(entries)
        self.d.app.set_remote(self.relation_id, remote_app_data={"certificates": text})
        for unit in units or self.d._leader_first():
            unit.relation_changed(self.relation_id, remote_unit=0)

    def sign_all(self) -> None:
        """Sign every unit's request and publish the answers."""
        self.publish([self.entry(unit) for unit in self.d.app.units])
