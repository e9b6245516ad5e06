"""What TLS means for one unit's PgBouncer: the ini settings and the files; pure, no ops.

:func:`plan_tls` joins the three inputs (the ``client_tls_mode`` option, the unit's checked
certificate, the backend's checked CA) into the ``client_tls``/``server_tls`` settings of
:class:`pgbouncer.config.PgBouncerConfig` and the TLS files for
:meth:`pgbouncer.workload.Workload.apply`. docs/tls.md explains the two hops.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgbouncer.config import (
    ClientTLS,
    ServerTLS,
    render_tls_files,
)
from pgbouncer.slots import DEFAULT_BASE_DIR
from state.tls import SERVER_SSLMODE, BackendTLS, ClientTLSMaterial, client_sslmode


@dataclass(frozen=True)
class TLSPlan:
    """TLS for one unit, ready to render.

    Attributes:
        client_tls: for :attr:`PgBouncerConfig.client_tls` (None: plain only).
        server_tls: for :attr:`PgBouncerConfig.server_tls` (None: PgBouncer's default).
        files: the four TLS files, ``None`` for those to delete.
    """

    client_tls: ClientTLS | None
    server_tls: ServerTLS | None
    files: dict[str, str | None]


def plan_tls(
    mode: str,
    client: ClientTLSMaterial | None,
    backend: BackendTLS | None,
    base_dir: str = DEFAULT_BASE_DIR,
) -> TLSPlan:
    """The unit's TLS settings and files.

    Args:
        mode: the ``client_tls_mode`` option (``prefer`` or ``require``).
        client: the unit's checked certificate, or None.
        backend: the backend's checked CA when it announces TLS, or None.
        base_dir: where the files live.

    Raises:
        TLSRequiredError: ``require`` without a certificate; the caller keeps the last applied
            configuration and blocks.
        RenderError: a value that is not checked material.
    """
    sslmode = client_sslmode(mode, client)
    return TLSPlan(
        client_tls=ClientTLS(sslmode) if sslmode else None,
        server_tls=ServerTLS(SERVER_SSLMODE) if backend else None,
        files=render_tls_files(client, backend, base_dir),
    )
