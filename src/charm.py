#!/usr/bin/env python3
"""pgbouncer-k8s: PgBouncer on Kubernetes in front of a PostgreSQL charm.

One reconcile per hook (docs/architecture.md): the inputs are read once into a pure
:class:`~state.charm_state.CharmState`; the PgBouncer configuration is a function of it; the
leader makes the backend match it (``reconcile``); every unit renders and applies; the status is
computed from what that reconcile actually did. The created / departed / broken charts of docs/backend-database.md
stay named decisions (``relations.backend_database``) whose effects go through the same path.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import ops

import settled
from actions import Actions
from pgbouncer import pause
from pgbouncer.config import (
    AUTH_FILE,
    effective_processes,
    left_out_settings,
    render_files,
)
from pgbouncer.desired import CertificateRequired, desired_config
from pgbouncer.drain import CLOCKS_FILE, DrainClocks
from pgbouncer.image import FACTS_FILE, ImageFacts, check_image
from pgbouncer.ini import RenderError
from pgbouncer.plan import ContainerSnapshot, plan_apply
from pgbouncer.workload import Workload, WorkloadError
from postgres.deadline import start_hook_budget
from postgres.effects import PostgreSQL
from reconcile import (
    BackendEffects,
    LeaderOutcome,
    check_backend,
    ensure_auth,
    publish_answers,
    remove_auth_plumbing,
    serve_clients,
)
from relations.admin import ADMIN_USER, AdminIdentity
from relations.backend_database import (
    BACKEND_RELATION,
    BROKEN_DEFER,
    BROKEN_DROP,
    CREATED_DEFER,
    CREATED_SET_UP,
    DEPARTED_MARK,
    DEPARTED_REMOVE,
    DEPARTED_REMOVE_AND_MARK,
    BackendDatabaseRequirer,
    broken_chart,
    created_chart,
    departed_chart,
)
from relations.client_database import CLIENT_RELATION, ClientDatabaseRelation, client_endpoint
from relations.grafana_dashboard import GrafanaDashboardProvider
from relations.logging import LogForwarding
from relations.metrics import METRICS_RELATION, Monitoring
from relations.peers import Peers
from rotation import advance_rotation
from state.backend import InvalidBackendDataError
from state.charm_state import CharmState, parse_version
from state.config import CharmConfig, InvalidConfigError
from status import UnitOutcome, settles, unit_statuses
from tls_inputs import tls_inputs

logger = logging.getLogger(__name__)

CONTAINER = "pgbouncer"
CERTIFICATES_RELATION = "certificates"

QUIET_EVENTS = frozenset({"stop", "remove", "collect_metrics"})
"""Hooks that change nothing the charm serves: no reconcile, and the status stays as it was."""


def _new_password() -> str:
    from postgres.passwords import generate_password

    return generate_password()


class PgBouncerK8sCharm(ops.CharmBase):
    """Runs PgBouncer under Pebble and keeps its auth plumbing and databases in step."""

    effects: BackendEffects = PostgreSQL()
    """What the leader does to PostgreSQL; unit tests give the charm class another object."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        start_hook_budget()
        self._container = self.unit.get_container(CONTAINER)
        self.workload = Workload(self._container)
        self.peers = Peers(self)
        self.backend = BackendDatabaseRequirer(self)
        self.clients = ClientDatabaseRelation(self)
        self.monitoring = Monitoring(self)  # stats user, exporter, metrics-endpoint
        self.admin = AdminIdentity(self)  # the console user of pause/resume <database>
        self.settled = settled.SettledHooks(self, self.workload, CLIENT_RELATION)
        # TLS (docs/tls.md): the certificates library (and cryptography) load only when the
        # relation exists; its removal is a relation-broken the charm observes itself.
        self.tls = None
        if self.model.relations[CERTIFICATES_RELATION]:
            from relations.tls import CertificatesRelation

            self.tls = CertificatesRelation(self)
            framework.observe(self.tls.requirer.on.certificate_available, self._on_change)
        # What the hook saw (read once, by _load_state) and what it did (for the status).
        self._state: CharmState | None = None
        self._container_seen: ContainerSnapshot | None = None
        self._image = ImageFacts()
        self._clocks = DrainClocks()
        self._paused_since: float | None = None
        self._pause: pause.PauseMarker | None = None
        self._leader_outcome = LeaderOutcome()
        self._unit_outcome: UnitOutcome | None = None
        # Operator actions (docs/actions.md); the pause they set is read by every apply.
        self.actions = Actions(
            self, self._container, self.clients, self.monitoring, self._load_state, self._ca_dir,
            self.admin, self.effects,
        )  # fmt: skip
        observe = framework.observe
        observe(self.on[CONTAINER].pebble_ready, self._on_version_source)
        observe(self.on.upgrade_charm, self._on_version_source)
        observe(self.on.update_status, self._on_update_status)
        observe(self.backend.on.database_created, self._on_backend_created)
        observe(self.on[BACKEND_RELATION].relation_departed, self._on_backend_departed)
        observe(self.on[BACKEND_RELATION].relation_broken, self._on_backend_broken)
        observe(self.on[CLIENT_RELATION].relation_changed, self._on_client_changed)
        observe(self.on[CLIENT_RELATION].relation_broken, self._on_client_broken)
        observe(self.on.collect_unit_status, self._on_collect_status)
        # pause, resume and rotate-credentials change what the unit serves: the reconcile after
        # them (their own handlers ran first) applies it, and the status says so.
        for action in (self.on.pause_action, self.on.resume_action):
            observe(action, self._on_action_done)
        observe(self.on.rotate_credentials_action, self._on_action_done)
        # Every other hook runs the one reconcile (config, leadership, secrets, every relation's
        # other events), so that the status always tells what is: said here, not found out
        # by the status.
        backend, client = (name.replace("-", "_") for name in (BACKEND_RELATION, CLIENT_RELATION))
        handled = {"upgrade_charm", "update_status", f"{CONTAINER}_pebble_ready"}
        handled |= {f"{backend}_relation_departed", f"{backend}_relation_broken"}
        handled |= {f"{client}_relation_changed", f"{client}_relation_broken"}
        for name, bound in self.on.events().items():
            if (
                issubclass(bound.event_type, ops.HookEvent)
                and name not in handled | QUIET_EVENTS
                and not name.startswith(("collect_", "pre_series", "post_series"))
            ):
                observe(bound, self._on_change)

    @property
    def owner_tag(self) -> str:
        """What marks the PostgreSQL objects this application created: model uuid and name."""
        return f"{self.model.uuid}/{self.app.name}"

    # -- reading the world once ----------------------------------------------------------------
    def _load_state(self) -> CharmState:
        """The hook's state: read once (:meth:`_read_world`), then updated by what it does."""
        if self._state is None:
            self._state = self._read_world()
        return self._state

    def _read_world(self) -> CharmState:
        """Everything the hook can see, read once: Juju's inputs and the container.

        The settled record goes first: it is written again only if this hook ends clean, so a
        hook that fails half-way leaves none (the next hook reconciles in full).
        """
        self.settled.forget()
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
        cpus, snapshot = 1, None
        if can_connect:
            try:
                cpus, snapshot = self.workload.cpu_limit(), self.workload.observe()
            except WorkloadError as exc:
                logger.warning("pgbouncer container: %s", exc)
        self._container_seen = snapshot
        files = snapshot.files if snapshot is not None else {}
        self._image = ImageFacts.from_text(files.get(FACTS_FILE))
        self._clocks = DrainClocks.from_text(files.get(CLOCKS_FILE))
        self._paused_since = pause.paused_since_in(files)
        self._pause = pause.marker_in(files)
        served = self.workload.served_client_tls(snapshot) if snapshot is not None else None
        tls = tls_inputs(self.tls, self.backend, relation, served)
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
            pgb_version=self._image.version or None,
            can_connect=can_connect,
            running=snapshot is not None and snapshot.pgbouncer_running(),
        )

    # -- the reconcile ---------------------------------------------------------------------------
    def _reconcile(
        self, *, verify: bool = False, gone: int | None = None, with_backend: bool = True
    ) -> None:
        """Leader: make the backend match; every unit: render and apply; record the outcome.

        The state is read once; what the leader's effects change in it (the auth plumbing set
        up, the databases served) is carried into it, not read again.
        """
        if self.unit.is_leader():
            self.monitoring.ensure_stats_secret(_new_password)
            self.admin.ensure_secret(_new_password)
        state = self._load_state()
        unit = self._apply(state, with_backend)
        self.monitoring.publish(
            serving=not self._image.exporter_absent,
            go_processes=self._go_processes(state) if self._image.exporter_go else None,
        )
        GrafanaDashboardProvider(self, self.monitoring.topology()).publish()
        LogForwarding(self, self._container, self.monitoring.topology()).apply()
        outcome = LeaderOutcome()
        if not with_backend:
            self._finish(state, outcome, unit)
            return
        # The apply above may just have started PgBouncer: the set-up waits for nothing.
        state = dataclasses.replace(state, running=unit.running)
        if state.leader:
            ensure_auth(
                state,
                self.peers,
                self.effects,
                owner_tag=self.owner_tag,
                verify=verify,
                outcome=outcome,
                ca_dir=self._ca_dir(),
            )
            # What the leader wrote to the peer data (the auth secret, a problem cleared) is
            # carried into the state from the databag it wrote, not read from Juju again.
            state = dataclasses.replace(state, peer=self.peers.app_data())
            if outcome.set_up:
                state = dataclasses.replace(state, auth=outcome.auth)
        port = self._publish_port(state)
        endpoint = None if port is None else client_endpoint(self.app.name, self.model.name, port)
        served = serve_clients(
            state,
            self.clients,
            self.peers,
            self.effects,
            owner_tag=self.owner_tag,
            endpoint=endpoint,
            tls_fields=self._client_tls_fields(state),
            ca_dir=self._ca_dir(),
            gone=gone,
            outcome=outcome,
            verify=verify,
        )
        if state.leader:
            state = dataclasses.replace(state, tenants=self.peers.tenants())
        databases_changed = state.leader and served != dict(state.peer.databases)
        if databases_changed:
            self.peers.set_databases(served)
            state = dataclasses.replace(
                state, peer=dataclasses.replace(state.peer, databases=served)
            )
        if outcome.set_up or databases_changed:
            unit = self._apply(state, with_backend)
        if state.leader:
            publish_answers(self.clients, outcome, self.peers.applied())
            advance_rotation(
                state,
                self.peers,
                self.monitoring,
                self.effects,
                owner_tag=self.owner_tag,
                ca_dir=self._ca_dir(),
            )
            if port is not None:
                self.peers.set_published_port(port)
                state = dataclasses.replace(
                    state, peer=dataclasses.replace(state.peer, published_port=port)
                )
                self._clocks = self._clocks.told(port, time.time())  # told now, as the hook ends
        self._finish(state, outcome, unit)

    def _finish(self, state: CharmState, outcome: LeaderOutcome, unit: UnitOutcome) -> None:
        """Keep what the hook did for the status; save the drain clocks if they moved."""
        self._state, self._leader_outcome = state, outcome
        self._unit_outcome = dataclasses.replace(
            unit,
            draining_port=self._clocks.draining_port,
            handover_reason=self._clocks.handover_reason if self._clocks.handover_at else "",
        )
        seen = self._container_seen
        if seen is None:
            return
        text = self._clocks.to_text() if self._clocks != DrainClocks() else None
        if seen.files.get(CLOCKS_FILE) != text:
            self._container_seen = dataclasses.replace(seen, listing=None)
            try:
                self.workload.put_fact(CLOCKS_FILE, text)
            except WorkloadError as exc:
                logger.warning("could not save the drain clocks: %s", exc)

    def _apply(self, state: CharmState, with_backend: bool) -> UnitOutcome:
        """Render from the state, plan against the container, carry the plan out."""
        seen = self._container_seen
        outcome = UnitOutcome(running=seen is not None and seen.pgbouncer_running())
        if seen is None or state.version_too_old or state.config is None:
            if state.can_connect and seen is None:
                return dataclasses.replace(outcome, apply_error="the container cannot be read")
            return outcome
        if self._paused_since is not None:
            # Paused by the pause action: nothing is applied until resume (a reload under PAUSE
            # ends with RESUME; a hand-over would SIGTERM a paused process, which then refuses
            # RESUME). A process Pebble restarted meanwhile is paused too; so are the paused
            # databases (docs/actions.md).
            marker = self._pause or pause.PauseMarker(self._paused_since)
            pause.hold(self._container, marker, self.actions.hold_databases)
            return dataclasses.replace(
                outcome, paused=marker.unit, paused_databases=marker.databases
            )
        if self._image.problems or state.tls_error:
            # Unusable TLS material: the last good configuration (and its files) keeps running.
            return outcome
        if with_backend and state.backend_unusable:
            # A refused or emptied backend databag: nothing is written, clients stay served.
            return outcome
        try:
            cfg, auth_file, tls_files = desired_config(state, with_backend=with_backend)
            # Monitoring (docs/observability.md): the stats user and the exporter's files.
            stats_line = self.monitoring.stats_auth_line()
            if stats_line:
                cfg = dataclasses.replace(cfg, stats_user=self.monitoring.stats_users_setting())
            admin_line = self.admin.auth_line()
            if admin_line:
                cfg = dataclasses.replace(cfg, admin_user=ADMIN_USER)
            exporter_files = self.monitoring.exporter_files(
                cfg.processes,
                cfg.listen_port,
                runnable=not self._image.exporter_absent,
                go=self._image.exporter_go,
            )
            files: dict[str, str | None] = {
                **render_files(cfg),
                AUTH_FILE: auth_file + stats_line + admin_line,
                **tls_files,
                **exporter_files,
            }
            # After a port change the old processes serve their clients on the old port until
            # the new one has been published a while; a same-port hand-over drains on its own
            # clock (docs/workload.md, pgbouncer.drain).
            now = time.time()
            clocks = self._clocks.told(state.peer.published_port, now)
            policy = clocks.policy(now, parse_version(state.pgb_version))
            plan = plan_apply(seen, files, cfg.processes, policy)
        except RenderError as exc:
            # Nothing is written: the last good configuration keeps running.
            logger.warning("not applying the configuration: %s", exc)
            return dataclasses.replace(outcome, render_error=str(exc))
        except CertificateRequired as exc:
            logger.warning("not applying the configuration: %s", exc)
            return dataclasses.replace(outcome, tls_required=True)
        outcome = dataclasses.replace(
            outcome, processes=cfg.processes, left_out=left_out_settings(cfg)
        )
        self._clocks = clocks
        try:
            result = self.workload.execute(plan)
        except WorkloadError as exc:
            logger.warning("could not apply the configuration: %s", exc)
            self._container_seen = None  # what was done of the plan is not known: read again
            return dataclasses.replace(outcome, apply_error=str(exc), running=False)
        if result.changed:
            logger.info("workload: %s", result)
        self._container_seen = seen.after(plan)
        self._clocks = clocks.after(result, now)
        ports = {cfg.listen_port, self._clocks.draining_port} - {0}
        self.unit.set_ports(*sorted(ports))
        # The publish barrier: the leader answers a client once every unit reports its entry.
        self.peers.set_applied(
            [t.key for t in cfg.databases if t.key in state.peer.databases], cfg.listen_port
        )
        self.peers.set_applied_auth(  # the rotation barrier (rotate-credentials)
            cfg.auth.auth_user if cfg.auth else None,
            self.monitoring.applied_stats_user(self._container, time.time()),
        )
        return dataclasses.replace(outcome, running=self._container_seen.pgbouncer_running())

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

    def _settled(self, hook: str, relation: ops.Relation | None = None) -> bool:
        """Whether this hook can change nothing (:mod:`settled`): it ends here, no status set.

        Never once a reconcile ran in this hook (a deferred event re-emitted before it).
        """
        return self._state is None and self.settled.may_end(hook, relation)

    # -- events ----------------------------------------------------------------------------------
    def _on_change(self, event: ops.EventBase) -> None:
        if isinstance(event, ops.ConfigChangedEvent) and self._settled(settled.CONFIG_CHANGED):
            return
        self._reconcile()

    def _on_client_changed(self, event: ops.RelationChangedEvent) -> None:
        if self._settled(settled.CLIENT_CHANGED, event.relation):
            return
        self.clients.changed(event)
        self._reconcile()

    def _on_action_done(self, _: ops.ActionEvent) -> None:
        # The action changed the world outside the hook's state (the pause marker, a new auth
        # generation in the secret and the peer data): the reconcile reads what it left.
        self._state = None
        self._reconcile()

    def _on_update_status(self, _: ops.UpdateStatusEvent) -> None:
        if self._settled(settled.UPDATE_STATUS):
            return
        # The leader checks (with a real login as the auth role) and repairs the plumbing, at
        # most every half hour unless the last attempt failed (postgres.verification).
        from postgres.verification import verification_due

        state = self._load_state()
        failed = bool(state.peer.backend_problem)
        self._reconcile(verify=state.leader and verification_due(self.charm_dir, force=failed))

    def _on_version_source(self, _: ops.EventBase) -> None:
        # One exec (docs/image.md), before anything is applied: the image contract, PgBouncer's
        # version and the optional exporter, kept in a file of the container they describe.
        # What is missing, a PgBouncer below 1.21 or one that names no version blocks here,
        # and the running processes are left as they are.
        check = check_image(self._container)
        if check is None:  # Pebble not there (yet): keep what was read before
            logger.warning("could not check the pgbouncer-image: Pebble does not answer")
        else:
            facts = ImageFacts.from_check(check)
            self._load_state()  # the container as it is, the findings kept before included
            seen = self._container_seen
            if seen is None or seen.files.get(FACTS_FILE) != facts.to_text():
                try:
                    self.workload.put_fact(FACTS_FILE, facts.to_text())
                except WorkloadError as exc:
                    logger.warning("could not keep the image check's findings: %s", exc)
                else:
                    if seen is not None:
                        files = {**seen.files, FACTS_FILE: facts.to_text()}
                        self._container_seen = dataclasses.replace(seen, files=files, listing=None)
            if facts.version:
                self.unit.set_workload_version(facts.version)
            self._image = facts
            state = self._load_state()
            self._state = dataclasses.replace(state, pgb_version=facts.version or None)
        self._reconcile()

    # -- the backend-database charts (docs/backend-database.md) -------------------------------
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
            problem = check_backend(state, self.effects, self._ca_dir())
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
            state, self.peers, self.effects, owner_tag=self.owner_tag, ca_dir=self._ca_dir()
        ):
            # Nothing may use (or re-create clients for) the plumbing that just went.
            self.peers.drop_auth()
        if decision in (DEPARTED_MARK, DEPARTED_REMOVE_AND_MARK):
            self.peers.mark_departing(event.relation.id)
        # The status tells what the chart just did: the peer data it changed.
        self._state = dataclasses.replace(
            state, peer=self.peers.app_data(), tenants=self.peers.tenants()
        )
        if self._state.peer.auth_secret_id is None:
            self._state = dataclasses.replace(self._state, auth=None)

    def _on_backend_broken(self, event: ops.RelationBrokenEvent) -> None:
        departing = self.peers.is_departing(event.relation.id)
        decision = broken_chart(
            leader=self.unit.is_leader(),
            departing=departing,
            can_connect=self.workload.can_connect(),
        )
        if departing:
            # The departing unit returns: its files stay as they are while its clients drain
            # (the status is read, nothing is applied).
            self._finish(self._load_state(), LeaderOutcome(), self._unit_seen())
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

    @staticmethod
    def _go_processes(state: CharmState) -> int:
        """The process count the Go exporters' scrape jobs are published for (docs/image.md)."""
        max_db = state.config.max_db_connections if state.config is not None else 0
        return effective_processes(state.cpus, max_db)

    # -- status ----------------------------------------------------------------------------------
    def _unit_seen(self) -> UnitOutcome:
        """The workload side of a hook that applies nothing: what the container shows."""
        seen = self._container_seen
        return UnitOutcome(
            running=seen is not None and seen.pgbouncer_running(),
            paused=self._pause is not None and self._pause.unit,
            paused_databases=self._pause.databases if self._pause is not None else (),
        )

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        if self._state is None or self._unit_outcome is None:
            return  # a quiet or settled hook: the last status stands
        notes = self._notes()
        statuses = self._statuses(notes)
        for status in statuses:
            event.add_status(status)
        clean = settles(statuses, self._unit_outcome, self._leader_outcome, notes)
        self.settled.keep(self._state if clean else None, self._container_seen)

    def _notes(self) -> tuple[str, ...]:
        rotation = self.peers.rotation()
        if rotation is None:
            return ()
        return (rotation.status_note(self.peers.applied_auth(), self.peers.applied_stats()),)

    def _statuses(self, notes: tuple[str, ...] | None = None) -> list[ops.StatusBase]:
        """What the hook saw and did, as statuses; none in a quiet hook (the status stays)."""
        if self._state is None or self._unit_outcome is None:
            return []
        return unit_statuses(
            self._state,
            self._image,
            self._unit_outcome,
            self._leader_outcome,
            metrics_related=bool(self.model.relations.get(METRICS_RELATION)),
            notes=self._notes() if notes is None else notes,
        )


if __name__ == "__main__":  # pragma: nocover
    ops.main(PgBouncerK8sCharm)
