"""The operator's actions (docs/actions.md): audit, pause, resume, pools, rotation.

Each handler reads what it needs, calls one module that does the work, and turns the outcome
into action results or a failure message. No result, message or log line holds a secret.
psycopg and the audit load only inside the handlers that need them, so that no other hook
pays for them (tests/unit/test_lean_hooks.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import ops

if TYPE_CHECKING:
    from reconcile import BackendEffects
    from relations.admin import AdminIdentity
    from relations.client_database import ClientDatabaseRelation
    from relations.metrics import Monitoring
    from state.charm_state import CharmState

logger = logging.getLogger(__name__)

NOT_LEADER = "{action} runs on the leader: juju run {app}/leader {action}"
NOT_POOLED = "this unit pools no database {database!r}; it pools: {served}"
NO_ADMIN = "no admin user yet: the leader creates it in its next hook (then retry)"
HOLD_PAUSE_WAIT_S = 2.0
"""A hook re-pausing a database waits at most this for its transactions per process."""


class Actions(ops.Object):
    """Observes the actions and delegates each to the module that does it.

    Args:
        charm: the charm.
        container: the workload container.
        clients: the ``database`` relation adapter (the live client relations).
        monitoring: the stats identity (its password reads the consoles).
        load_state: the charm's one read of the world.
        ca_dir: where the backend's CA is kept for the charm's own connections.
        admin: the admin identity (``PAUSE <db>``/``RESUME <db>`` on the consoles).
        effects: what the charm does to PostgreSQL (rotate-credentials), the charm's own.
    """

    def __init__(
        self,
        charm: ops.CharmBase,
        container: ops.Container,
        clients: ClientDatabaseRelation,
        monitoring: Monitoring,
        load_state: Callable[[], CharmState],
        ca_dir: Callable[[], str],
        admin: AdminIdentity | None = None,
        effects: BackendEffects | None = None,
    ):
        super().__init__(charm, "actions")
        self._admin = admin
        self._effects = effects
        self._charm = charm
        self._container = container
        self._clients = clients
        self._monitoring = monitoring
        self._load_state = load_state
        self._ca_dir = ca_dir
        observe = charm.framework.observe
        observe(charm.on.audit_tenancy_action, self._on_audit_tenancy)
        observe(charm.on.pause_action, self._on_pause)
        observe(charm.on.resume_action, self._on_resume)
        observe(charm.on.show_pools_action, self._on_show_pools)
        observe(charm.on.rotate_credentials_action, self._on_rotate_credentials)

    @property
    def owner_tag(self) -> str:
        """``<model-uuid>/<app-name>``, as the charm marks what it creates."""
        return f"{self._charm.model.uuid}/{self._charm.app.name}"

    # -- audit-tenancy -----------------------------------------------------------------------
    def _on_audit_tenancy(self, event: ops.ActionEvent) -> None:
        if not self._charm.unit.is_leader():
            event.fail(NOT_LEADER.format(action="audit-tenancy", app=self._charm.app.name))
            return
        state = self._load_state()
        if state.backend is None or state.auth is None:
            event.fail("no backend to audit: waiting for the backend-database relation")
            return
        from pgbouncer.exporter import STATS_USERS
        from postgres.audit import BREACH, DRIFT, audit_tenancy
        from postgres.connection import BackendError
        from reconcile import credentials
        from relations.admin import ADMIN_USER

        live = {relation.id for relation in self._clients.relations}
        started = time.monotonic()
        try:
            found = audit_tenancy(
                credentials(state, self._ca_dir()),
                state.tenants,
                live,
                owner_tag=self.owner_tag,
                auth_user=state.auth.lookup_schema,
                console_users=(*STATS_USERS, ADMIN_USER),
            )
        except BackendError as exc:  # its text never holds the password (postgres.connection)
            event.fail(f"could not read the backend: {exc}")
            return
        seconds = time.monotonic() - started
        counts = {s: sum(v.severity == s for v in found) for s in ("breach", "drift", "hazard")}
        ok = counts[BREACH] == 0 and counts[DRIFT] == 0
        logger.info(
            "audit-tenancy: %d findings (%s) in %.1f s",
            len(found),
            ", ".join(f"{n} {s}" for s, n in counts.items()),
            seconds,
        )
        event.set_results(
            {
                "ok": "true" if ok else "false",
                "violations": json.dumps([v.as_dict() for v in found]),
                "counts": json.dumps(counts),
                "tenants": str(len(state.tenants.databases)),
                "seconds": f"{seconds:.2f}",
            }
        )

    # -- pause / resume ----------------------------------------------------------------------
    def _on_pause(self, event: ops.ActionEvent) -> None:
        if not self._container.can_connect():
            event.fail("the pgbouncer container does not answer")
            return
        database = event.params.get("database")
        if database:
            self._pause_database(event, str(database))
            return
        from pgbouncer import pause

        processes = pause.pause(self._container, time.time())
        if not processes.serving:
            event.log("no PgBouncer process serves now; the unit stays paused until resume")
        event.set_results(
            {
                "paused": json.dumps(list(processes.serving)),
                "draining-left-alone": json.dumps(list(processes.draining)),
            }
        )

    def _on_resume(self, event: ops.ActionEvent) -> None:
        if not self._container.can_connect():
            event.fail("the pgbouncer container does not answer")
            return
        database = event.params.get("database")
        if database:
            self._resume_database(event, str(database))
            return
        from pgbouncer import console, pause

        marker = pause.read_marker(self._container)
        if marker is not None and marker.databases:
            # SIGUSR2 ends the whole-unit PAUSE only: each paused database is resumed on the
            # consoles first, or it would stay paused with no marker left to say so.
            serving = pause.running_processes(self._container).serving
            try:
                missed = self._on_consoles(
                    serving, lambda c, _: [console.resume_database(c, d) for d in marker.databases]
                )[1]
            except (console.ConsoleError, ValueError) as exc:
                event.fail(f"could not resume {', '.join(marker.databases)}: {exc}")
                return
            if missed:
                event.fail(
                    f"RESUME of {', '.join(marker.databases)} did not reach {', '.join(missed)};"
                    " the unit stays paused: run resume again"
                )
                return
        processes = pause.resume(self._container)
        event.set_results(
            {
                "resumed": json.dumps(list(processes.serving)),
                "draining-left-alone": json.dumps(list(processes.draining)),
                "was-paused": "true" if marker is not None else "false",
                "databases-resumed": json.dumps(list(marker.databases if marker else ())),
            }
        )

    def _on_consoles(
        self, serving: tuple[str, ...], work: Callable, **kwargs
    ) -> tuple[dict, list]:
        """Run ``work`` on each serving process's console as the admin user.

        Raises:
            ValueError: no admin user yet, or no port set.
            ConsoleError: no console answered.
        """
        from pgbouncer import console
        from relations.admin import ADMIN_USER

        password = self._admin.password() if self._admin is not None else None
        if password is None:
            raise ValueError(NO_ADMIN)
        port = self._charm.config.get("listen_port")
        if not isinstance(port, int):
            raise ValueError("listen_port is not set")
        if not serving:
            return {}, []
        return console.on_each_process(
            port,
            ADMIN_USER,
            password,
            serving,
            work,
            application_name="pgbouncer-k8s-pause",
            **kwargs,
        )

    def _pooled(self) -> set[str]:
        """The client databases the unit pools (``[databases]`` keys, ``_readonly`` twins too)."""
        from relations.peers import Peers

        names = set(Peers(self._charm).app_data().databases)
        return names | {f"{name}_readonly" for name in names}

    def _pause_database(self, event: ops.ActionEvent, database: str) -> None:
        from pgbouncer import console, pause

        pooled = self._pooled()
        if database not in pooled:
            served = ", ".join(sorted(pooled)) or "none"
            event.fail(NOT_POOLED.format(database=database, served=served))
            return
        processes = pause.running_processes(self._container)
        before = pause.read_marker(self._container)
        marker = pause.PauseMarker(
            before.since if before is not None else time.time(),
            before.unit if before is not None else False,
            tuple(sorted({*(before.databases if before else ()), database})),
        )
        # Recorded first: a process restarted meanwhile is paused again by the next hook.
        pause.write_marker(self._container, marker)

        def work(conn: object, _: str) -> str:
            if database not in console.served_databases(conn):
                return "not-served"
            return console.pause_database(conn, database)

        try:
            done, missed = self._on_consoles(processes.serving, work)
        except (console.ConsoleError, ValueError) as exc:
            pause.write_marker(self._container, before or pause.PauseMarker(0.0, False))
            event.fail(f"could not pause {database}: {exc}")
            return
        if done and all(outcome == "not-served" for outcome in done.values()):
            pause.write_marker(self._container, before or pause.PauseMarker(0.0, False))
            event.fail(NOT_POOLED.format(database=database, served="what its ini lists"))
            return
        if missed:
            event.log(f"not reached: {', '.join(missed)}; the next hook pauses {database} there")
        event.set_results(
            {
                "database": database,
                "paused": json.dumps(sorted(s for s, o in done.items() if o == console.PAUSED)),
                "pausing": json.dumps(sorted(s for s, o in done.items() if o == console.PENDING)),
                "not-reached": json.dumps(missed),
                "draining-left-alone": json.dumps(list(processes.draining)),
            }
        )

    def _resume_database(self, event: ops.ActionEvent, database: str) -> None:
        from pgbouncer import console, pause

        before = pause.read_marker(self._container)
        was = before is not None and database in before.databases
        if not was and database not in self._pooled():
            event.fail(NOT_POOLED.format(database=database, served="no paused database by it"))
            return
        processes = pause.running_processes(self._container)
        try:
            done, missed = self._on_consoles(
                processes.serving, lambda conn, _: console.resume_database(conn, database)
            )
        except (console.ConsoleError, ValueError) as exc:
            event.fail(f"could not resume {database}: {exc}")
            return
        if missed:
            event.fail(
                f"RESUME {database} did not reach {', '.join(missed)}; it stays paused:"
                " run resume again"
            )
            return
        if before is not None:
            left = tuple(d for d in before.databases if d != database)
            pause.write_marker(self._container, dataclasses.replace(before, databases=left))
        event.set_results(
            {
                "database": database,
                "resumed": json.dumps(sorted(done)),
                "draining-left-alone": json.dumps(list(processes.draining)),
                "was-paused": "true" if was else "false",
            }
        )

    def hold_databases(self, databases: tuple[str, ...], serving: tuple[str, ...]) -> None:
        """A hook while databases are paused: PAUSE them again where a process is not paused.

        A process Pebble restarted (or one started since) serves them again; this pauses them
        there. Bounded (:data:`HOLD_PAUSE_WAIT_S` per process); a failure is logged and the
        next hook tries again: the hook itself never fails on it.
        """
        from pgbouncer import console

        def work(conn: object, _: str) -> list[str]:
            served = console.served_databases(conn)
            return [
                console.pause_database(conn, d, HOLD_PAUSE_WAIT_S)
                for d in databases
                if d in served
            ]

        try:
            _, missed = self._on_consoles(serving, work)
        except (console.ConsoleError, ValueError) as exc:
            logger.warning("could not hold %s paused: %s", ", ".join(databases), exc)
            return
        if missed:
            logger.warning("could not hold %s paused on %s", ", ".join(databases), missed)

    # -- show-pools --------------------------------------------------------------------------
    def _on_show_pools(self, event: ops.ActionEvent) -> None:
        from pgbouncer import console, pause

        if not self._container.can_connect():
            event.fail("the pgbouncer container does not answer")
            return
        password = self._monitoring.stats_password()
        if password is None:
            event.fail("no stats user yet: the leader creates it in its next hook")
            return
        port = self._charm.config.get("listen_port")
        if not isinstance(port, int):
            event.fail("listen_port is not set")
            return
        processes = pause.running_processes(self._container)
        try:
            read, missed = console.read_processes(
                port, password, processes.serving, user=self._monitoring.stats_user()
            )
        except console.ConsoleError as exc:
            event.fail(str(exc))
            return
        results = dict(console.pools_results(read, missed))
        results["draining-not-read"] = json.dumps(list(processes.draining))
        event.set_results(results)

    # -- rotate-credentials ------------------------------------------------------------------
    def _on_rotate_credentials(self, event: ops.ActionEvent) -> None:
        if not self._charm.unit.is_leader():
            event.fail(NOT_LEADER.format(action="rotate-credentials", app=self._charm.app.name))
            return
        from postgres.effects import PostgreSQL
        from relations.peers import Peers
        from rotation import RotationError, start_rotation

        try:
            results = start_rotation(
                self._load_state(),
                Peers(self._charm),
                self._monitoring,
                self._effects or PostgreSQL(),
                owner_tag=self.owner_tag,
                ca_dir=self._ca_dir(),
                now=time.time(),
            )
        except RotationError as exc:
            event.fail(str(exc))
            return
        event.log("started; the old password goes once every unit uses the new one")
        event.set_results(results)
