"""The hook's TLS inputs: the unit's certificate and the backend's CA, read and checked.

Part of the hook's one read (``charm._read_world``): cryptography loads only when TLS is in
use (a ``certificates`` relation, or a backend that announces TLS). What cannot be used is
reported in the returned values (``tls_error``…), never raised, and TLS never goes from on to
off because of what a provider sent: the certificate served now keeps serving (docs/tls.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from state.backend import InvalidBackendDataError

if TYPE_CHECKING:
    import ops

    from relations.backend_database import BackendDatabaseRequirer
    from relations.tls import CertificatesRelation

logger = logging.getLogger(__name__)


def tls_inputs(
    tls: CertificatesRelation | None,
    backend: BackendDatabaseRequirer,
    backend_relation: ops.Relation | None,
    served: tuple[str, str, str] | None,
) -> dict[str, Any]:
    """The TLS fields of :class:`~state.charm_state.CharmState`.

    Args:
        tls: the ``certificates`` relation adapter, None without the relation.
        backend: the ``backend-database`` adapter (its TLS secret).
        backend_relation: the backend relation, if any.
        served: the certificate, key and CA PgBouncer serves now (from the container), if any.
    """
    values: dict[str, Any] = {"tls_related": tls is not None}
    remote = (
        backend_relation.data[backend_relation.app]
        if backend_relation is not None and backend_relation.app is not None
        else {}
    )
    if tls is None and not any(remote.get(k) for k in ("tls", "tls-ca", "secret-tls")):
        return values
    from state.tls import BackendTLS, MissingCAError, TLSMaterialError

    try:
        remote = {**remote, **backend.tls_secret_content()}
        values["backend_tls"] = BackendTLS.from_databag(remote) if remote else None
    except InvalidBackendDataError as exc:
        values |= {"tls_error": str(exc), "backend_tls_refused": True}
    except MissingCAError as exc:
        values |= {"tls_error": str(exc), "tls_waiting": True, "backend_tls_refused": True}
    except TLSMaterialError as exc:
        values |= {"tls_error": str(exc), "backend_tls_refused": True}
    if tls is None:
        return values
    try:
        material, problem = tls.material(), None
    except TLSMaterialError as exc:
        material, problem = None, exc
    if material is None:
        # The certificate served now keeps serving, and the status says why.
        older = _still_good(served)
        if older is not None:
            reason = str(problem) if problem else "the provider has not signed the request"
            return values | {
                "tls_material": older,
                "tls_stale": reason,
                "tls_stale_fault": problem is not None,
            }
        if problem is not None:
            values.setdefault("tls_error", str(problem))
    values["tls_material"] = material
    return values


def _still_good(served: tuple[str, str, str] | None) -> Any:
    """The certificate PgBouncer serves now, if it is still good to serve; else None."""
    if served is None:
        return None
    from state.tls import ClientTLSMaterial, TLSMaterialError

    try:
        return ClientTLSMaterial.from_pem(*served)
    except TLSMaterialError as exc:
        logger.info("the served certificate cannot be kept: %s", exc)
        return None
