"""What this unit's PgBouncer should run, decided from the hook's state; pure.

:func:`desired_config` turns the :class:`~state.charm_state.CharmState` into the
:class:`~pgbouncer.config.PgBouncerConfig` to render, the auth file and the TLS files;
:func:`plan_tls` joins the three TLS inputs (the ``client_tls_mode`` option, the unit's checked
certificate, the backend's checked CA) into the ``client_tls``/``server_tls`` settings and the TLS
files (docs/tls.md explains the two hops). ``state.tls`` (and cryptography with it) loads only
when TLS is in use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    AuthSettings,
    ClientTLS,
    DatabaseTarget,
    PgBouncerConfig,
    RenderError,
    ServerTLS,
    effective_processes,
    read_only_group,
    render_auth_file,
    render_tls_files,
)
from pgbouncer.slots import DEFAULT_BASE_DIR
from state.charm_state import CharmState, parse_version
from state.names import READONLY_KEY_SUFFIX, auth_query_for

if TYPE_CHECKING:
    from state.tls import BackendTLS, ClientTLSMaterial


class CertificateRequired(Exception):  # noqa: N818 (reads as a state of the unit)
    """``client_tls_mode`` is ``require`` and the unit has no certificate to serve.

    Not a :class:`RenderError`: nothing is wrong with a value; the unit waits for a certificate
    and keeps its last applied configuration meanwhile.
    """


def desired_config(
    state: CharmState, *, with_backend: bool = True
) -> tuple[PgBouncerConfig, str, dict[str, str | None]]:
    """What this unit's PgBouncer should run, and its auth file, from the hook's state; pure.

    Backend ``[databases]`` entries and the auth settings appear only once the auth data shared
    by the leader belongs to the current backend; client entries follow the leader's list.

    Args:
        state: the hook's inputs (its ``config`` must be set).
        with_backend: False renders as if there were no backend (the broken chart).

    Returns:
        The configuration, the auth file content (``""`` without an auth user) and the TLS
        files (``None``: delete).

    Raises:
        RenderError: no valid configuration (``state.config`` is None).
        CertificateRequired: ``client_tls_mode`` is ``require`` and there is no certificate
            (the caller keeps the last configuration).
    """
    config = state.config
    if config is None:
        raise RenderError("config", state.config_error or "invalid")
    backend = state.backend if with_backend else None
    databases: list[DatabaseTarget] = []
    auth_settings = None
    auth_file = ""
    if backend is not None and state.auth is not None and state.auth_ready:
        primary = backend.primary
        databases.append(
            DatabaseTarget(
                AUTH_DATABASE_KEY,
                primary.host,
                primary.port,
                state.peer.auth_dbname or backend.database,
            )
        )
        replicas = read_only_group(backend.read_only_endpoints)
        for name in sorted(state.peer.databases):
            databases.append(DatabaseTarget(name, primary.host, primary.port, name))
            if replicas is not None:
                (first, *more), port = replicas
                databases.append(
                    DatabaseTarget(f"{name}{READONLY_KEY_SUFFIX}", first, port, name, tuple(more))
                )
        auth_settings = AuthSettings(
            auth_user=state.auth.username,
            auth_query=auth_query_for(state.auth.lookup_schema),
            auth_dbname=AUTH_DATABASE_KEY,
        )
        auth_file = render_auth_file(state.auth.username, state.auth.password)
    processes = effective_processes(state.cpus, config.max_db_connections)
    cfg = PgBouncerConfig(
        listen_port=config.listen_port,
        pool_mode=config.pool_mode,
        max_db_connections=config.max_db_connections,
        max_prepared_statements=config.max_prepared_statements,
        processes=processes,
        databases=tuple(databases),
        auth=auth_settings,
        max_client_conn=config.max_client_conn,
        pools=config.pools,
        version=parse_version(state.pgb_version),
    )
    backend_tls: Any = state.backend_tls if with_backend else None
    if state.tls_material is None and backend_tls is None and config.client_tls_mode == "prefer":
        return cfg, auth_file, render_tls_files(None, None)
    from state.tls import TLSRequiredError

    try:
        plan = plan_tls(config.client_tls_mode, state.tls_material, backend_tls)  # type: ignore[arg-type]
    except TLSRequiredError as exc:
        raise CertificateRequired(str(exc)) from exc
    cfg = replace(cfg, client_tls=plan.client_tls, server_tls=plan.server_tls)
    return cfg, auth_file, plan.files


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
    from state.tls import SERVER_SSLMODE, client_sslmode

    sslmode = client_sslmode(mode, client)
    return TLSPlan(
        client_tls=ClientTLS(sslmode) if sslmode else None,
        server_tls=ServerTLS(SERVER_SSLMODE) if backend else None,
        files=render_tls_files(client, backend, base_dir),
    )
