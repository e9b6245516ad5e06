"""The operator's actions (docs/actions.md): audit, pause, resume, pools, rotation.

Each handler reads what it needs, calls one module that does the work, and turns the outcome
into action results or a failure message. No result, message or log line holds a secret.
psycopg and the audit load only inside the handlers that need them, so that no other hook
pays for them (tests/unit/test_lean_hooks.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import ops

if TYPE_CHECKING:
    from relations.client_database import ClientDatabaseRelation
    from relations.metrics import Monitoring
    from state.charm_state import CharmState

logger = logging.getLogger(__name__)

NOT_LEADER = "{action} runs on the leader: juju run {app}/leader {action}"
NO_DATABASE_PAUSE = (
    "pausing one database needs PgBouncer's admin console with an admin user, which this charm"
    " does not run; pause the whole unit (no database parameter)"
)


class Actions(ops.Object):
    """Observes the actions and delegates each to the module that does it.

    Args:
        charm: the charm.
        container: the workload container.
        clients: the ``database`` relation adapter (the live client relations).
        monitoring: the stats identity (its password reads the consoles).
        load_state: the charm's one read of the world.
        ca_dir: where the backend's CA is kept for the charm's own connections.
    """

    def __init__(
        self,
        charm: ops.CharmBase,
        container: ops.Container,
        clients: ClientDatabaseRelation,
        monitoring: Monitoring,
        load_state: Callable[[], CharmState],
        ca_dir: Callable[[], str],
    ):
        super().__init__(charm, "actions")
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
        from postgres.audit import BREACH, DRIFT, audit_tenancy
        from postgres.connection import BackendError
        from reconcile import credentials

        live = {relation.id for relation in self._clients.relations}
        started = time.monotonic()
        try:
            found = audit_tenancy(
                credentials(state, self._ca_dir()),
                state.tenants,
                live,
                owner_tag=self.owner_tag,
                auth_user=state.auth.lookup_schema,
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
    def _pausable(self, event: ops.ActionEvent) -> bool:
        """Whether ``pause``/``resume`` can run; fails the action saying why not."""
        if event.params.get("database"):
            event.fail(NO_DATABASE_PAUSE)
            return False
        if not self._container.can_connect():
            event.fail("the pgbouncer container does not answer")
            return False
        return True

    def _on_pause(self, event: ops.ActionEvent) -> None:
        if not self._pausable(event):
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
        if not self._pausable(event):
            return
        from pgbouncer import pause

        was = pause.paused_since(self._container)
        processes = pause.resume(self._container)
        event.set_results(
            {
                "resumed": json.dumps(list(processes.serving)),
                "draining-left-alone": json.dumps(list(processes.draining)),
                "was-paused": "true" if was is not None else "false",
            }
        )

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
        from relations.peers import Peers
        from rotation import RotationError, start_rotation

        try:
            results = start_rotation(
                self._load_state(),
                Peers(self._charm),
                self._monitoring,
                owner_tag=self.owner_tag,
                ca_dir=self._ca_dir(),
                now=time.time(),
            )
        except RotationError as exc:
            event.fail(str(exc))
            return
        event.log("started; the old password goes once every unit uses the new one")
        event.set_results(results)
