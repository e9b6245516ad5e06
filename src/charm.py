#!/usr/bin/env python3
"""pgbouncer-k8s: PgBouncer on Kubernetes in front of a PostgreSQL charm.

This module is wiring: it observes Juju events, builds typed state, calls the pieces
(``relations/``, ``pgbouncer/``, ``postgres/``) and maps their errors to statuses in one place
(:meth:`PgBouncerK8sCharm._on_collect_status`).
"""

from __future__ import annotations

import dataclasses
import logging

import ops

from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    AUTH_FILE,
    AuthSettings,
    DatabaseTarget,
    PgBouncerConfig,
    RenderError,
    effective_processes,
    render_auth_file,
    render_files,
)
from pgbouncer.exporter import STATS_USER
from pgbouncer.workload import Workload, WorkloadError
from postgres.auth import auth_query_for
from relations.backend_database import (
    BACKEND_RELATION,
    REMOVE_AUTH_FAILED,
    BackendDatabaseRelation,
)
from relations.client_database import ClientDatabaseRelation
from relations.metrics import METRICS_RELATION, Monitoring
from relations.peers import PEER_RELATION, Peers
from state.backend import InvalidBackendDataError
from state.config import CharmConfig, InvalidConfigError

logger = logging.getLogger(__name__)

CONTAINER = "pgbouncer"
MIN_PGBOUNCER_VERSION = (1, 21)


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.24.1"`` → ``(1, 24, 1)``; anything unparsable → ``()``."""
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits or digits != piece:
            break
        parts.append(int(digits))
    return tuple(parts)


class PgBouncerK8sCharm(ops.CharmBase):
    """Runs PgBouncer under Pebble and keeps its auth plumbing and databases in step."""

    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(backend_problem="", auth_removal_failed=False, pgb_version="")
        self.workload = Workload(self.unit.get_container(CONTAINER))
        self.peers = Peers(self)
        self.backend = BackendDatabaseRelation(self)
        self.clients = ClientDatabaseRelation(self)
        observe = framework.observe
        observe(self.on[CONTAINER].pebble_ready, self._on_pebble_ready)
        observe(self.on.config_changed, self._on_config_changed)
        observe(self.on.upgrade_charm, self._on_upgrade_charm)
        observe(self.on[PEER_RELATION].relation_changed, self._on_peer_changed)
        observe(self.on.secret_changed, self._on_secret_changed)
        observe(self.on.update_status, self._on_config_changed)
        observe(self.on.collect_unit_status, self._on_collect_status)
        # -- observability (issue 13): stats user, exporter, metrics-endpoint ---------------
        self.monitoring = Monitoring(self)
        observe(self.on[METRICS_RELATION].relation_joined, self._on_metrics_changed)
        observe(self.on[METRICS_RELATION].relation_changed, self._on_metrics_changed)
        observe(self.on.leader_elected, self._on_metrics_changed)
        # -- end observability ---------------------------------------------------------------

    def _on_metrics_changed(self, _: ops.EventBase) -> None:
        """Observability (issue 13): stats secret, exporter, scrape job, rules and address."""
        self.update_workload()  # creates the stats secret (leader) and starts the exporter
        self.monitoring.publish()

    # -- identity ---------------------------------------------------------------------------
    @property
    def owner_tag(self) -> str:
        """What marks the PostgreSQL objects this application created: model uuid and name."""
        return f"{self.model.uuid}/{self.app.name}"

    # -- recorded problems (persisted across hooks for the status) --------------------------
    def record_backend_problem(self, problem: str | None) -> None:
        """Remember (or clear) why the backend refused us, for the status."""
        self._stored.backend_problem = problem or ""

    def record_auth_removal_failed(self, failed: bool) -> None:
        """Remember whether removing the auth user failed, for the status."""
        self._stored.auth_removal_failed = failed

    # -- events -----------------------------------------------------------------------------
    def _on_pebble_ready(self, _: ops.PebbleReadyEvent) -> None:
        self._read_version()
        self.update_workload()
        # The created chart returns without deferring while PgBouncer is not running: the
        # set-up it skipped happens here, once the backend is ready and PgBouncer runs.
        if self.unit.is_leader() and self.workload.is_running():
            backend = self.backend.backend()
            if backend is not None and not self.backend.auth_ready_for(backend):
                self.backend.set_up_auth(backend)

    def _on_upgrade_charm(self, _: ops.UpgradeCharmEvent) -> None:
        self._read_version()
        self.update_workload()

    def _on_config_changed(self, _: ops.EventBase) -> None:
        self.update_workload()
        if self.unit.is_leader():
            self.update_client_relations()

    def _on_peer_changed(self, _: ops.RelationChangedEvent) -> None:
        self.update_workload()

    def _on_secret_changed(self, event: ops.SecretChangedEvent) -> None:
        if event.secret.id and event.secret.id == self.peers.app_data().auth_secret_id:
            self.update_workload()

    def _read_version(self) -> None:
        try:
            version = self.workload.version()
        except WorkloadError as exc:
            logger.warning("could not read the PgBouncer version: %s", exc)
            return
        if version:
            self._stored.pgb_version = version
            self.unit.set_workload_version(version)

    def _version_too_old(self) -> bool:
        version = self._stored.pgb_version
        return bool(version) and parse_version(version) < MIN_PGBOUNCER_VERSION

    # -- the workload -----------------------------------------------------------------------
    def build_config(self, without_backend: bool = False) -> tuple[PgBouncerConfig, str | None]:
        """The PgBouncer configuration every unit renders, and its auth file (if any).

        Raises:
            InvalidConfigError: a charm option is invalid.
        """
        config = CharmConfig.from_dict(self.config)
        backend = None if without_backend else self.backend.backend()
        auth = self.peers.auth() if backend is not None else None
        databases: list[DatabaseTarget] = []
        auth_settings = None
        auth_file = None
        if backend is not None and auth is not None:
            peer = self.peers.app_data()
            primary = backend.primary
            databases.append(
                DatabaseTarget(
                    AUTH_DATABASE_KEY,
                    primary.host,
                    primary.port,
                    peer.auth_dbname or backend.database,
                )
            )
            replica = backend.read_only_endpoints[0] if backend.read_only_endpoints else None
            for name in sorted(peer.databases):
                databases.append(DatabaseTarget(name, primary.host, primary.port, name))
                if replica is not None:
                    databases.append(
                        DatabaseTarget(f"{name}_readonly", replica.host, replica.port, name)
                    )
            auth_settings = AuthSettings(
                auth_user=auth.username,
                auth_query=auth_query_for(auth.username),
                auth_dbname=AUTH_DATABASE_KEY,
            )
            auth_file = render_auth_file(auth.username, auth.password)
        processes = effective_processes(self.workload.cpu_limit(), config.max_db_connections)
        return (
            PgBouncerConfig(
                listen_port=config.listen_port,
                pool_mode=config.pool_mode,
                max_db_connections=config.max_db_connections,
                max_prepared_statements=config.max_prepared_statements,
                processes=processes,
                databases=tuple(databases),
                auth=auth_settings,
            ),
            auth_file,
        )

    def update_workload(self, without_backend: bool = False) -> bool:
        """Render every file, write what changed, reload or restart as needed.

        Returns False when nothing could be applied (container unreachable, invalid config,
        too old a PgBouncer, or a value that cannot be rendered); the status says why.
        """
        if not self.workload.can_connect():
            return False
        if self._version_too_old():
            return False
        try:
            cfg, auth_file = self.build_config(without_backend)
            # -- observability (issue 13): the stats user and the exporter's files ----------
            if self.unit.is_leader():
                self.monitoring.ensure_stats_secret()
            stats_line = self.monitoring.stats_auth_line()
            if stats_line:
                cfg = dataclasses.replace(cfg, stats_user=STATS_USER)
            exporter_files = self.monitoring.exporter_files(cfg.processes, cfg.listen_port)
            # -- end observability -----------------------------------------------------------
            # An empty auth file rather than none: PgBouncer logs an error for a missing one.
            files: dict[str, str | None] = {
                **render_files(cfg),
                AUTH_FILE: (auth_file or "") + stats_line,
                **exporter_files,
            }
            result = self.workload.apply(files, cfg.processes)
        except (InvalidConfigError, RenderError) as exc:
            logger.warning("not applying the configuration: %s", exc)
            return False
        except WorkloadError as exc:
            logger.warning("could not apply the configuration: %s", exc)
            return False
        if result.changed:
            logger.info("workload: %s", result)
        self.unit.set_ports(cfg.listen_port)
        self.monitoring.publish()  # observability (issue 13): the address may have changed
        return True

    def update_client_relations(self) -> None:
        """Publish the current endpoints and credentials to every client (leader only)."""
        if self.unit.is_leader():
            self.clients.refresh()

    # -- status -----------------------------------------------------------------------------
    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        for status in self._statuses():
            event.add_status(status)

    def _statuses(self) -> list[ops.StatusBase]:
        if not self.workload.can_connect():
            return [ops.WaitingStatus("waiting for the pgbouncer container")]
        try:
            cfg, _ = self.build_config()
        except InvalidConfigError as exc:
            return [ops.BlockedStatus(str(exc))]
        except RenderError as exc:
            return [ops.BlockedStatus(f"cannot render pgbouncer.ini: {exc}")]
        except WorkloadError as exc:
            return [ops.WaitingStatus(f"pgbouncer container: {exc}")]
        if self._version_too_old():
            need = ".".join(map(str, MIN_PGBOUNCER_VERSION))
            return [
                ops.BlockedStatus(
                    f"PgBouncer {self._stored.pgb_version} found; {need} or newer needed"
                )
            ]
        statuses: list[ops.StatusBase] = []
        if self._stored.auth_removal_failed:
            statuses.append(ops.BlockedStatus(REMOVE_AUTH_FAILED))
        statuses.extend(self._backend_statuses())
        statuses.extend(self.clients.statuses())
        if not self.workload.is_running():
            statuses.append(ops.WaitingStatus("PgBouncer is not running"))
        processes = "process" if cfg.processes == 1 else "processes"
        statuses.append(ops.ActiveStatus(f"{cfg.processes} PgBouncer {processes}"))
        return statuses

    def _backend_statuses(self) -> list[ops.StatusBase]:
        if self.model.get_relation(BACKEND_RELATION) is None:
            return [ops.BlockedStatus("waiting for a backend-database relation")]
        try:
            backend = self.backend.requirer.fetch()
        except InvalidBackendDataError as exc:
            return [ops.BlockedStatus(str(exc))]
        if backend is None:
            return [ops.WaitingStatus("waiting for backend-database credentials")]
        if self._stored.backend_problem:
            return [ops.WaitingStatus(f"backend unreachable: {self._stored.backend_problem}")]
        if not self.backend.auth_ready_for(backend):
            return [ops.WaitingStatus("waiting for the auth user on the backend")]
        return []


if __name__ == "__main__":  # pragma: nocover
    ops.main(PgBouncerK8sCharm)
