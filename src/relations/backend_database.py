r"""The ``backend-database`` relation: our requirer side of ``postgresql_client``, and its charts.

Two pieces live here:

* :class:`BackendDatabaseRequirer`, a small requirer of our own (the v0 data_interfaces library
  is not published on PyPI). The leader asks for a database by writing::

      {"database": "pgbouncer", "extra-user-roles": "SUPERUSER",
       "requested-secrets": "[\"username\", \"password\"]",
       "data": "{\"endpoints\": \"pg-primary:5432\", …}"}

  and reads the provider's ``endpoints``, ``read-only-endpoints``, ``version``, ``database`` and
  credentials, plain (``username``/``password``, the v0 databag's form) or through ``secret-user``.
  ``data`` holds the provider fields we last processed (credentials left out): comparing it with
  the provider's databag tells "created", "endpoints changed" and "read-only endpoints changed".

* the three hook charts (created, departed, broken) as pure decisions (:func:`created_chart`,
  :func:`departed_chart`, :func:`broken_chart`; ``docs/backend-database.md`` draws them as
  built). The charm runs them and carries their effects out through its reconcile: this
  module neither runs SQL nor calls the charm.
"""

from __future__ import annotations

import json
import logging

import ops

from state.backend import (
    BackendDatabase,
    InvalidBackendDataError,
    diff_tracked,
    tracked_data,
)
from state.names import InvalidNameError, auth_username_for

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

    def tls_secret_content(self) -> dict[str, str]:
        """``tls`` and ``tls-ca`` from the provider's ``secret-tls``, when it sent one.

        The published interface lets a provider move them into a secret; its content then
        stands for the plain fields.

        Raises:
            InvalidBackendDataError: the secret id is set but cannot be read.
        """
        relation = self.relation
        if relation is None or relation.app is None:
            return {}
        secret_id = relation.data[relation.app].get("secret-tls")
        if not secret_id:
            return {}
        try:
            content = self._charm.model.get_secret(id=secret_id).get_content(refresh=True)
        except (ops.SecretNotFoundError, ops.ModelError):
            raise InvalidBackendDataError(
                "secret-tls", "secret not found or not granted"
            ) from None
        return {k: v for k, v in content.items() if k in ("tls", "tls-ca")}

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


# -- the three hook charts, as named decisions (docs/backend-database.md maps each branch) --
CREATED_RETURN = "return"
CREATED_DEFER = "defer"
CREATED_SET_UP = "set-up"


def created_chart(
    *,
    leader: bool,
    running: bool,
    refused: bool,
    backend: BackendDatabase | None,
    request_written: bool,
) -> str:
    """The created chart: what to do when the provider first answered.

    Returns:
        ``return`` (not leader; PgBouncer not running: not lost, every reconcile completes the
        set-up once it runs; a refused databag: the status names the field and a rewrite
        triggers again), ``defer`` (backend not ready) or ``set-up``.
    """
    if not leader or not running or refused:
        return CREATED_RETURN
    if backend is None or not request_written:
        return CREATED_DEFER
    return CREATED_SET_UP


DEPARTED_RETURN = "return"
DEPARTED_MARK = "mark-departing"
DEPARTED_REMOVE_AND_MARK = "remove-auth-and-mark-departing"
DEPARTED_REMOVE = "remove-auth"


def departed_chart(
    *, departing_is_self: bool, leader: bool, planned_units: int, remaining_remote_units: int
) -> str:
    """The departed chart (docs/backend-database.md): remove the auth user only when pgbouncer leaves.

    Returns:
        ``mark-departing`` (this unit leaves), ``remove-auth-and-mark-departing`` (this leader
        leaves with the whole application: its last chance to clean up), ``remove-auth`` (the
        relation is removed: no remote unit remains, or pgbouncer scales to 0) or ``return`` (a
        partial scale-down of either side, or not the leader).
    """
    if departing_is_self:
        if leader and planned_units == 0:
            return DEPARTED_REMOVE_AND_MARK
        return DEPARTED_MARK
    if leader and (remaining_remote_units == 0 or planned_units == 0):
        return DEPARTED_REMOVE
    return DEPARTED_RETURN


BROKEN_RETURN = "return"
BROKEN_DEFER = "defer"
BROKEN_DROP = "drop-auth"


def broken_chart(*, leader: bool, departing: bool, can_connect: bool) -> str:
    """The broken chart: forget the auth data and strip it from PgBouncer (leader only)."""
    if not leader or departing:
        return BROKEN_RETURN
    if not can_connect:
        return BROKEN_DEFER
    return BROKEN_DROP
