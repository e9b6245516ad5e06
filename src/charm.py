#!/usr/bin/env python3
"""pgbouncer-k8s: PgBouncer on Kubernetes in front of a PostgreSQL charm.

One reconcile per hook (docs/architecture.md): the inputs are read once into a pure
:class:`~state.charm_state.CharmState`; the PgBouncer configuration is a function of it; the
leader makes the backend match it (``reconcile``); every unit renders and applies; the status is
computed from what that reconcile actually did. The seed's created / departed / broken charts
stay named decisions (``relations.backend_database``) whose effects go through the same path.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import ops

from actions import Actions
from pgbouncer import pause
from pgbouncer.config import (
    AUTH_FILE,
    PgBouncerConfig,
    RenderError,
    desired_config,
    left_out_settings,
    render_files,
)
from pgbouncer.exporter import EXPORTER_COMMAND
from pgbouncer.image import check_image
from pgbouncer.workload import (
    DRAIN_GRACE_S,
    SAME_PORT_DRAIN_S,
    WAIT_FOR_CLIENTS_SINCE,
    Workload,
    WorkloadError,
)
from postgres.deadline import start_hook_budget
from reconcile import (
    WAITING_FOR_BACKEND,
    LeaderOutcome,
    check_backend,
    ensure_auth,
    publish_answers,
    remove_auth_plumbing,
    serve_clients,
)
from relations.backend_database import (
    BACKEND_RELATION,
    BROKEN_DEFER,
    BROKEN_DROP,
    CREATED_DEFER,
    CREATED_SET_UP,
    DEPARTED_MARK,
    DEPARTED_REMOVE,
    DEPARTED_REMOVE_AND_MARK,
    REMOVE_AUTH_FAILED,
    BackendDatabaseRequirer,
    broken_chart,
    created_chart,
    departed_chart,
)
from relations.client_database import CLIENT_RELATION, ClientDatabaseRelation, client_endpoint
from relations.grafana_dashboard import DASHBOARD_RELATION, GrafanaDashboardProvider
from relations.logging import LOGGING_RELATION, LogForwarding
from relations.metrics import METRICS_RELATION, Monitoring
from relations.peers import PEER_RELATION, Peers
from rotation import advance_rotation
from state.backend import InvalidBackendDataError
from state.charm_state import (
    MIN_PGBOUNCER_VERSION,
    UNKNOWN_VERSION,
    CharmState,
    parse_version,
)
from state.config import CharmConfig, InvalidConfigError

logger = logging.getLogger(__name__)

CONTAINER = "pgbouncer"
CERTIFICATES_RELATION = "certificates"
# REMOVE_AUTH_FAILED is the seed's message, defined once in relations.backend_database.


def _new_password() -> str:
    from postgres.passwords import generate_password

    return generate_password()


def drain_due(now: float, since: float, bound: float) -> bool:
    """Whether processes left draining ``since`` then may be stopped: ``bound`` has passed.

    ``since`` 0 means nothing waits for a moment (nothing drains, or, after a port change,
    clients have not been told the new port yet: the caller passes 0 then and nothing is
    stopped). A clock that went backwards counts as not yet.
    """
    return bool(since) and now - since >= bound


class PgBouncerK8sCharm(ops.CharmBase):
    """Runs PgBouncer under Pebble and keeps its auth plumbing and databases in step."""

    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        start_hook_budget()
        # The PgBouncer version is a fact of this unit's container, not of the application.
        self._stored.set_default(
            pgb_version="",
            image_missing="",
            exporter_absent=False,
            # A port change: the port the old processes still serve, and when this unit saw
            # the new one published to clients.
            draining_port=0,
            told_at=0.0,
            # A same-port hand-over (pool_mode, restart, fewer processes): when the old
            # processes stopped taking new clients, and why.
            handover_at=0.0,
            handover_reason="",
        )
        self.workload = Workload(self.unit.get_container(CONTAINER))
        self.peers = Peers(self)
        self.backend = BackendDatabaseRequirer(self)
        self.clients = ClientDatabaseRelation(self)
        self.monitoring = Monitoring(self)  # stats user, exporter, metrics-endpoint
        # TLS (docs/tls.md): the certificates library (and cryptography) load only when the
        # relation exists; its removal is a relation-broken the charm observes itself.
        self.tls = None
        if self.model.relations[CERTIFICATES_RELATION]:
            from relations.tls import CertificatesRelation

            self.tls = CertificatesRelation(self)
            framework.observe(self.tls.requirer.on.certificate_available, self._on_change)
        self._state: CharmState | None = None
        self._outcome = LeaderOutcome()
        self._apply_error: str | None = None
        self._render_error: str | None = None
        self._processes = 0
        self._cfg: PgBouncerConfig | None = None
        self._tls_required = False
        self._paused_since: float | None = None
        # Operator actions (docs/actions.md); the pause they set is read by every _apply.
        self.actions = Actions(
            self, self.unit.get_container(CONTAINER), self.clients, self.monitoring,
            self._load_state, self._ca_dir,
        )  # fmt: skip
        observe = framework.observe
        observe(self.on[CONTAINER].pebble_ready, self._on_version_source)
        observe(self.on.upgrade_charm, self._on_version_source)
        for event in (
            self.on.config_changed,
            self.on.leader_elected,
            self.on.secret_changed,
            self.on[PEER_RELATION].relation_changed,
            self.on[BACKEND_RELATION].relation_changed,
            self.on[CLIENT_RELATION].relation_changed,
            self.on[CERTIFICATES_RELATION].relation_broken,
            self.on[METRICS_RELATION].relation_joined,
            self.on[METRICS_RELATION].relation_changed,
            self.on[DASHBOARD_RELATION].relation_joined,
            self.on[LOGGING_RELATION].relation_changed,
            self.on[LOGGING_RELATION].relation_departed,
            self.on[LOGGING_RELATION].relation_broken,
        ):
            observe(event, self._on_change)
        observe(self.on.update_status, self._on_update_status)
        observe(self.backend.on.database_created, self._on_backend_created)
        observe(self.on[BACKEND_RELATION].relation_departed, self._on_backend_departed)
        observe(self.on[BACKEND_RELATION].relation_broken, self._on_backend_broken)
        observe(self.on[CLIENT_RELATION].relation_broken, self._on_client_broken)
        observe(self.on.collect_unit_status, self._on_collect_status)

    @property
    def owner_tag(self) -> str:
        """What marks the PostgreSQL objects this application created: model uuid and name."""
        return f"{self.model.uuid}/{self.app.name}"

    # -- reading the world once ----------------------------------------------------------------
    def _load_state(self) -> CharmState:
        try:
            config, config_error = CharmConfig.from_dict(self.config), None
        except InvalidConfigError as exc:
            config, config_error = None, str(exc)
        relation = self.backend.relation
        backend = backend_error = None
        try:
            backend = self.backend.fetch()
        except InvalidBackendDataError as exc:
            backend_error = str(exc)
        peer = self.peers.app_data()
        can_connect = self.workload.can_connect()
        try:
            cpus = self.workload.cpu_limit() if can_connect else 1
            running = can_connect and self.workload.is_running()
        except WorkloadError as exc:
            logger.warning("pgbouncer container: %s", exc)
            cpus, running = 1, False
        tls = self._load_tls(relation)
        return CharmState(
            **tls,
            leader=self.unit.is_leader(),
            config=config,
            config_error=config_error,
            backend_related=relation is not None,
            backend=backend,
            backend_error=backend_error,
            request_written=self.backend.request_written(),
            auth=self.peers.auth() if peer.auth_secret_id else None,
            peer=peer,
            tenants=self.peers.tenants(),
            cpus=cpus,
            pgb_version=self._stored.pgb_version or None,
            can_connect=can_connect,
            running=running,
        )

    def _load_tls(self, backend_relation: ops.Relation | None) -> dict[str, Any]:
        """The unit's certificate and the backend's CA, checked; cryptography only if used."""
        values: dict[str, Any] = {"tls_related": self.tls is not None}
        remote = (
            backend_relation.data[backend_relation.app]
            if backend_relation is not None and backend_relation.app is not None
            else {}
        )
        if self.tls is None and not any(remote.get(k) for k in ("tls", "tls-ca", "secret-tls")):
            return values
        from state.tls import BackendTLS, MissingCAError, TLSMaterialError

        try:
            remote = {**remote, **self.backend.tls_secret_content()}
            values["backend_tls"] = BackendTLS.from_databag(remote) if remote else None
        except InvalidBackendDataError as exc:
            values |= {"tls_error": str(exc), "backend_tls_refused": True}
        except MissingCAError as exc:
            values |= {"tls_error": str(exc), "tls_waiting": True, "backend_tls_refused": True}
        except TLSMaterialError as exc:
            values |= {"tls_error": str(exc), "backend_tls_refused": True}
        if self.tls is None:
            return values
        try:
            material, problem = self.tls.material(), None
        except TLSMaterialError as exc:
            material, problem = None, exc
        if material is None:
            # TLS never goes from on to off because of what the provider sent (issue 22): the
            # certificate served now keeps serving, and the status says why.
            older = self._served_client_tls()
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

    def _served_client_tls(self) -> Any:
        """The certificate PgBouncer serves now, if it is still good to serve; else None."""
        from state.tls import ClientTLSMaterial, TLSMaterialError

        try:
            served = self.workload.served_client_tls() if self.workload.can_connect() else None
            return ClientTLSMaterial.from_pem(*served) if served is not None else None
        except (WorkloadError, TLSMaterialError) as exc:
            logger.info("the served certificate cannot be kept: %s", exc)
            return None

    # -- the reconcile ---------------------------------------------------------------------------
    def _reconcile(
        self, *, verify: bool = False, gone: int | None = None, with_backend: bool = True
    ) -> None:
        """Leader: make the backend match; every unit: render and apply; record the outcome."""
        if self.unit.is_leader():
            self.monitoring.ensure_stats_secret(_new_password)
        state = self._load_state()
        self._apply(state, with_backend)
        self.monitoring.publish(serving=not self._stored.exporter_absent)
        GrafanaDashboardProvider(self, self.monitoring.topology()).publish()
        container = self.unit.get_container(CONTAINER)
        LogForwarding(self, container, self.monitoring.topology()).apply()
        if not with_backend:
            self._state = state
            return
        if state.leader and not state.running and state.can_connect:
            # The apply above may just have started PgBouncer: the set-up waits for nothing.
            state = self._load_state()
        outcome = LeaderOutcome()
        if state.leader:
            ensure_auth(
                state,
                self.peers,
                owner_tag=self.owner_tag,
                verify=verify,
                outcome=outcome,
                ca_dir=self._ca_dir(),
            )
            if outcome.set_up:
                state = self._load_state()
        port = self._publish_port(state)
        endpoint = None if port is None else client_endpoint(self.app.name, self.model.name, port)
        served = serve_clients(
            state,
            self.clients,
            self.peers,
            owner_tag=self.owner_tag,
            endpoint=endpoint,
            tls_fields=self._client_tls_fields(state),
            ca_dir=self._ca_dir(),
            gone=gone,
            outcome=outcome,
            verify=verify,
        )
        databases_changed = state.leader and served != dict(state.peer.databases)
        if databases_changed:
            self.peers.set_databases(served)
        if outcome.set_up or databases_changed:
            state = self._load_state()
            self._apply(state, with_backend)
        if state.leader:
            publish_answers(self.clients, outcome, self.peers.applied())
            advance_rotation(
                state, self.peers, self.monitoring, owner_tag=self.owner_tag, ca_dir=self._ca_dir()
            )
            if port is not None:
                self.peers.set_published_port(port)
                self._note_told(port)  # told now, as the hook ends
        self._state, self._outcome = state, outcome

    def _apply(self, state: CharmState, with_backend: bool) -> None:
        """Render from the state and hand the files to Pebble; record what went wrong."""
        self._render_error = self._apply_error = None
        self._tls_required = False
        if not state.can_connect or state.version_too_old or state.config is None:
            return
        self._paused_since = pause.paused_since(self.unit.get_container(CONTAINER))
        if self._paused_since is not None:
            # Paused by the pause action: nothing is applied until resume (a reload under PAUSE
            # ends with RESUME; a hand-over would SIGTERM a paused process, which then refuses
            # RESUME). A process Pebble restarted meanwhile is paused too.
            pause.hold(self.unit.get_container(CONTAINER))
            return
        if self._stored.image_missing or state.tls_error:
            # Unusable TLS material: the last good configuration (and its files) keeps running.
            return
        if with_backend and state.backend_unusable:
            # A refused or emptied backend databag: nothing is written, clients stay served.
            return
        try:
            cfg, auth_file, tls_files = desired_config(state, with_backend=with_backend)
            # Monitoring (docs/observability.md): the stats user and the exporter's files.
            stats_line = self.monitoring.stats_auth_line()
            if stats_line:
                cfg = dataclasses.replace(cfg, stats_user=self.monitoring.stats_users_setting())
            exporter_files = self.monitoring.exporter_files(
                cfg.processes, cfg.listen_port, runnable=not self._stored.exporter_absent
            )
            files: dict[str, str | None] = {
                **render_files(cfg),
                AUTH_FILE: auth_file + stats_line,
                **tls_files,
                **exporter_files,
            }
        except RenderError as exc:
            # Nothing is written: the last good configuration keeps running.
            logger.warning("not applying the configuration: %s", exc)
            self._render_error = str(exc)
            return
        except ValueError as exc:  # state.tls.TLSRequiredError
            logger.warning("not applying the configuration: %s", exc)
            self._tls_required = True
            return
        self._processes, self._cfg = cfg.processes, cfg
        # After a port change the old processes serve their clients on the old port for a grace
        # period, so that clients can move once the new endpoints are published (docs/workload.md).
        # They stay while clients may still be told the old port (the leader publishes the new
        # one once every unit listens on it), and at least DRAIN_GRACE_S after that.
        self._note_told(state.peer.published_port)
        # A port change drains for DRAIN_GRACE_S once clients were told the new port; a same-port
        # hand-over (pool_mode, restart, fewer processes) for SAME_PORT_DRAIN_S: each on its own clock.
        now, stored = time.time(), self._stored
        wait_for_clients = parse_version(stored.pgb_version) >= WAIT_FOR_CLIENTS_SINCE
        try:
            result = self.workload.apply(
                files,
                cfg.processes,
                drain_old=not stored.draining_port
                or drain_due(now, stored.told_at, DRAIN_GRACE_S),
                wait_for_clients=wait_for_clients,
                drain_same_port=not stored.handover_at
                or drain_due(now, stored.handover_at, SAME_PORT_DRAIN_S),
            )
        except WorkloadError as exc:
            logger.warning("could not apply the configuration: %s", exc)
            self._apply_error = str(exc)
            return
        if result.changed:
            logger.info("workload: %s", result)
        if result.moved_from is not None:
            self._stored.draining_port, self._stored.told_at = result.moved_from, 0.0
        same_port = [kind for kind in result.handover_kinds if kind != "port"]
        if same_port:
            self._stored.handover_at = now
            self._stored.handover_reason = ", ".join(same_port)
        if not set(result.draining) - set(result.draining_same_port):
            self._stored.draining_port, self._stored.told_at = 0, 0.0
        if not result.draining_same_port:
            self._stored.handover_at, self._stored.handover_reason = 0.0, ""
        ports = {cfg.listen_port, self._stored.draining_port} - {0}
        self.unit.set_ports(*sorted(ports))
        # The publish barrier: the leader answers a client once every unit reports its entry.
        self.peers.set_applied(
            [t.key for t in cfg.databases if t.key in state.peer.databases], cfg.listen_port
        )
        self.peers.set_applied_auth(  # the rotation barrier (rotate-credentials)
            cfg.auth.auth_user if cfg.auth else None,
            self.monitoring.applied_stats_user(self.unit.get_container(CONTAINER), time.time()),
        )

    @staticmethod
    def _client_tls_fields(state: CharmState) -> dict[str, object]:
        """``tls``/``tls-ca`` in the ``database`` answer: true only while TLS is served."""
        material = state.tls_material
        if material is None or state.tls_error:
            return {"tls": False, "tls_ca": None}
        return {"tls": True, "tls_ca": material.ca_pem}  # type: ignore[attr-defined]

    def _ca_dir(self) -> str:
        """Where the backend's CA is kept for the charm's own connections (0700, this unit)."""
        import tempfile
        from pathlib import Path

        return str(
            Path(tempfile.gettempdir()) / f"pgbouncer-k8s-{self.unit.name.replace('/', '-')}"
        )

    def _note_told(self, published_port: int | None) -> None:
        """Remember when clients were first told a port other than the one left draining."""
        draining = self._stored.draining_port
        if draining and published_port != draining and not self._stored.told_at:
            self._stored.told_at = time.time()

    def _publish_port(self, state: CharmState) -> int | None:
        """The port to tell clients: ``listen_port`` once every unit reports listening on it.

        Until then, the port published before: every unit still serves it (a unit that has
        moved keeps its old processes on it, draining, docs/workload.md).
        """
        if state.config is None:
            return None
        wanted = state.config.listen_port
        if all(port == wanted for port in self.peers.applied_ports().values()):
            return wanted
        return state.peer.published_port or wanted

    # -- events ----------------------------------------------------------------------------------
    def _on_change(self, _: ops.EventBase) -> None:
        self._reconcile()

    def _on_update_status(self, _: ops.UpdateStatusEvent) -> None:
        # The leader checks (with a real login as the auth role) and repairs the plumbing.
        self._reconcile(verify=True)

    def _on_version_source(self, _: ops.EventBase) -> None:
        # One exec (docs/image.md), before anything is applied: the image contract, PgBouncer's
        # version and the optional exporter. What is missing, a PgBouncer below 1.21 or one that
        # names no version blocks here, and the running processes are left as they are.
        check = check_image(self.unit.get_container(CONTAINER))
        if check is None:  # Pebble not there (yet): keep what was read before
            logger.warning("could not check the pgbouncer-image: Pebble does not answer")
        else:
            self._stored.image_missing = "; ".join(check.problems)
            self._stored.exporter_absent = EXPORTER_COMMAND in check.absent
            version = check.version or (UNKNOWN_VERSION if check.ran else "")
            self._stored.pgb_version = version
            if version:
                self.unit.set_workload_version(version)
        self._reconcile()

    # -- the seed's charts -----------------------------------------------------------------------
    def _on_backend_created(self, event: ops.RelationEvent) -> None:
        state = self._load_state()
        decision = created_chart(
            leader=state.leader,
            running=state.running,
            refused=state.backend_error is not None,
            backend=state.backend,
            request_written=state.request_written,
        )
        if decision == CREATED_DEFER:
            logger.info("backend database not ready; deferring")
            event.defer()
            return
        if decision == CREATED_SET_UP:
            problem = check_backend(state, self._ca_dir())
            if problem is not None:
                logger.warning("backend refuses connections (%s); deferring", problem)
                self.peers.set_backend_problem(problem)
                event.defer()
                return
        # set-up (and "return": not lost) both complete in the reconcile.
        self._reconcile()
        if decision == CREATED_SET_UP and not self._state_auth_ready():
            event.defer()

    def _state_auth_ready(self) -> bool:
        return self._state is not None and self._state.auth_ready

    def _on_backend_departed(self, event: ops.RelationDepartedEvent) -> None:
        # Step 1: the connection information follows the endpoints that remain.
        self._reconcile()
        state = self._load_state()
        remaining = [u for u in event.relation.units if u != event.departing_unit]
        decision = departed_chart(
            departing_is_self=event.departing_unit == self.unit,
            leader=state.leader,
            planned_units=self.app.planned_units(),
            remaining_remote_units=len(remaining),
        )
        removing = decision in (DEPARTED_REMOVE, DEPARTED_REMOVE_AND_MARK)
        if removing and remove_auth_plumbing(
            state, self.peers, owner_tag=self.owner_tag, ca_dir=self._ca_dir()
        ):
            # Nothing may use (or re-create clients for) the plumbing that just went.
            self.peers.drop_auth()
        if decision in (DEPARTED_MARK, DEPARTED_REMOVE_AND_MARK):
            self.peers.mark_departing(event.relation.id)
        self._state = self._load_state()  # the status tells what the chart just did

    def _on_backend_broken(self, event: ops.RelationBrokenEvent) -> None:
        departing = self.peers.is_departing(event.relation.id)
        decision = broken_chart(
            leader=self.unit.is_leader(),
            departing=departing,
            can_connect=self.workload.can_connect(),
        )
        if departing:
            # SPEC 3.3.1: the departing unit returns; its files stay as they are while its
            # clients drain (the status is read, nothing is applied).
            self._state = self._load_state()
            return
        if decision == BROKEN_DEFER:
            event.defer()
            return
        if decision == BROKEN_DROP:
            self.peers.drop_auth()
        # Every unit stops using the old auth data (the followers through the peer data).
        self._reconcile(with_backend=False)

    def _on_client_broken(self, event: ops.RelationBrokenEvent) -> None:
        if self.unit.is_leader():
            self.clients.forget(event.relation)
        # The role is dropped from the record (now, or by whichever leader next reaches the
        # backend): nothing is kept in unit-local state.
        self._reconcile(gone=event.relation.id)

    # -- status ----------------------------------------------------------------------------------
    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        for status in self._statuses():
            event.add_status(status)

    def _statuses(self) -> list[ops.StatusBase]:
        if self._state is None:
            # A hook none of our handlers ran in: the same reconcile, so the status is true.
            self._reconcile()
        state, outcome = self._state, self._outcome
        assert state is not None  # noqa: S101 (set by the reconcile)
        if not state.can_connect:
            return [ops.WaitingStatus("waiting for the pgbouncer container")]
        if state.config_error:
            return [ops.BlockedStatus(state.config_error)]
        if state.version_too_old:
            need = ".".join(map(str, MIN_PGBOUNCER_VERSION))
            found = f"PgBouncer {state.pgb_version} found"
            if state.pgb_version == UNKNOWN_VERSION:
                found = "pgbouncer --version named no version"
            return [ops.BlockedStatus(f"{found}; {need} or newer needed")]
        if self._stored.image_missing:
            return [ops.BlockedStatus(f"pgbouncer-image lacks: {self._stored.image_missing}")]
        if self._render_error:
            return [ops.BlockedStatus(f"cannot render pgbouncer.ini: {self._render_error}")]
        statuses: list[ops.StatusBase] = []
        if self._tls_required:
            statuses.append(
                ops.BlockedStatus("client_tls_mode is require: waiting for a certificate")
            )
        if state.tls_error:
            status = ops.WaitingStatus if state.tls_waiting else ops.BlockedStatus
            statuses.append(status(state.tls_error))
        elif state.tls_related and state.tls_material is None:
            statuses.append(ops.WaitingStatus("waiting for a TLS certificate"))
        if state.tls_stale:
            older = state.tls_material
            until = f" until {older.not_after:%Y-%m-%d}" if older is not None else ""  # type: ignore[attr-defined]
            status = ops.BlockedStatus if state.tls_stale_fault else ops.WaitingStatus
            statuses.append(status(f"serving an older certificate{until}: {state.tls_stale}"))
        if state.peer.auth_removal_failed:
            statuses.append(ops.BlockedStatus(REMOVE_AUTH_FAILED))
        statuses.extend(self._backend_statuses(state, outcome))
        if self._paused_since is not None:
            statuses.append(
                ops.MaintenanceStatus("paused (pause action): clients wait until resume")
            )
        statuses.extend(ops.BlockedStatus(message) for message in outcome.client_blocked)
        statuses.extend(
            ops.BlockedStatus(f"client user {user} of a removed relation not dropped yet: {why}")
            for user, why in sorted(outcome.cleanup_failed.items())
        )
        if outcome.tenancy_problem is not None:
            problem, blocked = outcome.tenancy_problem
            status_type = ops.BlockedStatus if blocked else ops.WaitingStatus
            statuses.append(status_type(f"tenant check failed: {problem}"))
        waiting = outcome.client_waiting
        for rel_id in sorted(waiting):
            if waiting[rel_id] != WAITING_FOR_BACKEND:
                statuses.append(ops.WaitingStatus(f"client relation {rel_id}: {waiting[rel_id]}"))
        pending = [str(i) for i in sorted(waiting) if waiting[i] == WAITING_FOR_BACKEND]
        if pending:
            ids = ", ".join(pending)
            statuses.append(ops.WaitingStatus(f"client relation(s) {ids} {WAITING_FOR_BACKEND}"))
        if self._apply_error:
            statuses.append(ops.WaitingStatus(f"pgbouncer container: {self._apply_error}"))
        elif not self._running():
            statuses.append(ops.WaitingStatus("PgBouncer is not running"))
        processes = "process" if self._processes == 1 else "processes"
        message = f"{self._processes} PgBouncer {processes}"
        left_out = left_out_settings(self._cfg) if self._cfg is not None else ()
        if left_out:
            message += f"; {', '.join(left_out)} ignored: needs PgBouncer 1.24"
        if outcome.repaired:
            message += f"; repaired the auth plumbing ({outcome.repaired[0]})"
        if outcome.tenancy_repaired:
            message += f"; put back {outcome.tenancy_repaired[0]}"
        rotation = self.peers.rotation()
        if rotation is not None:
            note = rotation.status_note(self.peers.applied_auth(), self.peers.applied_stats())
            message += f"; {note}"
        if self._stored.draining_port:
            message += f"; port {self._stored.draining_port} draining"
        if self._stored.handover_at:
            message += f"; old processes draining ({self._stored.handover_reason})"
        if self._stored.exporter_absent and self.model.relations.get(METRICS_RELATION):
            message += f"; no metrics: pgbouncer-image has no {EXPORTER_COMMAND}"
        statuses.append(ops.ActiveStatus(message))
        return statuses

    def _running(self) -> bool:
        try:
            return self.workload.is_running()
        except WorkloadError:
            return False

    @staticmethod
    def _backend_statuses(state: CharmState, outcome: LeaderOutcome) -> list[ops.StatusBase]:
        if not state.backend_related:
            return [ops.BlockedStatus("waiting for a backend-database relation")]
        if state.backend_error:
            kept = "; the last good configuration keeps serving" if state.auth else ""
            return [ops.BlockedStatus(f"{state.backend_error}{kept}")]
        if state.backend_unusable:
            return [
                ops.BlockedStatus(
                    "backend-database sends no endpoints or credentials any more;"
                    " the last good configuration keeps serving"
                )
            ]
        if state.backend is None:
            return [ops.WaitingStatus("waiting for backend-database credentials")]
        problem = outcome.backend_problem or state.peer.backend_problem
        if problem:
            return [ops.WaitingStatus(f"backend unreachable: {problem}")]
        if not state.auth_ready:
            return [ops.WaitingStatus("waiting for the auth user on the backend")]
        return []


if __name__ == "__main__":  # pragma: nocover
    ops.main(PgBouncerK8sCharm)
