r"""The ``certificates`` relation (requires ``tls-certificates``): one certificate per unit.

Speaks the interface through the published ``charmlibs-interfaces-tls-certificates`` package
(:class:`TLSCertificatesRequiresV4`, unit mode): the library generates the unit's private key
(kept in a Juju secret the unit owns), puts a CSR in the unit's databag, and renews before
expiry. This adapter decides what to ask for and hands back typed, checked values
(:class:`state.tls.ClientTLSMaterial`); everything the provider sent is checked by
:mod:`state.tls` before it can reach a file.

The unit's databag as the library writes it (``certificate_signing_requests``, a JSON list)::

    {"certificate_signing_requests":
        "[{\"certificate_signing_request\": \"-----BEGIN CERTIFICATE REQUEST-----\\n…\",
           \"ca\": false}]"}

and the provider's application databag (one entry per CSR it signed)::

    {"certificates": "[{\"certificate_signing_request\": \"…\", \"certificate\": \"…\",
                        \"ca\": \"…\", \"chain\": [\"…\", \"…\"]}]"}

Requested names (the certificate must carry every name clients may dial):
``<app>.<model>.svc.cluster.local`` (the address published to clients on ``database``), the
unit's pod name ``<app>-<n>`` and its FQDN under the ``<app>-endpoints`` headless service, and
the pod's IP unless the provider says it does not sign IP SANs.

What the charm's frame calls (docs/tls.md, "wiring"):

- construct :class:`CertificatesRelation` in ``__init__`` and observe
  ``certificates.requirer.on.certificate_available`` and the relation's ``relation_broken``
  with the reconcile;
- in the reconcile, :meth:`CertificatesRelation.material` (None, or raises
  :class:`state.tls.TLSMaterialError`), then :func:`pgbouncer.desired.plan_tls`;
- :func:`backend_tls` for the backend's CA; :func:`client_tls_fields` for the ``database``
  answer.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping

import ops
from charmlibs.interfaces.tls_certificates import (
    CertificateRequestAttributes,
    Mode,
    ProviderCapabilities,
    TLSCertificatesError,
    TLSCertificatesRequiresV4,
)

from state.tls import (
    BackendTLS,
    ClientTLSMaterial,
    GarbagePEMError,
    TLSMaterialError,
    check_key_matches,
    parse_certificates,
    parse_private_key,
)

logger = logging.getLogger(__name__)

CERTIFICATES_RELATION = "certificates"
BACKEND_RELATION_NAME = "backend-database"
MAX_COMMON_NAME = 64
"""X.509's upper bound for a common name (RFC 5280 ``ub-common-name``)."""


def unit_names(app: str, model: str, unit: str) -> tuple[str, ...]:
    """The DNS names clients may use to reach ``unit``: service, pod, pod FQDN.

    Args:
        app: the application name.
        model: the model name (the Kubernetes namespace).
        unit: the unit name, ``<app>/<n>``.

    Returns:
        ``(<app>.<model>.svc.cluster.local, <app>-<n>,
        <app>-<n>.<app>-endpoints.<model>.svc.cluster.local)``.
    """
    pod = unit.replace("/", "-")
    return (
        f"{app}.{model}.svc.cluster.local",
        pod,
        f"{pod}.{app}-endpoints.{model}.svc.cluster.local",
    )


def certificate_request(
    app: str,
    model: str,
    unit: str,
    pod_ip: str | None,
    capabilities: ProviderCapabilities | None = None,
) -> CertificateRequestAttributes:
    """The unit's certificate request.

    Args:
        app: the application name.
        model: the model name.
        unit: the unit name.
        pod_ip: the pod's IP address, if known.
        capabilities: what the provider advertised (None: nothing yet).

    Returns:
        The request: the pod name as common name (short enough for any model name), every
        name of :func:`unit_names` and the pod IP as SANs.
    """
    names = unit_names(app, model, unit)
    ips = (pod_ip,) if pod_ip else ()
    if capabilities is not None and capabilities.supports_ip_sans is False:
        ips = ()
    return CertificateRequestAttributes(
        common_name=names[1][:MAX_COMMON_NAME],
        sans_dns=names,
        sans_ip=ips,
    )


UNREADABLE = "the provider's certificates do not parse"


class WrongNamesError(TLSMaterialError):
    """The certificate does not name the address published to clients."""

    kind = "certificate for other names"


class _Requirer(TLSCertificatesRequiresV4):
    """The library's requirer, except that what the provider wrote never fails a hook.

    The library parses every entry of the provider's databag inside its own relation-changed
    handler and raises :class:`TLSCertificatesError` ("Could not load certificate") on one it
    cannot load; in Juju the unit would go into error state over another application's data
    (docs/tls.md). The charm's reconcile reads the same data through
    :meth:`CertificatesRelation.material`, which names the problem in the status.
    """

    def _configure(self, _: ops.EventBase | None = None) -> None:
        try:
            super()._configure(_)
        except (TLSCertificatesError, ValueError, TypeError) as exc:
            # The library's messages name what failed to load, never key material.
            logger.warning(
                "certificates: %s (%s); the last good certificate stays",
                UNREADABLE,
                type(exc).__name__,
            )


class CertificatesRelation(ops.Object):
    """The unit's side of ``certificates``.

    Args:
        charm: the charm.
        relation_name: the endpoint (``certificates``).
    """

    def __init__(self, charm: ops.CharmBase, relation_name: str = CERTIFICATES_RELATION):
        super().__init__(charm, relation_name)
        self._charm = charm
        self._relation_name = relation_name
        self.requirer = _Requirer(
            charm,
            relation_name,
            certificate_requests=self._requests,
            mode=Mode.UNIT,
            refresh_events=[charm.on.config_changed],
        )

    def _pod_ip(self) -> str | None:
        try:
            binding = self._charm.model.get_binding(self._relation_name)
            address = binding.network.bind_address if binding else None
        except (ops.ModelError, KeyError):
            return None
        return str(address) if address else None

    def _requests(
        self, capabilities: ProviderCapabilities | None
    ) -> list[CertificateRequestAttributes]:
        return [
            certificate_request(
                self._charm.app.name,
                self._charm.model.name,
                self._charm.unit.name,
                self._pod_ip(),
                capabilities,
            )
        ]

    @property
    def related(self) -> bool:
        """Whether the ``certificates`` relation exists."""
        return self._charm.model.get_relation(self._relation_name) is not None

    def material(self, now: datetime.datetime | None = None) -> ClientTLSMaterial | None:
        """The unit's checked certificate, key and CA; None while there is none.

        Args:
            now: the moment to check validity at (now by default).

        Raises:
            TLSMaterialError: what the provider sent is unusable (a subclass says which).
        """
        if not self.related:
            return None
        try:
            certificates, key = self.requirer.get_assigned_certificates()
        except (TLSCertificatesError, ValueError, TypeError):
            raise GarbagePEMError("certificates", UNREADABLE) from None
        if key is None:
            return None
        if not certificates:
            self._check_unassigned(str(key))
            return None
        # One request, so at most one current certificate; the newest if a renewal overlaps.
        provided = max(certificates, key=lambda c: c.certificate.validity_start_time)
        material = ClientTLSMaterial.from_pem(
            str(provided.certificate),
            str(key),
            str(provided.ca),
            chain="".join(str(c) for c in provided.chain) or None,
            now=now,
        )
        # Clients verify the address they were given (verify-full): a certificate that does
        # not name it would refuse every one of them.
        service = unit_names(self._charm.app.name, self._charm.model.name, self._charm.unit.name)[
            0
        ]
        if service not in material.sans_dns:
            raise WrongNamesError("certificate", f"does not name {service}")
        return material

    def _check_unassigned(self, key_pem: str) -> None:
        """Why the library assigned nothing although the provider answered this unit's request.

        The library silently skips a certificate that does not carry the unit's key (or is a
        CA certificate for a leaf request): without this, "no certificate" would read as
        "waiting", and a unit serving TLS would turn it off (docs/tls.md: TLS never turns off
        because of what the provider sent).

        Raises:
            KeyMismatchError: the certificate answering this unit's request carries another key.
            GarbagePEMError: it is not a usable leaf certificate.
        """
        relation = self._charm.model.get_relation(self._relation_name)
        if relation is None or relation.app is None:
            return
        try:
            ours = {
                str(request.certificate_signing_request).strip()
                for request in self.requirer.get_csrs_from_requirer_relation_data()
            }
            entries = json.loads(relation.data[relation.app].get("certificates") or "[]")
        except (TLSCertificatesError, ValueError, TypeError):
            raise GarbagePEMError("certificates", UNREADABLE) from None
        if not isinstance(entries, list):
            raise GarbagePEMError("certificates", "not a list")
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            csr = entry.get("certificate_signing_request")
            if not isinstance(csr, str) or csr.strip() not in ours:
                continue
            if entry.get("revoked") is True:
                continue
            leaf = parse_certificates(entry.get("certificate"), "certificate")[0]
            check_key_matches(leaf, parse_private_key(key_pem), "certificate")
            raise GarbagePEMError("certificate", "a CA certificate answers a leaf request")


def backend_tls(model: ops.Model, now: datetime.datetime | None = None) -> BackendTLS | None:
    """The backend's CA when ``backend-database`` announces TLS, else None.

    Reads the provider's plain ``tls`` and ``tls-ca`` fields (the interface's v0 form; a provider
    that moved them into ``secret-tls`` needs that secret's content merged in by the caller,
    see :meth:`state.tls.BackendTLS.from_databag`).

    Raises:
        TLSMaterialError: the flag or the CA is unusable.
    """
    relation = model.get_relation(BACKEND_RELATION_NAME)
    if relation is None or relation.app is None:
        return None
    return BackendTLS.from_databag(relation.data[relation.app], now=now)


def client_tls_fields(material: ClientTLSMaterial | None) -> Mapping[str, str | bool | None]:
    """What the ``database`` answer says about TLS: ``tls`` and ``tls-ca``.

    For :class:`dpcharmlibs.interfaces.ResourceProviderModel` (``tls=…, tls_ca=…``): the leader
    publishes its own unit's state; every unit's certificate comes from the same provider, so
    the CA is the same for all.
    """
    if material is None:
        return {"tls": False, "tls_ca": None}
    return {"tls": True, "tls_ca": material.ca_pem}
