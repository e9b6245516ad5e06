r"""The ``backend-database`` relation: our requirer side of ``postgresql_client``, and its charts.

Two pieces live here:

* :class:`BackendDatabaseRequirer`, a small requirer of our own (the v0 data_interfaces library
  is not published on PyPI). The leader asks for a database by writing::

      {"database": "pgbouncer", "extra-user-roles": "SUPERUSER",
       "requested-secrets": "[\"username\", \"password\"]",
       "data": "{\"endpoints\": \"pg-primary:5432\", …}"}

  and reads the provider's ``endpoints``, ``read-only-endpoints``, ``version``, ``database`` and
  credentials, plain (``username``/``password``, as the seed shows) or through ``secret-user``.
  ``data`` holds the provider fields we last processed (credentials left out): comparing it with
  the provider's databag tells "created", "endpoints changed" and "read-only endpoints changed".

* :class:`BackendDatabaseRelation`, the three hook charts of the seed document
  (``docs/backend-database.md`` draws them as built), each decision a visible branch.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import ops

from postgres.auth import (
    auth_username_for,
    generate_password,
    install_auth,
    remove_auth,
    remove_leftovers,
)
from postgres.connection import BackendCredentials, BackendError, connect
from state.backend import (
    BackendDatabase,
    InvalidBackendDataError,
    diff_tracked,
    tracked_data,
)
from state.names import InvalidNameError
from state.peers import AuthData

if TYPE_CHECKING:
    from charm import PgBouncerK8sCharm

logger = logging.getLogger(__name__)

BACKEND_RELATION = "backend-database"
REQUESTED_DATABASE = "pgbouncer"
EXTRA_USER_ROLES = "SUPERUSER"
REQUESTED_SECRETS = ("username", "password")
REMOVE_AUTH_FAILED = "failed to remove auth user when disconnecting from postgres application."


class DatabaseCreatedEvent(ops.RelationEvent):
    """The provider published credentials and endpoints for our request for the first time."""


class DatabaseEndpointsChangedEvent(ops.RelationEvent):
    """The provider's primary ``endpoints`` changed."""


class DatabaseReadOnlyEndpointsChangedEvent(ops.RelationEvent):
    """The provider's ``read-only-endpoints`` changed."""


class BackendDatabaseEvents(ops.ObjectEvents):
    """Events of :class:`BackendDatabaseRequirer`."""

    database_created = ops.EventSource(DatabaseCreatedEvent)
    endpoints_changed = ops.EventSource(DatabaseEndpointsChangedEvent)
    read_only_endpoints_changed = ops.EventSource(DatabaseReadOnlyEndpointsChangedEvent)


class BackendDatabaseRequirer(ops.Object):
    """Our requirer side of ``postgresql_client`` on ``backend-database``."""

    on = BackendDatabaseEvents()  # pyright: ignore[reportAssignmentType]

    def __init__(self, charm: ops.CharmBase, relation_name: str = BACKEND_RELATION):
        super().__init__(charm, relation_name)
        self._charm = charm
        self.relation_name = relation_name
        observe = charm.framework.observe
        observe(charm.on[relation_name].relation_created, self._on_relation_created)
        observe(charm.on[relation_name].relation_changed, self._on_relation_changed)
        observe(charm.on.leader_elected, self._on_leader_elected)
        observe(charm.on.secret_changed, self._on_secret_changed)

    @property
    def relation(self) -> ops.Relation | None:
        """The backend relation (``limit: 1``), when there is one."""
        return self._charm.model.get_relation(self.relation_name)

    # -- our side ---------------------------------------------------------------------------
    def request(self, relation: ops.Relation | None = None) -> None:
        """Write our request into our application databag (leader only; idempotent)."""
        relation = relation or self.relation
        if relation is None or not self._charm.unit.is_leader():
            return
        wanted = {
            "database": REQUESTED_DATABASE,
            "extra-user-roles": EXTRA_USER_ROLES,
            "requested-secrets": json.dumps(list(REQUESTED_SECRETS)),
        }
        databag = relation.data[self._charm.app]
        for key, value in wanted.items():
            if databag.get(key) != value:
                databag[key] = value

    def request_written(self) -> bool:
        """Whether our own ``database`` field is in our databag (the leader can read it)."""
        relation = self.relation
        if relation is None:
            return False
        try:
            return relation.data[self._charm.app].get("database") == REQUESTED_DATABASE
        except ops.RelationDataAccessError:
            return False

    # -- their side -------------------------------------------------------------------------
    def _provider_data(self, relation: ops.Relation) -> dict[str, str]:
        if relation.app is None:
            return {}
        return dict(relation.data[relation.app])

    def _credentials(self, data: dict[str, str]) -> dict[str, str] | None:
        """The content of ``secret-user`` when the provider sent one; ``None`` otherwise.

        Raises:
            InvalidBackendDataError: the secret id is set but cannot be read.
        """
        secret_id = data.get("secret-user")
        if not secret_id:
            return None
        try:
            secret = self._charm.model.get_secret(id=secret_id)
            return dict(secret.get_content(refresh=True))
        except (ops.SecretNotFoundError, ops.ModelError):
            raise InvalidBackendDataError(
                "secret-user", "secret not found or not granted"
            ) from None

    def fetch(self) -> BackendDatabase | None:
        """The backend as the provider published it; ``None`` while incomplete.

        Raises:
            InvalidBackendDataError: a field holds a value we refuse.
        """
        relation = self.relation
        if relation is None:
            return None
        data = self._provider_data(relation)
        credentials = self._credentials(data)
        backend = BackendDatabase.from_databag(data, credentials, REQUESTED_DATABASE)
        if backend is not None:
            # The auth role is named after the relation user: a name that passes as a role but
            # gives no plain identifier (upper case, too long) is refused here, not mid-hook.
            try:
                auth_username_for(backend.username)
            except InvalidNameError as exc:
                field = "secret-user username" if credentials is not None else "username"
                raise InvalidBackendDataError(
                    field, f"no auth user name can be made from it ({exc.reason})"
                ) from None
        return backend

    # -- event plumbing ---------------------------------------------------------------------
    def _on_relation_created(self, event: ops.RelationCreatedEvent) -> None:
        self.request(event.relation)

    def _on_leader_elected(self, _: ops.LeaderElectedEvent) -> None:
        self.request()

    def _on_relation_changed(self, event: ops.RelationChangedEvent) -> None:
        self._dispatch(event.relation)

    def _on_secret_changed(self, event: ops.SecretChangedEvent) -> None:
        relation = self.relation
        if relation is None or relation.app is None:
            return
        if event.secret.id and event.secret.id == relation.data[relation.app].get("secret-user"):
            self._dispatch(relation, credentials_rotated=True)

    def _dispatch(self, relation: ops.Relation, credentials_rotated: bool = False) -> None:
        """Emit our events from the diff against ``data`` (leader only: it owns ``data``)."""
        if not self._charm.unit.is_leader():
            return
        data = self._provider_data(relation)
        has_credentials = bool(data.get("secret-user") or data.get("username"))
        if not data.get("endpoints") or not has_credentials:
            return
        local = relation.data[self._charm.app]
        previous = local.get("data")
        changed = diff_tracked(previous, data)
        local["data"] = tracked_data(data)
        app = relation.app
        if previous is None or "secret-user" in changed or credentials_rotated:
            self.on.database_created.emit(relation, app=app)
            return
        if "endpoints" in changed or "database" in changed:
            self.on.endpoints_changed.emit(relation, app=app)
        if "read-only-endpoints" in changed:
            self.on.read_only_endpoints_changed.emit(relation, app=app)


class BackendDatabaseRelation(ops.Object):
    """The seed's three charts: created, departed, broken."""

    def __init__(self, charm: PgBouncerK8sCharm):
        super().__init__(charm, "backend-database-charts")
        self.charm = charm
        self.requirer = BackendDatabaseRequirer(charm)
        observe = charm.framework.observe
        observe(self.requirer.on.database_created, self._on_database_created)
        observe(self.requirer.on.endpoints_changed, self._on_endpoints_changed)
        observe(self.requirer.on.read_only_endpoints_changed, self._on_endpoints_changed)
        observe(charm.on[BACKEND_RELATION].relation_changed, self._on_relation_changed)
        observe(charm.on[BACKEND_RELATION].relation_departed, self._on_relation_departed)
        observe(charm.on[BACKEND_RELATION].relation_broken, self._on_relation_broken)

    # -- helpers ----------------------------------------------------------------------------
    def backend(self) -> BackendDatabase | None:
        """The backend, or ``None`` when incomplete or invalid (status says which)."""
        try:
            return self.requirer.fetch()
        except InvalidBackendDataError:
            return None

    @staticmethod
    def credentials(backend: BackendDatabase) -> BackendCredentials:
        """How to reach the backend's primary as the relation user."""
        return BackendCredentials(
            host=backend.primary.host,
            port=backend.primary.port,
            user=backend.username,
            password=backend.password,
            dbname=backend.database,
        )

    def auth_ready_for(self, backend: BackendDatabase) -> bool:
        """Whether the shared auth data belongs to this backend's relation user."""
        auth = self.charm.peers.auth()
        return auth is not None and auth.username == auth_username_for(backend.username)

    # -- created ----------------------------------------------------------------------------
    def _on_database_created(self, event: ops.RelationEvent) -> None:
        if not self.charm.unit.is_leader():
            return
        if not self.charm.workload.is_running():
            # Not lost: pebble-ready runs the same set-up (PgBouncerK8sCharm._on_pebble_ready).
            logger.info("backend ready but PgBouncer is not running yet; set-up waits for it")
            return
        try:
            backend = self.requirer.fetch()
        except InvalidBackendDataError as exc:
            # Not deferred: retrying cannot help until the provider rewrites its databag, and
            # that arrives as a new relation-changed. The status names the field.
            logger.warning("refusing the backend's data: %s", exc)
            return
        if backend is None or not self.requirer.request_written():
            logger.info("backend database not ready; deferring")
            event.defer()
            return
        try:
            with connect(self.credentials(backend)):
                pass
        except BackendError as exc:
            logger.warning("backend refuses connections (%s); deferring", exc)
            self.charm.record_backend_problem(str(exc))
            event.defer()
            return
        if not self.set_up_auth(backend):
            event.defer()

    def set_up_auth(self, backend: BackendDatabase) -> bool:
        """Generate the auth user, install it, save it, render PgBouncer, refresh clients.

        Returns False when the backend failed us (the caller defers); the problem is recorded
        for the status.
        """
        auth_user = auth_username_for(backend.username)
        current = self.charm.peers.auth()
        password = (
            current.password if current and current.username == auth_user else generate_password()
        )
        creds = self.credentials(backend)
        try:
            removed = remove_leftovers(creds, owner_tag=self.charm.owner_tag, keep=auth_user)
            if removed:
                logger.info("removed auth leftovers of earlier relations: %s", ", ".join(removed))
            install_auth(
                creds, auth_user=auth_user, auth_password=password, owner_tag=self.charm.owner_tag
            )
        except BackendError as exc:
            logger.warning("could not install the auth function: %s", exc)
            self.charm.record_backend_problem(str(exc))
            return False
        self.charm.record_backend_problem(None)
        # A failed removal of an earlier relation's auth user is resolved once its leftovers
        # are gone, which remove_leftovers just made sure of.
        self.charm.record_auth_removal_failed(False)
        self.charm.peers.save_auth(AuthData(auth_user, password), backend.database)
        self.charm.update_workload()
        self.charm.update_client_relations()
        return True

    # -- changed ----------------------------------------------------------------------------
    def _on_relation_changed(self, _: ops.RelationChangedEvent) -> None:
        # Every unit re-renders from what the provider now says (change-gated, cheap).
        self.charm.update_workload()

    def _on_endpoints_changed(self, _: ops.RelationEvent) -> None:
        self.charm.update_workload()
        self.charm.update_client_relations()

    # -- departed ---------------------------------------------------------------------------
    def _on_relation_departed(self, event: ops.RelationDepartedEvent) -> None:
        self.charm.update_workload()
        self.charm.update_client_relations()
        if event.departing_unit == self.charm.unit:
            if self.charm.unit.is_leader() and self.charm.app.planned_units() == 0:
                # The whole application is scaling to 0: this is its last chance to clean up
                # while the relation user still works.
                self._remove_auth(event.relation)
            self.charm.peers.mark_departing(event.relation.id)
            return
        if not (self.charm.unit.is_leader() and self._application_leaving(event)):
            return
        self._remove_auth(event.relation)

    def _application_leaving(self, event: ops.RelationDepartedEvent) -> bool:
        """Whether pgbouncer as a whole leaves the relation (not a partial scale-down).

        When the relation is removed, the last remote unit departs and none remain; a
        PostgreSQL scale-down leaves units behind, and our own scale-down is seen by the
        departing unit itself (handled before this).
        """
        remaining = [u for u in event.relation.units if u != event.departing_unit]
        return not remaining or self.charm.app.planned_units() == 0

    def _remove_auth(self, relation: ops.Relation) -> None:
        backend = self.backend()
        auth = self.charm.peers.auth()
        if backend is None or auth is None:
            logger.info("no auth user to remove")
            return
        # Client login roles go first, while the relation user still works: they cannot log in
        # without the lookup anyway, and nothing else would ever drop them (docs/tenancy.md).
        if not self.charm.clients.drop_all(backend):
            logger.error("some client users could not be dropped; they stay in the record")
        try:
            remove_auth(
                self.credentials(backend),
                auth_user=auth.username,
                owner_tag=self.charm.owner_tag,
            )
        except BackendError as exc:
            logger.error("failed to remove the auth user: %s", exc)
            self.charm.record_auth_removal_failed(True)
            return
        logger.info("removed auth user %s and its lookup function", auth.username)
        self.charm.record_auth_removal_failed(False)

    # -- broken -----------------------------------------------------------------------------
    def _on_relation_broken(self, event: ops.RelationBrokenEvent) -> None:
        if not self.charm.unit.is_leader() or self.charm.peers.is_departing(event.relation.id):
            return
        if not self.charm.workload.can_connect():
            event.defer()
            return
        self.charm.peers.drop_auth()
        self.charm.update_workload(without_backend=True)
        self.charm.update_client_relations()
