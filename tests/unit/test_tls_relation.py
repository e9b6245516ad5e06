"""The ``certificates`` adapter under Scenario, with the published tls-certificates library.

A minimal charm holds only the adapter, so these tests pin the relation's wire format and the
typed values it returns, apart from the charm's frame. The databags are checked against the
interface's published schema (``canonical/charm-relation-interfaces``,
``interfaces/tls_certificates/v1/schemas/requirer.json`` and ``provider.json``): each property,
type and ``required`` list below was written by hand from those files.
"""

from __future__ import annotations

import datetime
import json

import ops
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from ops import testing

from harness.servers.tls import CertAuthority, cert_pem, make_ca, now
from relations.tls import (
    CERTIFICATES_RELATION,
    CertificatesRelation,
    certificate_request,
    client_tls_fields,
    unit_names,
)
from state.tls import (
    CertificateExpiredError,
    ClientTLSMaterial,
    KeyMismatchError,
    TLSMaterialError,
)

# -- the published schemas, as a checker of our own ------------------------------------------
REQUIRER_SCHEMA = {
    "type": "object",
    "required": ["certificate_signing_requests"],
    "properties": {
        "certificate_signing_requests": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["certificate_signing_request"],
                "properties": {"certificate_signing_request": {"type": "string"}},
            },
        }
    },
}
PROVIDER_SCHEMA = {
    "type": "object",
    "required": ["certificates"],
    "properties": {
        "certificates": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["certificate_signing_request", "certificate", "ca", "chain"],
                "properties": {
                    "certificate_signing_request": {"type": "string"},
                    "certificate": {"type": "string"},
                    "ca": {"type": "string"},
                    # The v1 schema says string; the published library (and providers using
                    # it) write a list of PEM strings. Either is accepted here.
                    "chain": {"type": ["string", "array"]},
                },
            },
        }
    },
}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def schema_errors(value: object, schema: dict, path: str = "$") -> list[str]:
    """The draft-04 subset these schemas use: type, required, properties, items."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(isinstance(value, _TYPES[k]) for k in kinds):
            return [f"{path}: not {kinds}"]
    errors: list[str] = []
    if isinstance(value, dict):
        errors += [f"{path}: {k} missing" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def load(databag: dict[str, str]) -> dict[str, object]:
    """A Juju databag with its JSON-encoded values decoded, as the schemas describe them."""
    return {k: json.loads(v) for k, v in databag.items()}


def test_the_checker_catches_what_the_schema_forbids():
    assert schema_errors({"certificate_signing_requests": [{}]}, REQUIRER_SCHEMA)
    assert schema_errors({"certificate_signing_requests": "x"}, REQUIRER_SCHEMA)
    assert schema_errors({}, REQUIRER_SCHEMA)
    assert schema_errors({"certificates": [{"ca": "x"}]}, PROVIDER_SCHEMA)
    assert not schema_errors(
        {"certificate_signing_requests": [{"certificate_signing_request": "x"}]},
        REQUIRER_SCHEMA,
    )


# -- a minimal charm with just the adapter ---------------------------------------------------
class TLSCharm(ops.CharmBase):
    """Records what the adapter returns on every event."""

    seen: list[object] = []

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.tls = CertificatesRelation(self)
        framework.observe(self.tls.requirer.on.certificate_available, self._record)
        framework.observe(self.on.update_status, self._record)

    def _record(self, _: ops.EventBase) -> None:
        try:
            TLSCharm.seen.append(self.tls.material())
        except TLSMaterialError as exc:
            TLSCharm.seen.append(exc)


META = {
    "name": "pgbouncer-k8s",
    "requires": {CERTIFICATES_RELATION: {"interface": "tls-certificates", "limit": 1}},
}
POD_IP = "10.1.157.116"


@pytest.fixture
def ctx() -> testing.Context:
    TLSCharm.seen = []
    return testing.Context(TLSCharm, meta=META, juju_version="3.6.0")


def relation(remote_app_data: dict[str, str] | None = None) -> testing.Relation:
    return testing.Relation(
        CERTIFICATES_RELATION,
        interface="tls-certificates",
        remote_app_name="self-signed-certificates",
        remote_app_data=remote_app_data or {},
    )


def network() -> testing.Network:
    return testing.Network(
        CERTIFICATES_RELATION,
        bind_addresses=[testing.BindAddress([testing.Address(POD_IP)], interface_name="eth0")],
    )


def request_csr(ctx: testing.Context) -> tuple[testing.State, x509.CertificateSigningRequest]:
    rel = relation()
    state = testing.State(relations={rel}, networks={network()}, model=testing.Model(name="dev"))
    out = ctx.run(ctx.on.relation_created(rel), state)
    databag = dict(out.get_relation(rel.id).local_unit_data)
    databag = {
        k: v for k, v in databag.items() if not k.startswith(("egress", "ingress", "private"))
    }
    decoded = load(databag)
    assert schema_errors(decoded, REQUIRER_SCHEMA) == []
    requests = decoded["certificate_signing_requests"]
    assert isinstance(requests, list) and len(requests) == 1
    pem = requests[0]["certificate_signing_request"]
    return out, x509.load_pem_x509_csr(pem.encode())


def test_the_unit_asks_for_one_certificate_naming_every_address(ctx):
    out, csr = request_csr(ctx)
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "pgbouncer-k8s.dev.svc.cluster.local",
        "pgbouncer-k8s-0",
        "pgbouncer-k8s-0.pgbouncer-k8s-endpoints.dev.svc.cluster.local",
    }
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [POD_IP]
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "pgbouncer-k8s-0"
    # The private key never leaves the unit: not in any databag, but in a unit-owned secret.
    rel = out.get_relation(next(iter(out.relations)).id)
    for bag in (rel.local_unit_data, rel.local_app_data):
        assert not any("PRIVATE KEY" in v for v in bag.values())
    assert any("PRIVATE KEY" in "".join(s.tracked_content.values()) for s in out.secrets)
    assert TLSCharm.seen == []  # nothing signed yet: no material


def sign(ca: CertAuthority, csr: x509.CertificateSigningRequest, **kwargs) -> x509.Certificate:
    return ca.sign(
        csr.public_key(),
        csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,  # type: ignore[arg-type]
        dns=tuple(
            csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
        ),
        **kwargs,
    )


def provider_databag(csr, cert: x509.Certificate, ca: CertAuthority) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    entry = {
        "certificate_signing_request": csr_pem,
        "certificate": cert_pem(cert),
        "ca": ca.pem,
        "chain": [cert_pem(cert), ca.pem],
    }
    bag = {"certificates": json.dumps([entry])}
    assert schema_errors(load(bag), PROVIDER_SCHEMA) == []
    return bag


def answer(ctx, out: testing.State, bag: dict[str, str]) -> testing.State:
    rel = next(iter(out.relations))
    answered = testing.Relation(
        CERTIFICATES_RELATION,
        id=rel.id,
        interface="tls-certificates",
        remote_app_name="self-signed-certificates",
        remote_app_data=bag,
        local_unit_data=rel.local_unit_data,
    )
    state = testing.State(
        relations={answered},
        networks={network()},
        secrets=out.secrets,
        model=testing.Model(name="dev"),
    )
    return ctx.run(ctx.on.relation_changed(answered, remote_unit=0), state)


def test_a_signed_certificate_comes_back_as_checked_material(ctx):
    out, csr = request_csr(ctx)
    ca = make_ca("self-signed-certificates CA")
    cert = sign(ca, csr)
    answer(ctx, out, provider_databag(csr, cert, ca))
    assert len(TLSCharm.seen) == 1
    material = TLSCharm.seen[0]
    assert isinstance(material, ClientTLSMaterial), material
    assert material.serial == cert.serial_number
    assert material.ca_pem == ca.pem
    assert material.cert_pem == cert_pem(cert)  # the CA from the chain is not served twice
    assert client_tls_fields(material) == {"tls": True, "tls_ca": ca.pem}


def test_a_certificate_for_another_key_is_never_handed_over(ctx):
    out, csr = request_csr(ctx)
    ca = make_ca("hostile CA")
    stranger = ca.leaf("pgbouncer-k8s-0")  # signed for a key that is not the unit's
    bag = provider_databag(csr, stranger.cert, ca)
    after = answer(ctx, out, bag)
    # The library does not announce it (no certificate-available)...
    assert TLSCharm.seen == []
    # ...nor hands it over when asked; the adapter says why instead of "nothing yet" (issue 22:
    # a unit serving TLS keeps its older certificate and names this, test_provider_inputs.py).
    ctx.run(ctx.on.update_status(), after)
    assert len(TLSCharm.seen) == 1
    assert isinstance(TLSCharm.seen[0], KeyMismatchError), TLSCharm.seen


def test_an_expired_certificate_is_refused(ctx):
    out, csr = request_csr(ctx)
    ca = make_ca("self-signed-certificates CA")
    cert = sign(
        ca,
        csr,
        not_before=now() - datetime.timedelta(days=3),
        not_after=now() - datetime.timedelta(days=1),
    )
    answer(ctx, out, provider_databag(csr, cert, ca))
    assert len(TLSCharm.seen) == 1
    assert isinstance(TLSCharm.seen[0], CertificateExpiredError)


def test_no_relation_no_material(ctx):
    ctx.run(ctx.on.update_status(), testing.State())
    assert TLSCharm.seen == [None]
    assert client_tls_fields(None) == {"tls": False, "tls_ca": None}


def test_names_and_request_without_ip_support():
    assert unit_names("pgb", "m", "pgb/3") == (
        "pgb.m.svc.cluster.local",
        "pgb-3",
        "pgb-3.pgb-endpoints.m.svc.cluster.local",
    )
    from charmlibs.interfaces.tls_certificates import ProviderCapabilities

    req = certificate_request(
        "pgb", "m", "pgb/3", "10.0.0.9", ProviderCapabilities(supports_ip_sans=False)
    )
    assert req.sans_ip is None
    req = certificate_request("pgb", "m", "pgb/3", "10.0.0.9")
    assert req.sans_ip == {"10.0.0.9"}
